#![doc = include_str!("../README.md")]

/// Accumulators: task updates merged once per successful task.
pub mod accumulator;
/// Broadcast variables.
pub mod broadcast;
/// Spillable collections used by shuffle and sort.
mod collections;
/// Configuration: `EmberConf` and the master URL.
pub mod conf;
/// The driver's `Context`.
pub mod context;
/// Record bounds, deterministic hashing and size estimates.
pub mod data;
/// The services of an executor.
pub mod env;
/// Errors.
pub mod error;
/// The console progress bar.
mod progress;
/// RDDs: the typed handle, node traits, transformations and actions.
pub mod rdd;
/// The seam a cluster runtime plugs into (driver and executor sides).
pub mod runtime;
/// The DAG scheduler and the local task scheduler.
pub mod scheduler;
/// Task encoding: user functions and RDD nodes as entry offset, fingerprint and payload.
pub mod ship;
/// Shuffle: partitioners, aggregators, the dependency, writer and reader.
pub mod shuffle;
/// The block manager and the unified memory budget.
pub mod storage;
/// Checksummed, compressed record streams.
mod stream;
/// Tasks, the task context and metrics.
pub mod task;

#[cfg(test)]
mod decode_fuzz;

pub use accumulator::{Accumulator, AccumulatorParam, LongSum};
pub use broadcast::Broadcast;
pub use conf::{EmberConf, Master};
pub use context::{Context, JobHandle};
pub use data::{Data, Key};
pub use error::{Error, ErrorClass, Result};
pub use rdd::{Dependency, LocalIterator, OrderedF64, PartitionFn, Rdd, StatCounter, TextCodec, ToF64};
pub use scheduler::{JobSummary, StageSummary};
pub use shuffle::{HashPartitioner, IndexPartitioner, Partitioner, RangePartitioner};
pub use storage::StorageLevel;
pub use task::{BoxIter, JobId, StageId, TaskContext, TaskMetrics};
