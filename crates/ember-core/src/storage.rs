//! The block manager: cached RDD partitions in memory (deserialized or serialized) and on disk,
//! LRU eviction, and the unified memory budget that execution and storage share.
//!
//! One budget serves both execution (shuffle buffers, sort and aggregation maps) and storage
//! (cached blocks). Execution may evict cached blocks down to the storage floor
//! (`ember.memory.storageFraction` of the budget); storage never evicts execution memory.
//! Evicted blocks of a level that allows disk are written to disk; others are dropped and
//! recomputed from lineage when next needed.

use std::any::Any;
use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

use crate::conf::Codec;
use crate::data::{Data, SizeSampler};
use crate::error::{Error, Result};
use crate::stream;
use crate::task::{BoxIter, TaskContext};

/// How an RDD's partitions are kept once computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub enum StorageLevel {
    /// Not kept: recomputed from lineage every time.
    #[default]
    None,
    /// Deserialized objects in memory; partitions that do not fit are recomputed.
    MemoryOnly,
    /// Serialized (compact) bytes in memory; partitions that do not fit are recomputed.
    MemoryOnlySer,
    /// Deserialized in memory; partitions that do not fit, or are evicted, go to disk.
    MemoryAndDisk,
    /// Serialized in memory; partitions that do not fit, or are evicted, go to disk.
    MemoryAndDiskSer,
    /// On local disk only.
    DiskOnly,
}

impl StorageLevel {
    /// Whether the level keeps data in memory.
    pub fn use_memory(self) -> bool {
        !matches!(self, StorageLevel::None | StorageLevel::DiskOnly)
    }
    /// Whether the level may keep data on disk.
    pub fn use_disk(self) -> bool {
        matches!(self, StorageLevel::MemoryAndDisk | StorageLevel::MemoryAndDiskSer | StorageLevel::DiskOnly)
    }
    /// Whether in-memory data is kept as objects rather than bytes.
    pub fn deserialized(self) -> bool {
        matches!(self, StorageLevel::MemoryOnly | StorageLevel::MemoryAndDisk)
    }
}

/// Identifies an RDD.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RddId(pub u64);

/// Identifies a block held by a block manager.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum BlockId {
    /// A cached partition of an RDD.
    Rdd {
        /// The RDD.
        rdd: RddId,
        /// The partition.
        split: usize,
    },
}

impl fmt::Display for BlockId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BlockId::Rdd { rdd, split } => write!(f, "rdd_{}_{}", rdd.0, split),
        }
    }
}

enum Stored {
    Objects(Arc<dyn Any + Send + Sync>),
    Bytes(Arc<Vec<u8>>),
}

struct MemEntry {
    stored: Stored,
    size: u64,
    last_used: u64,
    level: StorageLevel,
    to_bytes: fn(&(dyn Any + Send + Sync), Codec) -> Result<Vec<u8>>,
}

struct DiskEntry {
    path: PathBuf,
    size: u64,
}

#[derive(Default)]
struct State {
    exec_used: u64,
    exec_by_task: HashMap<u64, u64>,
    storage_used: u64,
    memory: HashMap<BlockId, MemEntry>,
    disk: HashMap<BlockId, DiskEntry>,
    tick: u64,
    evictions: u64,
}

/// One cached block as reported by [`BlockManager::status`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockStatus {
    /// The block.
    pub id: BlockId,
    /// Bytes held in memory (estimated for objects).
    pub memory_bytes: u64,
    /// Bytes held on disk.
    pub disk_bytes: u64,
}

/// A snapshot of memory use and cached blocks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageStatus {
    /// The whole budget.
    pub budget: u64,
    /// Bytes used by cached blocks.
    pub storage_used: u64,
    /// Bytes granted to running tasks.
    pub execution_used: u64,
    /// Blocks evicted from memory so far.
    pub evictions: u64,
    /// Cached blocks, sorted by id.
    pub blocks: Vec<BlockStatus>,
}

/// Keeps cached blocks and accounts the memory budget of one executor.
pub struct BlockManager {
    budget: u64,
    storage_floor: u64,
    slots: u64,
    dir: PathBuf,
    codec: Codec,
    state: Mutex<State>,
}

