#![doc = include_str!("../README.md")]

pub use ember_core::*;

/// Everything a typical Ember program needs: `use ember::prelude::*;`.
pub mod prelude {
    pub use ember_core::{
        Accumulator, BoxIter, Broadcast, Context, EmberConf, Error, HashPartitioner, RangePartitioner, Rdd, Result,
        StorageLevel, TextCodec,
    };
}

/// The program's entry into Ember's cluster runtime: call it as the first line of `main`.
///
/// Executors of a cluster master (`local-cluster[W,C,M]`) are the program's own executable,
/// started again in executor mode. In such a process this function serves tasks until the driver
/// lets the executor go, then exits the process; it never returns, so nothing the program does
/// after it (reading input, writing files, printing) happens in an executor. In the driver it
/// installs the cluster runtime and returns at once. Programs that only use `local[N]` may leave
/// it out; a context on a cluster master without it is an error that says so.
///
/// ```no_run
/// fn main() -> ember::Result<()> {
///     ember::executor_entry();
///     let ctx = ember::Context::new(ember::EmberConf::new().master("local-cluster[2,1,1024]")?)?;
///     assert_eq!(ctx.parallelize((1..=100u64).collect(), 4).map(|x| x * 2).collect()?.len(), 100);
///     Ok(())
/// }
/// ```
pub fn executor_entry() {
    if ember_cluster::is_executor() {
        init_logging();
    }
    ember_cluster::entry();
}

/// Sets up `tracing` output on standard error, filtered by `RUST_LOG` (default: warnings only).
/// Call it once at the start of a program; calling it again does nothing.
pub fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}
