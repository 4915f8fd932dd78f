//! The seam a cluster runtime plugs into: how a driver hands tasks to executors in other
//! processes, and how an executor process runs them.
//!
//! Programs do not use this module; a cluster runtime (the `ember-cluster` crate) does. On the
//! driver, a [`ClusterManager`] installed with [`install_cluster_manager`] starts the executors
//! of a cluster master (`local-cluster[W,C,M]`) and returns the [`ExecutorBackend`] that reaches
//! them, with the application's [`ShipKey`]: stage bodies are sealed with that key, and only
//! processes that hold it (authenticated, running the driver's very binary) can decode them. In
//! an executor process, an [`Executor`] runs the tasks the runtime receives on slot threads and
//! hands back their statuses with results and accumulator updates encoded.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock, RwLock};

pub use crate::accumulator::AccumUpdates;
use crate::conf::Settings;
use crate::env::Env;
use crate::error::{Error, Result};
pub use crate::scheduler::backend::{ExecutorBackend, Prerequisites, StatusSink, TaskLaunch, TaskPayload, TaskStatus};
use crate::scheduler::backend::{LocalBackend, Mode};
use crate::ship::ShipKey;
use crate::shuffle::{MapOutputLocations, RemoteSegments};
pub use crate::task::TaskOutput;

/// What a cluster manager gets to start an application's executors.
pub struct ClusterStart {
    /// The application's id (unique per driver run).
    pub app_id: String,
    /// The driver's settings (master, memory, codec, ...).
    pub settings: Settings,
    /// Where the backend reports every task's status.
    pub statuses: StatusSink,
    /// The driver's map output tracker: executors' reducers ask it where map outputs are.
    pub tracker: Arc<crate::scheduler::MapOutputTracker>,
    /// The driver's services: broadcast values are published in its store.
    pub driver_env: Arc<Env>,
}

/// The executors of a cluster application, as the scheduler sees them.
pub struct ClusterBackend {
    /// Reaches the executors.
    pub backend: Arc<dyn ExecutorBackend>,
    /// The application's key: stage bodies are sealed with it.
    pub key: ShipKey,
}

/// Starts the executors of a cluster master for a new context.
pub trait ClusterManager: Send + Sync + 'static {
    /// Starts them (and waits until they can take tasks).
    fn start(&self, start: ClusterStart) -> Result<ClusterBackend>;
}

fn managers() -> &'static RwLock<Option<Arc<dyn ClusterManager>>> {
    static MANAGER: OnceLock<RwLock<Option<Arc<dyn ClusterManager>>>> = OnceLock::new();
    MANAGER.get_or_init(|| RwLock::new(None))
}

/// Installs the cluster manager that contexts with a cluster master use (the last installed
/// wins).
pub fn install_cluster_manager(manager: Arc<dyn ClusterManager>) {
    *managers().write().unwrap_or_else(|p| p.into_inner()) = Some(manager);
}

/// The installed cluster manager, or the error a context on `master` gets without one.
pub(crate) fn cluster_manager(master: &crate::conf::Master) -> Result<Arc<dyn ClusterManager>> {
    managers().read().unwrap_or_else(|p| p.into_inner()).clone().ok_or_else(|| {
        Error::InvalidArgument(format!(
            "master `{master}` runs executors in other processes and needs Ember's cluster runtime: \
             call `ember::executor_entry()` as the first line of `main`"
        ))
    })
}

/// Makes `conf` the starting point of every [`crate::EmberConf::new`] in this process: what a
/// launcher (`ember submit`) gives the driver it starts. The first call wins.
pub fn install_submitted_conf(conf: crate::conf::EmberConf) {
    crate::conf::install_submitted(conf);
}

/// Runs tasks in an executor process: slot threads over this executor's block manager and
/// map outputs.
pub struct Executor {
    backend: LocalBackend,
    env: Arc<Env>,
}

/// What an executor process is.
pub struct ExecutorSpec {
    /// Its id within the application.
    pub executor_id: String,
    /// Task slots.
    pub slots: usize,
    /// Memory budget in bytes (execution and storage).
    pub memory_bytes: u64,
    /// Root of its local files (made if missing, removed when the executor stops).
    pub local_dir: PathBuf,
    /// The driver's settings (codec, memory fractions, shuffle thresholds, ...).
    pub settings: Settings,
}

impl Executor {
    /// Starts the slot threads. Tasks' bodies are decoded with `key`; `map_outputs` tells
    /// reducers where map outputs are and `remote` fetches those other executors hold; every
    /// task's status goes to `statuses`, with its result and accumulator updates encoded.
    pub fn start(
        spec: ExecutorSpec,
        key: ShipKey,
        (map_outputs, remote): (Arc<dyn MapOutputLocations>, Arc<dyn RemoteSegments>),
        broadcasts: Arc<dyn crate::broadcast::RemoteBroadcasts>,
        statuses: StatusSink,
    ) -> Result<Executor> {
        if spec.slots == 0 || spec.slots > crate::conf::MAX_LOCAL_SLOTS {
            return Err(Error::InvalidArgument(format!(
                "an executor has from 1 to {} slots, not {}",
                crate::conf::MAX_LOCAL_SLOTS,
                spec.slots
            )));
        }
        let mut settings = spec.settings;
        settings.memory_bytes = spec.memory_bytes;
        settings.master = crate::conf::Master::Local { slots: spec.slots };
        std::fs::create_dir_all(&spec.local_dir).map_err(|e| Error::io(&spec.local_dir, e))?;
        let mut env = Env::new(&settings, spec.local_dir, map_outputs)?;
        env.executor_id = Arc::from(spec.executor_id);
        env.rehearse_remote = true;
        env.remote = Some(remote);
        env.broadcasts.set_remote(broadcasts);
        // Its driver learns where cached partitions are, to run tasks where their input is.
        env.blocks.track_locations();
        let env = Arc::new(env);
        let backend = LocalBackend::start(spec.slots, env.clone(), Mode::Executor, key, statuses)?;
        Ok(Executor { backend, env })
    }

    /// Queues a task.
    pub fn launch(&self, task: TaskLaunch) {
        self.backend.launch(task);
    }

    /// Asks tasks to stop: queued ones never start, running ones stop at their next check.
    pub fn kill(&self, task_ids: &[u64]) {
        self.backend.kill(task_ids);
    }

    /// This executor's services.
    pub fn env(&self) -> &Arc<Env> {
        &self.env
    }

    /// Stops the slot threads; queued tasks report cancellation.
    pub fn stop(&self) {
        self.backend.stop();
    }
}
