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
use std::fs::File;
use std::io::{BufReader, BufWriter, Read};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::conf::Codec;
use crate::data::{Data, SizeSampler};
use crate::error::{Error, Result};
use crate::stream::{ChunkDecoder, ChunkEncoder, StreamWriter};
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
    /// [`MemoryOnly`](Self::MemoryOnly), and a copy on a second executor (on its disk).
    MemoryOnly2,
    /// [`MemoryOnlySer`](Self::MemoryOnlySer), and a copy on a second executor.
    MemoryOnlySer2,
    /// [`MemoryAndDisk`](Self::MemoryAndDisk), and a copy on a second executor.
    MemoryAndDisk2,
    /// [`MemoryAndDiskSer`](Self::MemoryAndDiskSer), and a copy on a second executor.
    MemoryAndDiskSer2,
    /// [`DiskOnly`](Self::DiskOnly), and a copy on a second executor.
    DiskOnly2,
}

impl StorageLevel {
    /// The level without its replication: how the first copy is kept.
    pub fn base(self) -> StorageLevel {
        match self {
            StorageLevel::MemoryOnly2 => StorageLevel::MemoryOnly,
            StorageLevel::MemoryOnlySer2 => StorageLevel::MemoryOnlySer,
            StorageLevel::MemoryAndDisk2 => StorageLevel::MemoryAndDisk,
            StorageLevel::MemoryAndDiskSer2 => StorageLevel::MemoryAndDiskSer,
            StorageLevel::DiskOnly2 => StorageLevel::DiskOnly,
            other => other,
        }
    }
    /// How many executors keep a copy of each partition (Spark's `_2` levels keep two: a
    /// partition survives the loss of one executor without recomputation). A cluster keeps the
    /// second copy on another executor's disk; in local mode there is one copy.
    pub fn replication(self) -> usize {
        match self {
            StorageLevel::None => 0,
            l if l != l.base() => 2,
            _ => 1,
        }
    }
    /// Whether the level keeps data in memory.
    pub fn use_memory(self) -> bool {
        !matches!(self.base(), StorageLevel::None | StorageLevel::DiskOnly)
    }
    /// Whether the level may keep data on disk.
    pub fn use_disk(self) -> bool {
        matches!(self.base(), StorageLevel::MemoryAndDisk | StorageLevel::MemoryAndDiskSer | StorageLevel::DiskOnly)
    }
    /// Whether in-memory data is kept as objects rather than bytes.
    pub fn deserialized(self) -> bool {
        matches!(self.base(), StorageLevel::MemoryOnly | StorageLevel::MemoryAndDisk)
    }
}

/// The largest partition copied to a second executor (it travels in one message).
pub const MAX_REPLICA_BYTES: u64 = 256 << 20;

/// Sends a copy of a cached partition to another executor: the partition (RDD and split) and
/// its block file's bytes, size and record count.
pub type Replicator = Arc<dyn Fn(RddId, usize, Vec<u8>, u64, u64) + Send + Sync>;

/// Reads partition `split` of `rdd` from another executor (named by its id): the bytes, size
/// and record count of its block file, or `None` when that executor does not hold it. Set by a
/// cluster runtime; a task whose cached input is elsewhere reads it so instead of computing it.
pub type RemoteReader = Arc<dyn Fn(&str, RddId, usize) -> Result<Option<(Vec<u8>, u64, u64)>> + Send + Sync>;

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
    /// Encoded chunks and how many records they hold.
    Bytes(Arc<Vec<u8>>, u64),
}

/// Writes the records of an in-memory block to a block file (used when evicting it to disk).
type ToFile = fn(&Stored, &mut BlockFile) -> Result<()>;

struct MemEntry {
    stored: Stored,
    size: u64,
    last_used: u64,
    level: StorageLevel,
    to_file: ToFile,
}

struct DiskEntry {
    path: PathBuf,
    size: u64,
    /// Records in the block: a read that yields another count is a corrupt block.
    records: u64,
}

/// The highest memory use seen while a watch was open (see [`BlockManager::begin_watch`]).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct MemoryPeaks {
    /// Most execution memory granted to tasks at one time.
    pub execution: u64,
    /// Most storage memory at one time: cached blocks, partitions being unrolled into the cache
    /// and map outputs held in memory.
    pub storage: u64,
    /// Most execution plus storage memory at one time (at most the budget: every grant comes
    /// out of it).
    pub total: u64,
}

impl MemoryPeaks {
    /// The larger of each peak.
    pub fn max(self, o: MemoryPeaks) -> MemoryPeaks {
        MemoryPeaks {
            execution: self.execution.max(o.execution),
            storage: self.storage.max(o.storage),
            total: self.total.max(o.total),
        }
    }
}

