//! The `ember` command end to end: a standalone master and workers on ports the tests pick,
//! programs submitted to them, and their outputs checked.
//!
//! The submitted programs are the repository's examples (`word_count`, `running_sum`), built
//! with the workspace (`cargo test --workspace` builds them before any test runs).

#[path = "../../../ember-cluster/tests/it/certs.rs"]
mod certs;
mod netns;
mod sql;
mod standalone;
