//! Ember's cluster runtime: executors in their own processes, reached over a gRPC control
//! plane.
//!
//! An executor is the driver's own executable started in executor mode: the driver (for
//! `local-cluster[W,C,M]`) starts W copies of itself with the address of its control service in
//! the environment. The first line of the program's `main` must be [`entry`] (re-exported as
//! `ember::executor_entry`): in an executor process it serves tasks and exits without ever
//! returning, so none of the driver's code runs there; in the driver it installs this runtime
//! and returns at once.
//!
//! Each executor opens one session stream to its driver (see `proto/ember/cluster/v1/
//! control.proto`), authenticated by a token derived from the application's secret. It
//! registers with the SHA-256 of its executable, which must equal the driver's: task bodies are
//! sealed with a key derived from the secret and that hash, so only the driver's very binary can
//! decode them. When the session ends, from either side, the executor is gone: the driver fails
//! its running tasks over to the others, and the executor exits. Executors also die with their
//! driver's process, however it ends.

mod auth;
mod data;
mod driver;
mod error;
mod executor;
mod hold;
mod local_cluster;
pub mod standalone;
mod tls;
mod wire;

/// The generated protocol types and services.
#[allow(missing_docs, clippy::all)]
pub mod proto {
    tonic::include_proto!("ember.cluster.v1");
}

pub use error::{ClusterError, Result};
pub use local_cluster::LocalClusterManager;

/// The largest message either side of a connection accepts: task bodies carry their input
/// (a `parallelize`d collection), results a whole partition.
pub(crate) const MAX_MESSAGE_BYTES: usize = 1 << 30;

/// The connections a listener accepts, with Nagle's algorithm off: control messages and small
/// segments go out at once instead of waiting for the peer's delayed acknowledgement.
pub(crate) fn incoming(
    listener: tokio::net::TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use tokio_stream::StreamExt;
    tokio_stream::wrappers::TcpListenerStream::new(listener).map(|s| {
        let s = s?;
        s.set_nodelay(true)?;
        Ok(s)
    })
}

/// Environment variables a driver sets for the executors it starts.
pub(crate) mod vars {
    /// The driver's control service, `host:port`. Its presence means executor mode.
    pub const DRIVER: &str = "EMBER_EXECUTOR_DRIVER";
    /// The executor's id.
    pub const ID: &str = "EMBER_EXECUTOR_ID";
    /// Task slots.
    pub const CORES: &str = "EMBER_EXECUTOR_CORES";
    /// Memory budget in MiB.
    pub const MEMORY_MIB: &str = "EMBER_EXECUTOR_MEMORY_MIB";
    /// The application's secret, hex.
    pub const SECRET: &str = "EMBER_AUTH_SECRET";
    /// The address the executor's data plane listens on and registers (default 127.0.0.1).
    pub const HOST: &str = "EMBER_EXECUTOR_HOST";
    /// Root of the executor's local files, when its starter chooses it (a standalone worker).
    pub const LOCAL_DIR: &str = "EMBER_EXECUTOR_LOCAL_DIR";
    /// What `ember submit` gives the driver it starts: `key=value` lines (master and settings).
    pub const SUBMIT_CONF: &str = "EMBER_SUBMIT_CONF";
    /// TLS: the certificate chain the executor's data plane presents.
    pub const SSL_CERT_FILE: &str = "EMBER_SSL_CERT_FILE";
    /// TLS: that certificate's private key.
    pub const SSL_KEY_FILE: &str = "EMBER_SSL_KEY_FILE";
    /// TLS: the authorities the executor trusts, when not its own certificate.
    pub const SSL_TRUST_FILE: &str = "EMBER_SSL_TRUST_FILE";
    /// TLS: the name the executor expects in servers' certificates.
    pub const SSL_SERVER_NAME: &str = "EMBER_SSL_SERVER_NAME";
    /// Every variable an executor reads (and removes from its environment).
    pub const EXECUTOR: [&str; 11] = [
        DRIVER,
        ID,
        CORES,
        MEMORY_MIB,
        SECRET,
        HOST,
        LOCAL_DIR,
        SSL_CERT_FILE,
        SSL_KEY_FILE,
        SSL_TRUST_FILE,
        SSL_SERVER_NAME,
    ];
}

