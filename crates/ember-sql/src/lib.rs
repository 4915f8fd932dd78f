#![doc = include_str!("../README.md")]

/// Adaptive execution: re-planning with the real sizes of map stages.
pub mod adaptive;
/// Arrow record batches as Ember records (`Batch`), serialized as Arrow IPC.
pub mod batch;
/// The columnar cache: cached tables with per-partition statistics.
pub mod cache;
/// How stage plans travel: `datafusion-proto` with Ember's extension codec.
pub mod codec;
/// The crate's error type.
pub mod error;
/// Ember's physical operators: the shuffle reader.
pub mod exec;
/// Per-operator metrics of queries run on Ember (`EXPLAIN ANALYZE`).
pub mod metrics;
/// The distributed planner: stages cut at exchanges.
pub mod planner;
/// Plan rewrites for isolated tasks: distributed joins, inlined scalar subqueries.
pub mod rules;
/// The per-process SQL runtime.
mod runtime;
/// Splitting SQL scripts into statements.
pub mod script;
/// `Session` and `DataFrame`.
pub mod session;
/// Stage RDDs and the bridge between Ember tasks and DataFusion streams.
pub mod stage;
/// The TPC-H kit: data generation and the 22 queries.
pub mod tpch;

pub use batch::Batch;
pub use error::{Error, Result};
pub use planner::StagePlan;
pub use session::{DataFrame, Session};

/// DataFusion, as Ember SQL builds on it: expressions (`col`, `lit`, functions), types and
/// Arrow.
pub use datafusion;