fn objects_to_bytes<T: Data>(any: &(dyn Any + Send + Sync), codec: Codec) -> Result<Vec<u8>> {
    let v =
        any.downcast_ref::<Vec<T>>().ok_or_else(|| Error::Internal("cached block has an unexpected type".into()))?;
    stream::encode_all(codec, v)
}

impl BlockManager {
    pub(crate) fn new(budget: u64, storage_fraction: f64, slots: usize, dir: PathBuf, codec: Codec) -> Self {
        BlockManager {
            budget,
            storage_floor: (budget as f64 * storage_fraction) as u64,
            slots: slots.max(1) as u64,
            dir,
            codec,
            state: Mutex::new(State::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The memory budget in bytes.
    pub fn budget(&self) -> u64 {
        self.budget
    }

    // ---- execution memory ------------------------------------------------------------------

    /// Asks for `want` bytes of execution memory for a task; returns what was granted (possibly
    /// less, possibly 0, in which case the caller spills). A task may hold at most its fair share
    /// (budget / slots); cached blocks above the storage floor are evicted to make room.
    pub fn acquire_execution(&self, task: u64, want: u64) -> u64 {
        let mut st = self.lock();
        let held = st.exec_by_task.get(&task).copied().unwrap_or(0);
        let cap = (self.budget / self.slots).saturating_sub(held);
        let want = want.min(cap);
        let free = self.budget.saturating_sub(st.exec_used + st.storage_used);
        if want > free {
            let evictable = st.storage_used.saturating_sub(self.storage_floor);
            let need = (want - free).min(evictable);
            self.evict(&mut st, need, None);
        }
        let free = self.budget.saturating_sub(st.exec_used + st.storage_used);
        let granted = want.min(free);
        st.exec_used += granted;
        *st.exec_by_task.entry(task).or_default() += granted;
        granted
    }

    /// Returns execution memory a task no longer needs.
    pub fn release_execution(&self, task: u64, bytes: u64) {
        let mut st = self.lock();
        let held = st.exec_by_task.entry(task).or_default();
        let n = bytes.min(*held);
        *held -= n;
        st.exec_used -= n;
    }

    /// Releases everything a task holds (called when the task ends).
    pub(crate) fn release_task(&self, task: u64) {
        let mut st = self.lock();
        if let Some(n) = st.exec_by_task.remove(&task) {
            st.exec_used -= n;
        }
    }

    // ---- storage -------------------------------------------------------------------------------

    /// Evicts least-recently-used blocks (never blocks of `protect`) until `need` bytes are free
    /// or nothing more can go. Blocks whose level allows disk are written to disk first.
    fn evict(&self, st: &mut State, need: u64, protect: Option<RddId>) -> u64 {
        let mut freed = 0;
        while freed < need {
            let victim = st
                .memory
                .iter()
                .filter(|(id, _)| match (id, protect) {
                    (BlockId::Rdd { rdd, .. }, Some(p)) => *rdd != p,
                    _ => true,
                })
                .min_by_key(|(_, e)| e.last_used)
                .map(|(id, _)| *id);
            let Some(id) = victim else { break };
            let Some(entry) = st.memory.remove(&id) else { break };
            st.storage_used -= entry.size;
            freed += entry.size;
            st.evictions += 1;
            if entry.level.use_disk() && !st.disk.contains_key(&id) {
                let bytes = match &entry.stored {
                    Stored::Objects(o) => (entry.to_bytes)(&**o, self.codec),
                    Stored::Bytes(b) => Ok(b.as_ref().clone()),
                };
                match bytes.and_then(|b| self.write_disk(&id, &b)) {
                    Ok(d) => {
                        st.disk.insert(id, d);
                    }
                    Err(e) => tracing::warn!("dropping evicted block {id}: {e}"),
                }
            }
            tracing::debug!("evicted block {id} ({} bytes)", entry.size);
        }
        freed
    }

    fn write_disk(&self, id: &BlockId, bytes: &[u8]) -> Result<DiskEntry> {
        std::fs::create_dir_all(&self.dir).map_err(|e| Error::io(&self.dir, e))?;
        let path = self.dir.join(id.to_string());
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, bytes).map_err(|e| Error::io(&tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))?;
        Ok(DiskEntry { path, size: bytes.len() as u64 })
    }

    fn try_put_memory(
        &self,
        id: BlockId,
        stored: Stored,
        size: u64,
        level: StorageLevel,
        to_bytes: fn(&(dyn Any + Send + Sync), Codec) -> Result<Vec<u8>>,
    ) -> bool {
        let mut st = self.lock();
        let free = self.budget.saturating_sub(st.exec_used + st.storage_used);
        if size > free {
            let protect = match id {
                BlockId::Rdd { rdd, .. } => Some(rdd),
            };
            self.evict(&mut st, size - free, protect);
        }
        let free = self.budget.saturating_sub(st.exec_used + st.storage_used);
        if size > free {
            return false;
        }
        st.tick += 1;
        let tick = st.tick;
        if let Some(old) = st.memory.insert(id, MemEntry { stored, size, last_used: tick, level, to_bytes }) {
            st.storage_used -= old.size;
        }
        st.storage_used += size;
        true
    }

    /// Returns the cached partition if present, else computes it, caches it as `level` allows,
    /// and returns it. A partition that fits nowhere is returned uncached.
    pub(crate) fn get_or_compute<'a, T: Data>(
        &'a self,
        rdd: RddId,
        split: usize,
        level: StorageLevel,
        tc: &'a TaskContext,
        compute: impl FnOnce() -> BoxIter<'a, T>,
    ) -> BoxIter<'a, T> {
        let id = BlockId::Rdd { rdd, split };
        match self.get::<T>(&id) {
            Ok(Some(it)) => return it,
            Ok(None) => {}
            Err(e) => {
                // A lost or corrupt block is recomputed from lineage.
                tracing::warn!("block {id} unreadable, recomputing: {e}");
                self.remove_block(&id);
            }
        }
        let values: Vec<T> = compute().collect();
        if tc.should_stop() {
            return Box::new(values.into_iter());
        }
        let values = Arc::new(values);
        if let Err(e) = self.put(id, level, values.clone()) {
            tracing::warn!("could not cache block {id}: {e}");
        }
        Box::new(ArcIter { v: values, i: 0 })
    }