#[derive(Default)]
struct State {
    exec_used: u64,
    exec_by_task: HashMap<u64, u64>,
    /// Cached blocks held in memory.
    storage_used: u64,
    /// Reserved by partitions being unrolled into the cache.
    unroll_used: u64,
    /// Map outputs held in memory.
    shuffle_used: u64,
    memory: HashMap<BlockId, MemEntry>,
    disk: HashMap<BlockId, DiskEntry>,
    tick: u64,
    evictions: u64,
    watches: HashMap<u64, MemoryPeaks>,
    next_watch: u64,
    /// Blocks added or removed since the last location report (`None`: not reported).
    touched: Option<std::collections::HashSet<BlockId>>,
}

impl State {
    /// Notes that a block may have come or gone, for the next location report.
    fn touch(&mut self, id: BlockId) {
        if let Some(t) = &mut self.touched {
            t.insert(id);
        }
    }

    /// Storage memory in all its forms.
    fn storage_all(&self) -> u64 {
        self.storage_used + self.unroll_used + self.shuffle_used
    }

    fn used(&self) -> u64 {
        self.exec_used + self.storage_all()
    }

    /// Raises the open watches' peaks to the current use; called after every increase.
    fn note_peaks(&mut self) {
        if self.watches.is_empty() {
            return;
        }
        let now = MemoryPeaks { execution: self.exec_used, storage: self.storage_all(), total: self.used() };
        for p in self.watches.values_mut() {
            *p = p.max(now);
        }
    }
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
    /// Bytes used by cached blocks, including partitions being unrolled into the cache.
    pub storage_used: u64,
    /// Bytes granted to running tasks.
    pub execution_used: u64,
    /// Bytes of shuffle map outputs held in memory (inside the budget, like the other two).
    pub shuffle_memory_bytes: u64,
    /// Blocks evicted from memory so far.
    pub evictions: u64,
    /// Cached blocks, sorted by id.
    pub blocks: Vec<BlockStatus>,
}

/// Keeps cached blocks and accounts the memory budget of one executor.
pub struct BlockManager {
    /// Where copies of partitions of replicated levels go (a cluster executor's peers).
    replicator: std::sync::OnceLock<Replicator>,
    remote: std::sync::OnceLock<RemoteReader>,
    budget: u64,
    storage_floor: u64,
    slots: u64,
    dir: PathBuf,
    codec: Codec,
    state: Mutex<State>,
}

fn objects_to_file<T: Data>(stored: &Stored, f: &mut BlockFile) -> Result<()> {
    match stored {
        Stored::Objects(any) => {
            let v = any
                .downcast_ref::<Vec<T>>()
                .ok_or_else(|| Error::Internal("cached block has an unexpected type".into()))?;
            v.iter().try_for_each(|r| f.write(r))
        }
        Stored::Bytes(b, records) => f.write_encoded(b, *records),
    }
}

/// A block being written to disk record by record: a temporary file renamed into place by
/// [`BlockFile::finish`], removed if dropped before.
pub(crate) struct BlockFile {
    w: Option<StreamWriter<BufWriter<File>>>,
    tmp: PathBuf,
    path: PathBuf,
    /// Records written, counted as they go by.
    records: u64,
}

impl BlockFile {
    fn create(dir: &Path, id: &BlockId, codec: Codec, unique: u64) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let path = dir.join(id.to_string());
        let tmp = dir.join(format!("{id}.{unique}.tmp"));
        let file = File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
        let w = StreamWriter::new(BufWriter::with_capacity(1 << 16, file), codec, &tmp);
        Ok(BlockFile { w: Some(w), tmp, path, records: 0 })
    }

    fn writer(&mut self) -> Result<&mut StreamWriter<BufWriter<File>>> {
        self.w.as_mut().ok_or_else(|| Error::Internal("block file written after it was finished".into()))
    }

    /// Appends one record.
    pub(crate) fn write<T: Serialize>(&mut self, r: &T) -> Result<()> {
        self.records += 1;
        self.writer()?.write(r)
    }

    /// Appends already-encoded chunks.
    fn write_encoded(&mut self, bytes: &[u8], records: u64) -> Result<()> {
        self.records += records;
        self.writer()?.write_encoded(bytes)
    }

    /// Flushes the file and moves it into place.
    fn finish(mut self) -> Result<DiskEntry> {
        let mut w = self.w.take().ok_or_else(|| Error::Internal("block file finished twice".into()))?;
        let size = w.end_segment()?;
        drop(w.finish()?);
        std::fs::rename(&self.tmp, &self.path).map_err(|e| Error::io(&self.path, e))?;
        Ok(DiskEntry { path: self.path.clone(), size, records: self.records })
    }
}

impl Drop for BlockFile {
    fn drop(&mut self) {
        if self.w.is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Unroll memory reserved for a partition being cached; given back when dropped.
struct Unroll<'a> {
    bm: &'a BlockManager,
    bytes: u64,
}

impl Drop for Unroll<'_> {
    fn drop(&mut self) {
        if self.bytes > 0 {
            let mut st = self.bm.lock();
            st.unroll_used = st.unroll_used.saturating_sub(self.bytes);
        }
    }
}

