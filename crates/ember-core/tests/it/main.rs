//! Integration tests of the core engine, one binary with a module per area.

// Executors of the battery's local-cluster context are this binary started again: such a
// process becomes an executor before the test harness starts.
ember_cluster::executor_entry_before_main!();

mod api;
mod broadcast;
mod checkpoint;
mod common;
mod faults;
mod io;
mod jobs;
mod limits;
mod memory;
mod model;
mod ops;
mod output;
mod pipe;
mod smoke;
mod spill;
mod storage;