    fn put<T: Data>(&self, id: BlockId, level: StorageLevel, values: Arc<Vec<T>>) -> Result<()> {
        if level.use_memory() {
            if level.deserialized() {
                let mut sampler = SizeSampler::new();
                for v in values.iter().step_by((values.len() / 64).max(1)) {
                    sampler.add(v);
                }
                let size = 64 + sampler.per_record() * values.len() as u64;
                let stored = Stored::Objects(values.clone() as Arc<dyn Any + Send + Sync>);
                if self.try_put_memory(id, stored, size, level, objects_to_bytes::<T>) {
                    return Ok(());
                }
            } else {
                let bytes = stream::encode_all(self.codec, values.iter())?;
                let size = bytes.len() as u64;
                if self.try_put_memory(id, Stored::Bytes(Arc::new(bytes)), size, level, objects_to_bytes::<T>) {
                    return Ok(());
                }
            }
        }
        if level.use_disk() {
            let bytes = stream::encode_all(self.codec, values.iter())?;
            let d = self.write_disk(&id, &bytes)?;
            self.lock().disk.insert(id, d);
        }
        Ok(())
    }

    /// The records of a cached block, or `None` when this block manager does not hold it.
    pub(crate) fn get<T: Data>(&self, id: &BlockId) -> Result<Option<BoxIter<'static, T>>> {
        let found = {
            let mut st = self.lock();
            st.tick += 1;
            let tick = st.tick;
            match st.memory.get_mut(id) {
                Some(e) => {
                    e.last_used = tick;
                    Some(match &e.stored {
                        Stored::Objects(o) => Stored::Objects(o.clone()),
                        Stored::Bytes(b) => Stored::Bytes(b.clone()),
                    })
                }
                None => None,
            }
        };
        let origin = PathBuf::from(id.to_string());
        match found {
            Some(Stored::Objects(o)) => {
                let v =
                    o.downcast::<Vec<T>>().map_err(|_| Error::Internal(format!("block {id} holds another type")))?;
                Ok(Some(Box::new(ArcIter { v, i: 0 })))
            }
            Some(Stored::Bytes(b)) => Ok(Some(Box::new(stream::decode_all::<T>(&b, &origin)?.into_iter()))),
            None => {
                let entry = self.lock().disk.get(id).map(|d| (d.path.clone(), d.size));
                match entry {
                    Some((p, size)) => {
                        let bytes = std::fs::read(&p).map_err(|e| Error::io(&p, e))?;
                        Ok(Some(Box::new(stream::decode_exact::<T>(&bytes, size, &p)?.into_iter())))
                    }
                    None => Ok(None),
                }
            }
        }
    }

    /// Whether all `partitions` partitions of an RDD are cached (in memory or on disk).
    pub(crate) fn has_all(&self, rdd: RddId, partitions: usize) -> bool {
        let st = self.lock();
        (0..partitions).all(|split| {
            let id = BlockId::Rdd { rdd, split };
            st.memory.contains_key(&id) || st.disk.contains_key(&id)
        })
    }

    /// Removes one block from memory and disk.
    pub fn remove_block(&self, id: &BlockId) {
        let mut st = self.lock();
        if let Some(e) = st.memory.remove(id) {
            st.storage_used -= e.size;
        }
        if let Some(d) = st.disk.remove(id) {
            let _ = std::fs::remove_file(&d.path);
        }
    }

    /// Removes every block of an RDD.
    pub fn remove_rdd(&self, rdd: RddId) {
        let ids: Vec<BlockId> = {
            let st = self.lock();
            st.memory
                .keys()
                .chain(st.disk.keys())
                .filter(|b| matches!(b, BlockId::Rdd { rdd: r, .. } if *r == rdd))
                .copied()
                .collect()
        };
        for id in ids {
            self.remove_block(&id);
        }
    }

    /// A snapshot of memory use and the cached blocks.
    pub fn status(&self) -> StorageStatus {
        let st = self.lock();
        let mut blocks: HashMap<BlockId, BlockStatus> = HashMap::new();
        for (id, e) in &st.memory {
            blocks.entry(*id).or_insert(BlockStatus { id: *id, memory_bytes: 0, disk_bytes: 0 }).memory_bytes = e.size;
        }
        for (id, d) in &st.disk {
            blocks.entry(*id).or_insert(BlockStatus { id: *id, memory_bytes: 0, disk_bytes: 0 }).disk_bytes = d.size;
        }
        let mut blocks: Vec<BlockStatus> = blocks.into_values().collect();
        blocks.sort_by_key(|b| b.id);
        StorageStatus {
            budget: self.budget,
            storage_used: st.storage_used,
            execution_used: st.exec_used,
            evictions: st.evictions,
            blocks,
        }
    }
}

