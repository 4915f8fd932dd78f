//! Integration tests of the core engine, one binary with a module per area.

mod common;
mod smoke;