/// The start of a partition that did not fit in memory: what was unrolled before the budget
/// refused, still holding its unroll memory.
enum Partial<'a, T> {
    Objects(Vec<T>, Unroll<'a>),
    /// Encoded records, how many, and their memory.
    Bytes(ChunkEncoder, u64, Unroll<'a>),
}

/// Unroll memory is reserved in steps of at least this much, so most records need no lock.
const UNROLL_STEP: u64 = 64 << 10;

/// Checks a copy of block `id` read from another executor: its size, every chunk, and its
/// record count.
fn check_copy<T: Data>(id: &BlockId, bytes: &[u8], size: u64, records: u64) -> Result<()> {
    if bytes.len() as u64 != size {
        return Err(Error::Serialization(format!("a copy of block {id} has {} bytes, not {size}", bytes.len())));
    }
    let mut dec = ChunkDecoder::<_, T>::new(bytes, &PathBuf::from(id.to_string())).expecting(size);
    let mut read = 0u64;
    while dec.next_record()?.is_some() {
        read += 1;
    }
    if read != records {
        return Err(Error::Serialization(format!("a copy of block {id} holds {read} records, not {records}")));
    }
    Ok(())
}

/// Reads a block's records from a stream, dropping the block (so that the next attempt
/// recomputes it from lineage) and failing the task if the stream is corrupt.
struct BlockReader<'a, R: Read, T> {
    dec: ChunkDecoder<R, T>,
    bm: &'a BlockManager,
    id: BlockId,
    tc: &'a TaskContext,
    /// Records the block holds, and records read so far.
    records: u64,
    read: u64,
}

impl<'a, R: Read, T: DeserializeOwned> BlockReader<'a, R, T> {
    fn new(src: R, size: Option<u64>, records: u64, bm: &'a BlockManager, id: BlockId, tc: &'a TaskContext) -> Self {
        let dec = ChunkDecoder::new(src, &PathBuf::from(id.to_string()));
        let dec = match size {
            Some(n) => dec.expecting(n),
            None => dec,
        };
        BlockReader { dec, bm, id, tc, records, read: 0 }
    }

    fn corrupt(&self, e: Error) -> Option<T> {
        self.bm.remove_block(&self.id);
        self.tc.fail(e);
        None
    }
}

impl<R: Read, T: DeserializeOwned> Iterator for BlockReader<'_, R, T> {
    type Item = T;
    fn next(&mut self) -> Option<T> {
        match self.dec.next_record() {
            Ok(Some(r)) => {
                self.read += 1;
                Some(r)
            }
            Ok(None) if self.read == self.records => None,
            Ok(None) => {
                let (id, read, records) = (self.id, self.read, self.records);
                self.corrupt(Error::Serialization(format!("block {id} holds {read} records, not {records}")))
            }
            Err(e) => self.corrupt(e),
        }
    }
}

/// A shared byte buffer read from the start.
struct SharedBytes {
    bytes: Arc<Vec<u8>>,
    pos: usize,
}

impl Read for SharedBytes {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let rest = self.bytes.get(self.pos..).unwrap_or(&[]);
        let n = buf.len().min(rest.len());
        buf[..n].copy_from_slice(&rest[..n]);
        self.pos += n;
        Ok(n)
    }
}

/// Records unrolled before memory was refused, then the rest of the partition, for a level
/// that cannot go to disk: the partition is passed through uncached, and the unroll memory is
/// held until the iterator is dropped.
struct PassThrough<'a, T> {
    head: Box<dyn Iterator<Item = T> + 'a>,
    rest: BoxIter<'a, T>,
    _unroll: Unroll<'a>,
}

impl<T> Iterator for PassThrough<'_, T> {
    type Item = T;
    fn next(&mut self) -> Option<T> {
        self.head.next().or_else(|| self.rest.next())
    }
}

