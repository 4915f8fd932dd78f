//! Integration tests of the core engine, one binary with a module per area.

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
