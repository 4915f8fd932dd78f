//! The services of one executor: block manager, shuffle files and map outputs, local files.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::conf::{Codec, Settings};
use crate::shuffle::{MapOutputLocations, ShuffleManager};
use crate::storage::BlockManager;

/// What a task can reach on the executor running it.
pub struct Env {
    /// This executor's id (`driver` in local mode).
    pub executor_id: Arc<str>,
    /// Root of this executor's local files (shuffle, spill, blocks).
    pub local_dir: PathBuf,
    /// Compression codec for shuffle, spill and serialized blocks.
    pub codec: Codec,
    /// Cached blocks and the memory budget (shared with the shuffle manager, whose in-memory
    /// map outputs it accounts).
    pub blocks: Arc<BlockManager>,
    /// This executor's map outputs (files and in-memory outputs).
    pub shuffle: ShuffleManager,
    /// Broadcast values this executor can reach.
    pub broadcasts: crate::broadcast::BroadcastStore,
    /// Whether this executor decodes its own copies of broadcast values, as a remote one does
    /// (`ember.local.serializeTasks`).
    pub rehearse_remote: bool,
    /// Where reduce tasks learn the blocks they read: the driver's map output tracker.
    pub map_outputs: Arc<dyn MapOutputLocations>,
    /// How reduce tasks fetch segments other executors hold (a cluster's data plane); `None`
    /// when every output is this executor's own.
    pub remote: Option<Arc<dyn crate::shuffle::RemoteSegments>>,
    /// Where executors hold cached partitions (kept on the driver, from their reports).
    pub block_locations: Arc<crate::scheduler::BlockLocations>,
    /// The nodes the driver cut lineages at, whose lineage it serves (driver side).
    pub lineages: crate::rdd::Lineages,
    /// Where an executor in another process fetches the lineage of a node cut from a task's.
    remote_lineage: std::sync::OnceLock<Arc<dyn crate::rdd::RemoteLineage>>,
    /// The lineages this executor fetched, by node.
    pub(crate) fetched_lineages: crate::rdd::FetchedLineages,
    file_ids: AtomicU64,
}

impl Env {
    pub(crate) fn new(
        settings: &Settings,
        local_dir: PathBuf,
        map_outputs: Arc<dyn MapOutputLocations>,
    ) -> crate::error::Result<Self> {
        for sub in ["shuffle", "spill", "blocks"] {
            let d = local_dir.join(sub);
            std::fs::create_dir_all(&d).map_err(|e| crate::error::Error::io(&d, e))?;
        }
        let blocks = Arc::new(BlockManager::new(
            settings.memory_bytes,
            settings.storage_fraction,
            settings.master.slots(),
            local_dir.join("blocks"),
            settings.codec,
        ));
        // In-memory map outputs are bounded to 1/8 of the budget in all; an output larger than
        // that could never be kept, so it is not assembled in memory either.
        let cap = settings.memory_bytes / 8;
        Ok(Env {
            executor_id: Arc::from("driver"),
            map_outputs,
            remote: None,
            block_locations: Arc::default(),
            lineages: Default::default(),
            remote_lineage: std::sync::OnceLock::new(),
            fetched_lineages: Default::default(),
            broadcasts: Default::default(),
            rehearse_remote: settings.serialize_tasks,
            codec: settings.codec,
            shuffle: ShuffleManager::new(
                local_dir.join("shuffle"),
                blocks.clone(),
                cap,
                settings.shuffle_memory_threshold.min(cap) as usize,
            ),
            blocks,
            local_dir,
            file_ids: AtomicU64::new(0),
        })
    }

    /// Makes this executor fetch the lineage of nodes cut from its tasks' from `remote` (its
    /// driver, in another process); set once.
    pub fn set_remote_lineage(&self, remote: Arc<dyn crate::rdd::RemoteLineage>) {
        let _ = self.remote_lineage.set(remote);
    }

    /// Where this executor fetches cut lineages, when not from this process's driver.
    pub(crate) fn remote_lineage(&self) -> Option<&Arc<dyn crate::rdd::RemoteLineage>> {
        self.remote_lineage.get()
    }

    /// A process-unique number for naming temporary files.
    pub(crate) fn next_file_id(&self) -> u64 {
        self.file_ids.fetch_add(1, Ordering::Relaxed)
    }
}

thread_local! {
    static CURRENT: std::cell::RefCell<Option<Arc<Env>>> = const { std::cell::RefCell::new(None) };
}

/// Makes `env` the executor of this thread (while a task is decoded and run) until the guard drops.
pub(crate) fn enter(env: &Arc<Env>) -> EnvGuard {
    EnvGuard(CURRENT.with(|c| c.replace(Some(env.clone()))))
}

/// The executor running a task on this thread, if any.
pub(crate) fn current() -> Option<Arc<Env>> {
    CURRENT.with(|c| c.borrow().clone())
}

/// Restores the previous executor of the thread.
pub(crate) struct EnvGuard(Option<Arc<Env>>);

impl Drop for EnvGuard {
    fn drop(&mut self) {
        let previous = self.0.take();
        CURRENT.with(|c| *c.borrow_mut() = previous);
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.local_dir);
    }
}