impl BlockManager {
    pub(crate) fn new(budget: u64, storage_fraction: f64, slots: usize, dir: PathBuf, codec: Codec) -> Self {
        BlockManager {
            replicator: std::sync::OnceLock::new(),
            remote: std::sync::OnceLock::new(),
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

    /// The most execution memory one task may hold: the budget divided among the slots.
    pub(crate) fn task_share(&self) -> u64 {
        self.budget / self.slots
    }

    // ---- peaks ---------------------------------------------------------------------------------

    /// Starts recording peak memory use; [`BlockManager::end_watch`] returns the peaks seen
    /// between the two calls. Peaks are executor-wide: work of other jobs running at the same
    /// time counts too, so they bound what the watched work used.
    pub fn begin_watch(&self) -> u64 {
        let mut st = self.lock();
        st.next_watch += 1;
        let id = st.next_watch;
        let now = MemoryPeaks { execution: st.exec_used, storage: st.storage_all(), total: st.used() };
        st.watches.insert(id, now);
        id
    }

    /// Stops a watch and returns its peaks (zero for an unknown watch).
    pub fn end_watch(&self, watch: u64) -> MemoryPeaks {
        self.lock().watches.remove(&watch).unwrap_or_default()
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
        let free = self.budget.saturating_sub(st.used());
        if want > free {
            let evictable = st.storage_used.saturating_sub(self.storage_floor);
            let need = (want - free).min(evictable);
            self.evict(&mut st, need, None);
        }
        let free = self.budget.saturating_sub(st.used());
        let granted = want.min(free);
        st.exec_used += granted;
        *st.exec_by_task.entry(task).or_default() += granted;
        st.note_peaks();
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

    // ---- map outputs in memory ---------------------------------------------------------------

    /// Takes `bytes` of storage memory for a map output held in memory, if they are free and
    /// the map outputs in memory stay within `cap`. Cached blocks are not evicted for it: an
    /// output that does not fit goes to a file instead.
    pub(crate) fn acquire_shuffle(&self, bytes: u64, cap: u64) -> bool {
        let mut st = self.lock();
        let fits_cap = st.shuffle_used.checked_add(bytes).is_some_and(|t| t <= cap);
        if !fits_cap || bytes > self.budget.saturating_sub(st.used()) {
            return false;
        }
        st.shuffle_used += bytes;
        st.note_peaks();
        true
    }

    /// Gives back the memory of a map output that was deleted.
    pub(crate) fn release_shuffle(&self, bytes: u64) {
        let mut st = self.lock();
        st.shuffle_used = st.shuffle_used.saturating_sub(bytes);
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
            st.touch(id);
            st.storage_used -= entry.size;
            freed += entry.size;
            st.evictions += 1;
            if entry.level.use_disk() && !st.disk.contains_key(&id) {
                // Records stream to the file: evicting never needs a serialized copy in memory.
                let written = self
                    .create_block_file(&id)
                    .and_then(|mut f| (entry.to_file)(&entry.stored, &mut f).and_then(|()| f.finish()));
                match written {
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

    fn create_block_file(&self, id: &BlockId) -> Result<BlockFile> {
        let unique = {
            // Two attempts may write the same block at once; each gets its own temporary file.
            static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        };
        BlockFile::create(&self.dir, id, self.codec, unique)
    }

    /// Reserves `bytes` more unroll memory for a partition of `rdd` being cached, evicting
    /// blocks of other RDDs if needed. Returns false (reserving nothing) when they do not fit.
    fn reserve_unroll(&self, rdd: RddId, unroll: &mut Unroll<'_>, bytes: u64) -> bool {
        let mut st = self.lock();
        let free = self.budget.saturating_sub(st.used());
        if bytes > free {
            self.evict(&mut st, bytes - free, Some(rdd));
        }
        if bytes > self.budget.saturating_sub(st.used()) {
            return false;
        }
        st.unroll_used += bytes;
        unroll.bytes += bytes;
        st.note_peaks();
        true
    }

    /// Turns a partition's unroll memory into a cached block of `size` bytes (no more than the
    /// reservation, which is what keeps the cache inside the budget).
    fn put_unrolled(&self, id: BlockId, stored: Stored, mut unroll: Unroll<'_>, level: StorageLevel, to_file: ToFile) {
        let mut st = self.lock();
        let size = std::mem::take(&mut unroll.bytes);
        st.unroll_used = st.unroll_used.saturating_sub(size);
        st.tick += 1;
        let tick = st.tick;
        st.touch(id);
        if let Some(old) = st.memory.insert(id, MemEntry { stored, size, last_used: tick, level, to_file }) {
            st.storage_used -= old.size;
        }
        st.storage_used += size;
    }

    /// Returns the cached partition if present, else computes it, caches it as `level` allows,
    /// and returns it. A partition that fits nowhere is returned uncached.
    ///
    /// Nothing is materialized outside the budget: a memory level unrolls the partition with
    /// unroll memory reserved as it grows; when the budget refuses, a level with disk streams
    /// what was unrolled and then the rest of the partition to a block file, and a memory-only
    /// level passes the partition through uncached. `DiskOnly` streams every record to the file
    /// as the partition yields it.
    pub(crate) fn get_or_compute<'a, T: Data>(
        &'a self,
        rdd: RddId,
        split: usize,
        level: StorageLevel,
        tc: &'a TaskContext,
        compute: impl FnOnce() -> BoxIter<'a, T>,
    ) -> BoxIter<'a, T> {
        let id = BlockId::Rdd { rdd, split };
        match self.get::<T>(&id, tc) {
            Ok(Some(it)) => return it,
            Ok(None) => {}
            Err(e) => {
                // A lost or corrupt block is recomputed from lineage.
                tracing::warn!("block {id} unreadable, recomputing: {e}");
                self.remove_block(&id);
            }
        }
        if let Some(it) = self.read_remote::<T>(id, tc) {
            return it;
        }
        match self.cache(id, level, compute(), tc) {
            Ok(it) => {
                if level.replication() > 1 {
                    self.replicate(id);
                }
                it
            }
            Err(e) => {
                tc.fail(e);
                Box::new(std::iter::empty())
            }
        }
    }

    /// Sets how partitions other executors hold are read (see [`RemoteReader`]).
    pub fn set_remote_reader(&self, reader: RemoteReader) {
        let _ = self.remote.set(reader);
    }

    /// Partition `id` read from an executor the task names as holding it, kept here (on disk,
    /// as a copy) and read back; `None` when there is no such executor or none could give it
    /// (the caller computes it).
    fn read_remote<'a, T: Data>(&'a self, id: BlockId, tc: &'a TaskContext) -> Option<BoxIter<'a, T>> {
        let BlockId::Rdd { rdd, split } = id;
        let reader = self.remote.get()?;
        for holder in tc.remote_holders(rdd, split) {
            if tc.should_stop() {
                return None;
            }
            // Checked whole before it is kept: a damaged copy is a miss (the next holder, or
            // computing), never a copy that fails every task reading it.
            let read = reader(holder, rdd, split).and_then(|copy| {
                copy.map(|(b, size, n)| check_copy::<T>(&id, &b, size, n).map(|()| (b, size, n))).transpose()
            });
            match read {
                Ok(Some((bytes, size, records))) => match self.put_replica(rdd, split, &bytes, size, records) {
                    Ok(()) => match self.get::<T>(&id, tc) {
                        Ok(Some(it)) => return Some(it),
                        Ok(None) => {}
                        Err(e) => {
                            tracing::warn!("block {id} read from executor {holder} is unreadable: {e}");
                            self.remove_block(&id);
                        }
                    },
                    Err(e) => tracing::warn!("block {id} read from executor {holder} was not kept: {e}"),
                },
                Ok(None) => tracing::debug!("executor {holder} no longer holds block {id}"),
                Err(e) => tracing::warn!("reading block {id} from executor {holder} failed: {e}"),
            }
        }
        None
    }

    /// The size of partition `split` of `rdd` as kept here (on disk, or its memory estimate),
    /// when it is here.
    pub fn cached_size(&self, rdd: RddId, split: usize) -> Option<u64> {
        let st = self.lock();
        let id = BlockId::Rdd { rdd, split };
        st.disk.get(&id).map(|d| d.size).or_else(|| st.memory.get(&id).map(|m| m.size))
    }

    /// Sets where copies of partitions of replicated levels go.
    pub fn set_replicator(&self, replicator: Replicator) {
        let _ = self.replicator.set(replicator);
    }

    /// The bytes, size and record count of partition `split` of `rdd` as a block file (read
    /// from disk, or written from memory to a staging file of its own and read back), or `None`
    /// when it is not cached here: what a copy on another executor is made of.
    pub fn block_file_bytes(&self, rdd: RddId, split: usize) -> Result<Option<(Vec<u8>, u64, u64)>> {
        let id = BlockId::Rdd { rdd, split };
        let on_disk = self.lock().disk.get(&id).map(|d| (d.path.clone(), d.size, d.records));
        if let Some((path, size, records)) = on_disk {
            let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
            return Ok(Some((bytes, size, records)));
        }
        // In memory: written (outside the lock) to a staging file of this copy's own, apart
        // from this executor's block files.
        let (stored, to_file) = {
            let st = self.lock();
            let Some(entry) = st.memory.get(&id) else { return Ok(None) };
            let stored = match &entry.stored {
                Stored::Objects(o) => Stored::Objects(o.clone()),
                Stored::Bytes(b, n) => Stored::Bytes(b.clone(), *n),
            };
            (stored, entry.to_file)
        };
        let unique = {
            static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        };
        let staging = self.dir.join("replicas-out").join(unique.to_string());
        let mut f = BlockFile::create(&staging, &id, self.codec, unique)?;
        to_file(&stored, &mut f)?;
        let d = f.finish();
        let read = d.and_then(|d| {
            let bytes = std::fs::read(&d.path).map_err(|e| Error::io(&d.path, e))?;
            Ok((bytes, d.size, d.records))
        });
        let _ = std::fs::remove_dir_all(&staging);
        read.map(Some)
    }

    /// Sends a copy of a block just cached to the replicator, as a block file's bytes (a copy
    /// that cannot be made is left out: the partition is then recomputed if its executor goes).
    fn replicate(&self, id: BlockId) {
        let Some(replicator) = self.replicator.get() else { return };
        let BlockId::Rdd { rdd, split } = id;
        match self.block_file_bytes(rdd, split) {
            Ok(Some((bytes, _, _))) if bytes.len() as u64 > MAX_REPLICA_BYTES => {
                tracing::warn!("no second copy of block {id}: {} bytes is more than a copy may have", bytes.len());
            }
            Ok(Some((bytes, size, records))) => replicator(rdd, split, bytes, size, records),
            Ok(None) => {}
            Err(e) => tracing::warn!("no second copy of block {id}: {e}"),
        }
    }

    /// Keeps a copy of a partition another executor cached (its block file's bytes, size and
    /// record count), on disk.
    pub fn put_replica(&self, rdd: RddId, split: usize, bytes: &[u8], size: u64, records: u64) -> Result<()> {
        let id = BlockId::Rdd { rdd, split };
        if bytes.len() as u64 != size && size > bytes.len() as u64 {
            return Err(Error::Serialization(format!(
                "a copy of block {id} says it has {size} bytes but carries {}",
                bytes.len()
            )));
        }
        if self.contains(rdd, split) {
            return Ok(());
        }
        std::fs::create_dir_all(&self.dir).map_err(|e| Error::io(&self.dir, e))?;
        // A copy's own file name: never this executor's block file of the same partition.
        let path = self.dir.join(format!("{id}.replica"));
        let unique = {
            static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        };
        let tmp = self.dir.join(format!("{id}.replica.{unique}.tmp"));
        if let Err(e) = std::fs::write(&tmp, bytes) {
            let _ = std::fs::remove_file(&tmp);
            return Err(Error::io(&tmp, e));
        }
        let mut st = self.lock();
        if st.memory.contains_key(&id) || st.disk.contains_key(&id) {
            drop(st);
            let _ = std::fs::remove_file(&tmp);
            return Ok(());
        }
        if let Err(e) = std::fs::rename(&tmp, &path) {
            drop(st);
            let _ = std::fs::remove_file(&tmp);
            return Err(Error::io(&path, e));
        }
        st.disk.insert(id, DiskEntry { path, size, records });
        st.touch(id);
        Ok(())
    }

    fn cache<'a, T: Data>(
        &'a self,
        id: BlockId,
        level: StorageLevel,
        mut input: BoxIter<'a, T>,
        tc: &'a TaskContext,
    ) -> Result<BoxIter<'a, T>> {
        let mut file = None;
        if level.use_memory() {
            match self.unroll(id, level, &mut input, tc)? {
                Ok(cached) => return Ok(cached),
                Err(Partial::Objects(head, unroll)) if !level.use_disk() => {
                    return Ok(Box::new(PassThrough {
                        head: Box::new(head.into_iter()),
                        rest: input,
                        _unroll: unroll,
                    }));
                }
                Err(Partial::Bytes(mut enc, n, unroll)) if !level.use_disk() => {
                    let bytes = Arc::new(enc.take_bytes());
                    let head = BlockReader::new(SharedBytes { bytes, pos: 0 }, None, n, self, id, tc);
                    return Ok(Box::new(PassThrough { head: Box::new(head), rest: input, _unroll: unroll }));
                }
                Err(partial) => {
                    // Write what was unrolled, then give its memory back before streaming on.
                    let mut f = self.create_block_file(&id)?;
                    match partial {
                        Partial::Objects(head, _unroll) => head.iter().try_for_each(|r| f.write(r))?,
                        Partial::Bytes(mut enc, n, _unroll) => f.write_encoded(&enc.take_bytes(), n)?,
                    }
                    file = Some(f);
                }
            }
        }
        if !level.use_disk() {
            return Ok(input);
        }
        let mut f = match file {
            Some(f) => f,
            None => self.create_block_file(&id)?,
        };
        for r in input {
            f.write(&r)?;
        }
        if let Some(e) = tc.take_error() {
            // The partition is incomplete: leave nothing behind and fail with the first error.
            return Err(e);
        }
        if tc.should_stop() {
            return Ok(Box::new(std::iter::empty()));
        }
        let d = f.finish()?;
        let (path, size, records) = (d.path.clone(), d.size, d.records);
        {
            let mut st = self.lock();
            st.disk.insert(id, d);
            st.touch(id);
        }
        self.read_disk(id, &path, size, records, tc)
    }

    /// Unrolls a partition into memory with unroll memory reserved as it grows, caching it
    /// when the whole partition fits. `Err` holds what was unrolled when the budget refused.
    #[allow(clippy::type_complexity)]
    fn unroll<'a, T: Data>(
        &'a self,
        id: BlockId,
        level: StorageLevel,
        input: &mut BoxIter<'a, T>,
        tc: &'a TaskContext,
    ) -> Result<std::result::Result<BoxIter<'a, T>, Partial<'a, T>>> {
        let BlockId::Rdd { rdd, .. } = id;
        let mut unroll = Unroll { bm: self, bytes: 0 };
        let mut values: Vec<T> = Vec::new();
        let mut enc = ChunkEncoder::new(self.codec);
        let mut heap = 0u64;
        let mut n = 0u64;
        let deserialized = level.deserialized();
        loop {
            // A full vector is about to double: account its next capacity before it grows.
            let capacity = match values.capacity() {
                c if values.len() == c => (2 * c).max(16),
                c => c,
            };
            let used = if deserialized {
                64 + capacity as u64 * std::mem::size_of::<T>() as u64 + heap
            } else {
                64 + enc.held_bytes() as u64
            };
            if used > unroll.bytes {
                let step = (used - unroll.bytes).max(UNROLL_STEP).max(unroll.bytes / 2);
                let exact = used - unroll.bytes;
                if !self.reserve_unroll(rdd, &mut unroll, step) && !self.reserve_unroll(rdd, &mut unroll, exact) {
                    return Ok(Err(if deserialized {
                        Partial::Objects(values, unroll)
                    } else {
                        Partial::Bytes(enc, n, unroll)
                    }));
                }
            }
            let Some(r) = input.next() else { break };
            n += 1;
            if deserialized {
                values.reserve_exact(capacity - values.len());
                // Every record is measured: one record far larger than the others still counts
                // at its real size.
                heap += SizeSampler::heap_bytes(&r);
                values.push(r);
            } else {
                enc.push(&r)?;
            }
        }
        if tc.should_stop() {
            // An incomplete partition is not cached; the task fails with its error.
            return Ok(Ok(Box::new(values.into_iter())));
        }
        if deserialized {
            let values = Arc::new(values);
            let stored = Stored::Objects(values.clone() as Arc<dyn Any + Send + Sync>);
            self.put_unrolled(id, stored, unroll, level, objects_to_file::<T>);
            Ok(Ok(Box::new(ArcIter { v: values, i: 0 })))
        } else {
            let bytes = Arc::new(enc.take_bytes());
            self.put_unrolled(id, Stored::Bytes(bytes.clone(), n), unroll, level, objects_to_file::<T>);
            Ok(Ok(Box::new(BlockReader::new(SharedBytes { bytes, pos: 0 }, None, n, self, id, tc))))
        }
    }

    fn read_disk<'a, T: Data>(
        &'a self,
        id: BlockId,
        path: &Path,
        size: u64,
        records: u64,
        tc: &'a TaskContext,
    ) -> Result<BoxIter<'a, T>> {
        let f = File::open(path).map_err(|e| Error::io(path, e))?;
        let src = BufReader::with_capacity(1 << 16, f);
        Ok(Box::new(BlockReader::new(src, Some(size), records, self, id, tc)))
    }

    /// The records of a cached block, or `None` when this block manager does not hold it.
    /// Serialized and disk blocks are decoded as they are read; a corrupt block found while
    /// reading is dropped (so the next attempt recomputes it) and fails the task.
    pub(crate) fn get<'a, T: Data>(&'a self, id: &BlockId, tc: &'a TaskContext) -> Result<Option<BoxIter<'a, T>>> {
        let found = {
            let mut st = self.lock();
            st.tick += 1;
            let tick = st.tick;
            match st.memory.get_mut(id) {
                Some(e) => {
                    e.last_used = tick;
                    Some(match &e.stored {
                        Stored::Objects(o) => Stored::Objects(o.clone()),
                        Stored::Bytes(b, n) => Stored::Bytes(b.clone(), *n),
                    })
                }
                None => None,
            }
        };
        match found {
            Some(Stored::Objects(o)) => {
                let v =
                    o.downcast::<Vec<T>>().map_err(|_| Error::Internal(format!("block {id} holds another type")))?;
                Ok(Some(Box::new(ArcIter { v, i: 0 })))
            }
            Some(Stored::Bytes(bytes, n)) => {
                Ok(Some(Box::new(BlockReader::new(SharedBytes { bytes, pos: 0 }, None, n, self, *id, tc))))
            }
            None => {
                let entry = self.lock().disk.get(id).map(|d| (d.path.clone(), d.size, d.records));
                match entry {
                    Some((p, size, records)) => self.read_disk(*id, &p, size, records, tc).map(Some),
                    None => Ok(None),
                }
            }
        }
    }

    /// Starts keeping track of the cached partitions this executor gains and loses, for
    /// [`take_location_changes`](Self::take_location_changes).
    pub fn track_locations(&self) {
        let mut st = self.lock();
        if st.touched.is_none() {
            st.touched = Some(Default::default());
        }
    }

    /// The RDD partitions cached (in memory or on disk) and dropped since the last call, as
    /// `(rdd, split)` pairs: what an executor reports to its driver's block locations.
    pub fn take_location_changes(&self) -> (Vec<(RddId, usize)>, Vec<(RddId, usize)>) {
        let mut st = self.lock();
        let Some(touched) = st.touched.as_mut().filter(|t| !t.is_empty()).map(std::mem::take) else {
            return (Vec::new(), Vec::new());
        };
        let (mut added, mut removed) = (Vec::new(), Vec::new());
        for id in touched {
            let BlockId::Rdd { rdd, split } = id;
            match st.memory.contains_key(&id) || st.disk.contains_key(&id) {
                true => added.push((rdd, split)),
                false => removed.push((rdd, split)),
            }
        }
        (added, removed)
    }

    /// Whether partition `split` of `rdd` is cached here (in memory or on disk).
    pub fn contains(&self, rdd: RddId, split: usize) -> bool {
        let st = self.lock();
        let id = BlockId::Rdd { rdd, split };
        st.memory.contains_key(&id) || st.disk.contains_key(&id)
    }

    /// [`contains`](Self::contains) without waiting for the store's lock (held, for one, while
    /// evicted blocks are written to disk): `None` when it is taken.
    pub fn try_contains(&self, rdd: RddId, split: usize) -> Option<bool> {
        let st = match self.state.try_lock() {
            Ok(st) => st,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return None,
        };
        let id = BlockId::Rdd { rdd, split };
        Some(st.memory.contains_key(&id) || st.disk.contains_key(&id))
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
        st.touch(*id);
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
            storage_used: st.storage_used + st.unroll_used,
            execution_used: st.exec_used,
            shuffle_memory_bytes: st.shuffle_used,
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

    /// Gives back what is granted beyond `used` bytes (the slack `ensure` asks for, or memory
    /// the caller no longer holds), so that others, such as the map output about to be kept in
    /// memory, can have it.
    pub(crate) fn shrink_to(&mut self, used: u64) {
        if self.granted > used {
            self.tc.env().blocks.release_execution(self.tc.task_attempt_id, self.granted - used);
            self.granted = used;
        }
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

#[cfg(test)]
mod tests {
    use super::StorageLevel as L;

    #[test]
    fn replicated_levels_keep_their_base_level_and_two_copies() {
        let pairs = [
            (L::MemoryOnly2, L::MemoryOnly),
            (L::MemoryOnlySer2, L::MemoryOnlySer),
            (L::MemoryAndDisk2, L::MemoryAndDisk),
            (L::MemoryAndDiskSer2, L::MemoryAndDiskSer),
            (L::DiskOnly2, L::DiskOnly),
        ];
        for (replicated, base) in pairs {
            assert_eq!(replicated.base(), base);
            assert_eq!((replicated.replication(), base.replication()), (2, 1));
            assert_eq!(replicated.use_memory(), base.use_memory());
            assert_eq!(replicated.use_disk(), base.use_disk());
            assert_eq!(replicated.deserialized(), base.deserialized());
        }
        assert_eq!(L::None.replication(), 0);
    }

    /// A task context in a scratch executor of its own.
    fn task(dir: &std::path::Path) -> crate::task::TaskContext {
        let settings = crate::conf::EmberConf::new().settings().expect("default settings");
        let tracker = std::sync::Arc::new(crate::scheduler::MapOutputTracker::new());
        let env = std::sync::Arc::new(crate::env::Env::new(&settings, dir.to_path_buf(), tracker).expect("an env"));
        let kill = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        crate::task::TaskContext::new(crate::task::StageId(0), 0, 0, 1, env, kill)
    }

    #[test]
    fn a_partition_held_elsewhere_is_read_and_a_damaged_copy_is_computed() {
        use std::sync::atomic::{AtomicU64, Ordering};
        use std::sync::Arc;
        let rdd = super::RddId(1 << 40);
        let data: Vec<u64> = (0..5000).collect();
        let holder_dir = tempfile::tempdir().unwrap();
        let holder = task(holder_dir.path());
        let blocks = &holder.env().blocks;
        let cached: Vec<u64> =
            blocks.get_or_compute(rdd, 0, L::MemoryOnly, &holder, || Box::new(data.clone().into_iter())).collect();
        assert_eq!(cached, data);
        let copy = blocks.block_file_bytes(rdd, 0).unwrap().expect("held");

        for (damaged, want_computed) in [(false, 0), (true, 1)] {
            let dir = tempfile::tempdir().unwrap();
            let tc = task(dir.path()).with_remote_input(Some((rdd, 0)), &[Arc::from("holder")]);
            let mut bytes = copy.clone();
            if damaged {
                let middle = bytes.0.len() / 2;
                bytes.0[middle] ^= 0x5a;
            }
            tc.env().blocks.set_remote_reader(Arc::new(move |who: &str, r, s| {
                assert_eq!((who, r, s), ("holder", rdd, 0));
                Ok(Some(bytes.clone()))
            }));
            let computed = AtomicU64::new(0);
            let got: Vec<u64> = tc
                .env()
                .blocks
                .get_or_compute(rdd, 0, L::MemoryOnly, &tc, || {
                    computed.fetch_add(1, Ordering::Relaxed);
                    Box::new(data.clone().into_iter())
                })
                .collect();
            assert_eq!(got, data, "damaged copy: {damaged}");
            assert_eq!(computed.load(Ordering::Relaxed), want_computed, "damaged copy: {damaged}");
            assert!(tc.take_error().is_none(), "the task did not fail");
            assert!(tc.env().blocks.contains(rdd, 0));
        }
    }
}
