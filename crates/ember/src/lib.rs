#![doc = include_str!("../README.md")]

pub use ember_core::*;

/// Everything a typical Ember program needs: `use ember::prelude::*;`.
pub mod prelude {
    pub use ember_core::{
        Accumulator, BoxIter, Broadcast, Context, EmberConf, Error, HashPartitioner, RangePartitioner, Rdd, Result,
        StorageLevel, TextCodec,
    };
}

/// Sets up `tracing` output on standard error, filtered by `RUST_LOG` (default: warnings only).
/// Call it once at the start of a program; calling it again does nothing.
pub fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}