/// Iterates a shared vector by cloning its elements.
struct ArcIter<T> {
    v: Arc<Vec<T>>,
    i: usize,
}

impl<T: Clone> Iterator for ArcIter<T> {
    type Item = T;
    #[inline]
    fn next(&mut self) -> Option<T> {
        let x = self.v.get(self.i)?.clone();
        self.i += 1;
        Some(x)
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = self.v.len() - self.i;
        (n, Some(n))
    }
}

/// A task's share of execution memory: grows on request, spills when refused, and gives
/// everything back when dropped.
pub(crate) struct MemoryConsumer<'a> {
    tc: &'a TaskContext,
    granted: u64,
}

impl<'a> MemoryConsumer<'a> {
    pub(crate) fn new(tc: &'a TaskContext) -> Self {
        MemoryConsumer { tc, granted: 0 }
    }

    /// Makes sure `used` bytes are covered, asking for more when needed. Returns false when the
    /// budget refuses: the caller must spill and then call [`MemoryConsumer::release_all`].
    pub(crate) fn ensure(&mut self, used: u64) -> bool {
        if used <= self.granted {
            return true;
        }
        let want = (used * 2).max(used + (1 << 20)) - self.granted;
        let got = self.tc.env().blocks.acquire_execution(self.tc.task_attempt_id, want);
        self.granted += got;
        used <= self.granted
    }

    pub(crate) fn release_all(&mut self) {
        self.tc.env().blocks.release_execution(self.tc.task_attempt_id, self.granted);
        self.granted = 0;
    }
}

impl Drop for MemoryConsumer<'_> {
    fn drop(&mut self) {
        self.release_all();
    }
}