/// The environment variable through which `ember submit` hands a driver its master and
/// settings (`key=value` lines); [`entry`] reads it.
pub const SUBMIT_CONF_VAR: &str = vars::SUBMIT_CONF;

/// Whether this process was started as an executor.
pub fn is_executor() -> bool {
    std::env::var_os(vars::DRIVER).is_some()
}

/// The program's entry into the cluster runtime: call it as the first line of `main`.
///
/// In a process started as an executor it runs the executor until its driver lets it go and then
/// exits the process (status 0, or non-zero when the driver was lost or refused it); it never
/// returns. In any other process it installs the cluster runtime, so that a context on a cluster
/// master (`local-cluster[W,C,M]`) can start its executors, and returns.
pub fn entry() {
    if is_executor() {
        let code = executor::run_from_env();
        std::process::exit(code);
    }
    if let Some(text) = std::env::var_os(vars::SUBMIT_CONF) {
        // What `ember submit` gave this driver; its own children (`pipe`) do not inherit it.
        std::env::remove_var(vars::SUBMIT_CONF);
        let conf = text.to_str().ok_or_else(|| "it is not UTF-8".to_string()).and_then(|t| {
            ember_core::EmberConf::empty().with_properties(t, "submitted settings").map_err(|e| e.to_string())
        });
        match conf {
            Ok(conf) => ember_core::runtime::install_submitted_conf(conf),
            Err(e) => {
                eprintln!("ember: the settings this program was submitted with are invalid: {e}");
                std::process::exit(2);
            }
        }
    }
    install();
}

/// [`entry`] for a process whose `main` the program does not write, such as a test binary of
/// the standard harness: expands to a static constructor that runs before `main`. In an executor
/// process it serves tasks and exits before `main` starts; in any other process it installs the
/// cluster runtime. Use it once per binary, at module level. (Linux: ELF `.init_array`.)
#[macro_export]
macro_rules! executor_entry_before_main {
    () => {
        #[cfg(target_os = "linux")]
        #[used]
        #[link_section = ".init_array"]
        static EMBER_EXECUTOR_ENTRY: extern "C" fn() = {
            extern "C" fn ember_executor_entry() {
                $crate::entry_before_main();
            }
            ember_executor_entry
        };
    };
}

/// What [`executor_entry_before_main!`] runs: [`entry`], with a panic turned into an exit
/// status (unwinding out of a static constructor would abort).
#[doc(hidden)]
pub fn entry_before_main() {
    if is_executor() {
        // The standard library ignores SIGPIPE before `main`; this runs before it does, and a
        // write to a peer that died must be an error, not the executor's death.
        // SAFETY: setting a signal's disposition to "ignore" has no memory-safety preconditions.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_IGN);
        }
    }
    if std::panic::catch_unwind(entry).is_err() {
        std::process::exit(101);
    }
}

/// Installs the cluster runtime for contexts created from now on (what [`entry`] does in a
/// driver).
pub fn install() {
    ember_core::runtime::install_cluster_manager(std::sync::Arc::new(ClusterRuntime));
}

/// Starts the executors of every cluster master: `local-cluster[W,C,M]` and `ember://HOST:PORT`.
#[derive(Debug, Default, Clone, Copy)]
pub struct ClusterRuntime;

impl ember_core::runtime::ClusterManager for ClusterRuntime {
    fn start(
        &self,
        start: ember_core::runtime::ClusterStart,
    ) -> ember_core::Result<ember_core::runtime::ClusterBackend> {
        match start.settings.master.clone() {
            ember_core::conf::Master::Standalone { address } => Ok(standalone::app::start_standalone(start, &address)?),
            _ => LocalClusterManager.start(start),
        }
    }
}
