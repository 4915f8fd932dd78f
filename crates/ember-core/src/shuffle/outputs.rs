//! Map outputs: the status a map task reports, the block list a reducer reads, and the store of
//! one executor's map output files and in-memory outputs.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockWriteGuard};

use serde::{Deserialize, Serialize};

use super::ShuffleId;
use crate::error::Result;
use crate::storage::BlockManager;

/// Where a map task's shuffle output lives and how big each reduce segment is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapStatus {
    /// The shuffle.
    pub shuffle: ShuffleId,
    /// The map partition.
    pub map: usize,
    /// The task attempt that wrote it: outputs of different attempts never share storage.
    pub attempt: u64,
    /// The executor holding the output.
    pub location: Arc<str>,
    /// The data file (the index file has the same stem with extension `index`), or `None` when
    /// the output is small enough to be held in the executor's memory.
    pub data: Option<PathBuf>,
    /// Where each reduce segment starts and ends in the output (compressed bytes); the executor's
    /// copy of an in-memory output shares the boundaries.
    pub segments: Arc<SegmentOffsets>,
}

/// The boundaries of a map output's reduce segments: segment `r` is `[at(r), at(r + 1))`. Kept
/// in 16 bits when the output is under 64 KiB and in 32 bits under 4 GiB, so that a
/// thousand-reducer output of one small record per reducer costs 2 KiB of boundaries; the writer
/// builds them as they end up in the tracker, which keeps them as they come.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SegmentOffsets {
    /// Boundaries of an output under 4 GiB.
    Small(Arc<[u32]>),
    /// Boundaries of a larger output.
    Large(Arc<[u64]>),
    /// Boundaries of an output under 64 KiB (last, so that the encoding of the other two is
    /// what it was).
    Tiny(Arc<[u16]>),
}

impl Default for SegmentOffsets {
    fn default() -> Self {
        SegmentOffsets::Tiny(Arc::default())
    }
}

impl SegmentOffsets {
    /// Boundaries from segment sizes (a total past `u64::MAX` saturates, and is then refused as
    /// a segment by [`segment`](Self::segment) readers that check it against the data).
    pub fn from_sizes(sizes: &[u64]) -> SegmentOffsets {
        let ends: Vec<u64> = std::iter::once(0)
            .chain(sizes.iter().scan(0u64, |at, &s| {
                *at = at.saturating_add(s);
                Some(*at)
            }))
            .collect();
        SegmentOffsets::from_boundaries(ends)
    }

    /// Boundaries as given (`ends[0]` is normally 0), narrowed to 16 or 32 bits when they fit.
    pub fn from_boundaries(ends: Vec<u64>) -> SegmentOffsets {
        // Chosen for the largest: every boundary fits the width.
        match Self::width(ends.iter().copied().max().unwrap_or(0)) {
            2 => SegmentOffsets::Tiny(ends.into_iter().map(|e| e as u16).collect()),
            4 => SegmentOffsets::Small(ends.into_iter().map(|e| e as u32).collect()),
            _ => SegmentOffsets::Large(ends.into()),
        }
    }

    /// The bytes per boundary of boundaries up to `max`.
    fn width(max: u64) -> u64 {
        if max <= u16::MAX as u64 {
            2
        } else if max <= u32::MAX as u64 {
            4
        } else {
            8
        }
    }

    /// Boundaries of 32-bit values, narrowed to 16 bits when they fit.
    pub fn from_u32(ends: &[u32]) -> SegmentOffsets {
        if ends.iter().all(|&e| e <= u16::MAX as u32) {
            // Checked just above: every boundary fits.
            SegmentOffsets::Tiny(ends.iter().map(|&e| e as u16).collect())
        } else {
            SegmentOffsets::Small(ends.into())
        }
    }

    /// The bytes the boundaries of an output of `bytes` bytes and `segments` segments take.
    pub fn heap_bytes_for(bytes: u64, segments: usize) -> u64 {
        (segments as u64 + 1) * Self::width(bytes)
    }

    /// The boundaries, widened to 64 bits.
    pub fn to_u64(&self) -> Vec<u64> {
        match self {
            SegmentOffsets::Tiny(o) => o.iter().map(|&e| e as u64).collect(),
            SegmentOffsets::Small(o) => o.iter().map(|&e| e as u64).collect(),
            SegmentOffsets::Large(o) => o.to_vec(),
        }
    }

    /// Whether the boundaries are ones a writer produces: at least one, the first 0, none
    /// smaller than the one before.
    pub fn is_well_formed(&self) -> bool {
        fn check<T: Copy + Ord + Default>(o: &[T]) -> bool {
            o.first() == Some(&T::default()) && o.windows(2).all(|w| w[0] <= w[1])
        }
        match self {
            SegmentOffsets::Tiny(o) => check(o),
            SegmentOffsets::Small(o) => check(o),
            SegmentOffsets::Large(o) => check(o),
        }
    }

    /// Where boundary `r` lies in memory (for a prefetch; never dereferenced).
    fn boundary_ptr(&self, r: usize) -> *const u8 {
        match self {
            SegmentOffsets::Tiny(o) => o.as_ptr().wrapping_add(r).cast(),
            SegmentOffsets::Small(o) => o.as_ptr().wrapping_add(r).cast(),
            SegmentOffsets::Large(o) => o.as_ptr().wrapping_add(r).cast(),
        }
    }

    /// The number of segments.
    pub fn len(&self) -> usize {
        match self {
            SegmentOffsets::Tiny(o) => o.len().saturating_sub(1),
            SegmentOffsets::Small(o) => o.len().saturating_sub(1),
            SegmentOffsets::Large(o) => o.len().saturating_sub(1),
        }
    }

    /// Whether there is no segment.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Segment `r` as (offset, length), or `None` when there is no such segment or its
    /// boundaries go backwards (a status no writer produced).
    #[inline]
    pub fn segment(&self, r: usize) -> Option<(u64, u64)> {
        let (start, end) = match self {
            SegmentOffsets::Tiny(o) => (*o.get(r)? as u64, *o.get(r.checked_add(1)?)? as u64),
            SegmentOffsets::Small(o) => (*o.get(r)? as u64, *o.get(r.checked_add(1)?)? as u64),
            SegmentOffsets::Large(o) => (*o.get(r)?, *o.get(r.checked_add(1)?)?),
        };
        Some((start, end.checked_sub(start)?))
    }

    /// The size of every segment, in order (a backwards segment counts as empty).
    pub fn sizes(&self) -> impl Iterator<Item = u64> + '_ {
        (0..self.len()).map(|r| self.segment(r).map_or(0, |s| s.1))
    }

    /// The bytes of all segments.
    pub fn total(&self) -> u64 {
        self.sizes().fold(0, u64::saturating_add)
    }

    /// The bytes the boundaries take.
    pub fn heap_bytes(&self) -> u64 {
        match self {
            SegmentOffsets::Tiny(o) => o.len() as u64 * 2,
            SegmentOffsets::Small(o) => o.len() as u64 * 4,
            SegmentOffsets::Large(o) => o.len() as u64 * 8,
        }
    }
}

/// Where every map output of a shuffle is, by map partition. It is the same for every reducer,
/// so the driver builds it once per shuffle and a reducer resolves its own segments where the
/// outputs are (the executor holding an output knows its boundaries), instead of receiving a
/// column of segment offsets built for it alone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapLocations {
    /// One entry per map task, in map order.
    pub maps: Vec<MapLocation>,
    /// Whether every output is held in memory (none is a file).
    pub all_in_memory: bool,
}

/// Where one map output is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapLocation {
    /// The map task attempt that wrote it.
    pub attempt: u64,
    /// The executor holding it, as in [`ReduceBlock::executor`].
    pub executor: u32,
    /// The data file, or `None` for an in-memory output.
    pub data: Option<Arc<Path>>,
}

/// One map output's segment for one reducer: what a reduce task needs to fetch it. A reducer
/// gets one per map task, so it is kept small: 48 bytes (the shuffle is the column's).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReduceBlock {
    /// The map partition (below [`MAX_PARTITIONS`](crate::conf::MAX_PARTITIONS)).
    pub map: u32,
    /// The executor holding it, as an index into the tracker's executors
    /// ([`MapOutputLocations::executor`]): a number, so that building a reducer's column of
    /// thousands of blocks copies no shared strings.
    pub executor: u32,
    /// The map task attempt that wrote it.
    pub attempt: u64,
    /// The data file, or `None` for an in-memory output.
    pub data: Option<Arc<Path>>,
    /// Byte offset of the segment in the output.
    pub offset: u64,
    /// Length of the segment in bytes.
    pub len: u64,
}

/// Where a reduce task learns the blocks it reads: the driver's map output tracker, in-process
/// in local mode (a remote executor asks the driver).
pub trait MapOutputLocations: Send + Sync {
    /// The blocks of reduce partition `reduce` of `shuffle`, one per map task in map order, or
    /// a fetch failure naming the first map whose output is missing.
    fn reduce_blocks(&self, shuffle: ShuffleId, maps: usize, reduce: usize) -> Result<Vec<ReduceBlock>> {
        let mut column = Vec::new();
        self.reduce_blocks_into(shuffle, maps, reduce, &mut column)?;
        Ok(column)
    }
    /// [`reduce_blocks`](Self::reduce_blocks) into `column` (cleared first), reusing its
    /// allocation.
    fn reduce_blocks_into(
        &self,
        shuffle: ShuffleId,
        maps: usize,
        reduce: usize,
        column: &mut Vec<ReduceBlock>,
    ) -> Result<()>;
    /// Where every map output of `shuffle` is (the same table for every reducer), or a fetch
    /// failure naming the first map whose output is missing (`reduce` is the reducer asking).
    fn map_locations(&self, shuffle: ShuffleId, maps: usize, reduce: usize) -> Result<Arc<MapLocations>>;
    /// The name of executor number `index` of [`ReduceBlock::executor`].
    fn executor(&self, index: u32) -> Option<Arc<str>>;
    /// Forgets a shuffle whose dependency is gone.
    fn remove_shuffle(&self, shuffle: ShuffleId);
}

/// The outputs an executor wrote, by shuffle, and the shuffles removed lately.
#[derive(Default)]
struct Written {
    by_shuffle: HashMap<ShuffleId, Vec<MapStatus>>,
    /// Shuffles removed, so that an output committed after its shuffle's removal (by a task
    /// still running when the last handle went) is deleted rather than kept. The most recent
    /// [`REMOVED_KEPT`] are remembered: a task outliving that many removals is not a concern.
    removed: std::collections::HashSet<ShuffleId>,
    removed_order: std::collections::VecDeque<ShuffleId>,
}

/// Removed shuffles remembered by [`Written`].
const REMOVED_KEPT: usize = 4096;

impl Written {
    fn remember_removed(&mut self, id: ShuffleId) {
        if self.removed.insert(id) {
            self.removed_order.push_back(id);
            if self.removed_order.len() > REMOVED_KEPT {
                if let Some(old) = self.removed_order.pop_front() {
                    self.removed.remove(&old);
                }
            }
        }
    }
}

/// In-memory map outputs by (shuffle, map, attempt).
type MemoryOutputs = HashMap<ShuffleId, ShuffleMemory, rustc_hash::FxBuildHasher>;

/// Map indexes a shuffle's in-memory table takes densely from the start.
const DENSE_START: usize = 1024;

/// One shuffle's map outputs held in memory, by map partition: a reducer finds each of its
/// blocks by index, in a table it reads in order, rather than by a hash lookup per block.
#[derive(Default)]
struct ShuffleMemory {
    /// The first attempt kept for each map partition (usually the only one).
    by_map: Vec<Option<(u64, MemoryOutput)>>,
    /// Further attempts of a map partition (retries and speculative copies), by (map, attempt).
    others: HashMap<(usize, u64), MemoryOutput, rustc_hash::FxBuildHasher>,
}

impl ShuffleMemory {
    fn get(&self, map: usize, attempt: u64) -> Option<&MemoryOutput> {
        match self.by_map.get(map) {
            Some(Some((a, o))) if *a == attempt => Some(o),
            _ if self.others.is_empty() => None,
            _ => self.others.get(&(map, attempt)),
        }
    }

    /// Keeps an output; returns the one it replaced (the same attempt kept twice).
    fn insert(&mut self, map: usize, attempt: u64, output: MemoryOutput) -> Option<MemoryOutput> {
        // The table is dense up to the highest map index seen, so it grows only gradually: an
        // index far beyond it (an executor holding a few maps of a huge shuffle) goes aside.
        if map >= self.by_map.len() && map < self.by_map.len().max(DENSE_START).saturating_mul(2) {
            self.by_map.resize_with(map + 1, || None);
        }
        match self.by_map.get_mut(map) {
            Some(slot @ None) => {
                let old = self.others.remove(&(map, attempt));
                *slot = Some((attempt, output));
                old
            }
            Some(Some((a, o))) if *a == attempt => Some(std::mem::replace(o, output)),
            _ => self.others.insert((map, attempt), output),
        }
    }

    fn remove(&mut self, map: usize, attempt: u64) -> Option<MemoryOutput> {
        match self.by_map.get_mut(map) {
            Some(slot @ Some(_)) if slot.as_ref().is_some_and(|(a, _)| *a == attempt) => slot.take().map(|(_, o)| o),
            _ => self.others.remove(&(map, attempt)),
        }
    }

    fn is_empty(&self) -> bool {
        self.others.is_empty() && self.by_map.iter().all(Option::is_none)
    }

    fn outputs(&self) -> impl Iterator<Item = &MemoryOutput> {
        self.by_map.iter().flatten().map(|(_, o)| o).chain(self.others.values())
    }
}

/// How many maps ahead a reducer's gather starts loading a block's boundaries (and half as
/// many, its bytes). Tasks of several map outputs in flight keep the processor's outstanding
/// loads busy without evicting what they bring before it is used.
const GATHER_AHEAD: usize = 8;

/// Asks the processor to bring the cache line at `p` close: a hint only, which reads nothing
/// the program sees and cannot fault, whatever the address.
#[inline(always)]
fn prefetch(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `_mm_prefetch` only hints the cache; it neither dereferences `p` in the program's
    // semantics nor faults on an invalid address, and every x86-64 processor implements it.
    // (Newer standard libraries declare it safe; the block is then merely redundant.)
    #[allow(unused_unsafe)]
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// A map output held in memory. An `Arc<[u8]>` holds the bytes beside their reference count,
/// so a reducer reaches a segment in one step.
struct MemoryOutput {
    bytes: Arc<[u8]>,
    /// Its segment boundaries (shared with its status).
    segments: SegmentOffsets,
    /// Whether segments are record streams (chunks with headers and checksums, compressed) or
    /// only the records' bytes back to back.
    framed: bool,
}

impl MemoryOutput {
    /// The memory it takes from the budget: its bytes and its boundaries.
    fn held(&self) -> u64 {
        self.bytes.len() as u64 + self.segments.heap_bytes()
    }

    /// Appends its bytes `[offset, offset + len)` to `out` and sets `range` to where they went;
    /// leaves both as they are when the output has no such bytes.
    #[inline]
    fn copy_segment(&self, offset: u64, len: u64, out: &mut Vec<u8>, range: &mut Option<MemorySegment>) {
        let end = offset.checked_add(len).and_then(|e| usize::try_from(e).ok());
        let Some(segment) = end.and_then(|end| self.bytes.get(offset as usize..end)) else { return };
        *range = Some(MemorySegment { at: out.len(), len: segment.len(), framed: self.framed });
        out.extend_from_slice(segment);
    }
}

/// One segment of a map output this executor holds, opened to be read in pieces
/// ([`ShuffleManager::open_segment`]).
pub struct SegmentSource {
    /// Shuffle, map and reduce partition, for errors.
    at: (ShuffleId, usize, usize),
    place: Place,
    framed: bool,
}

/// Where a segment's bytes are.
enum Place {
    /// In an output kept in memory (shared: the output may be dropped while the segment is read).
    Memory { bytes: Arc<[u8]>, start: usize, end: usize },
    /// In an output file, bytes `[start, end)`.
    File { file: std::fs::File, path: PathBuf, start: u64, end: u64 },
}

impl SegmentSource {
    /// Its length in bytes.
    pub fn len(&self) -> u64 {
        match &self.place {
            Place::Memory { start, end, .. } => (end - start) as u64,
            Place::File { start, end, .. } => end - start,
        }
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether it is a record stream (else the records' bytes back to back).
    pub fn framed(&self) -> bool {
        self.framed
    }

    fn failed(&self, why: String) -> crate::error::Error {
        let (shuffle, map, reduce) = self.at;
        crate::error::Error::FetchFailed { shuffle: shuffle.0, map, reduce, message: why }
    }

    /// Appends its bytes `[from, from + len)` to `out`; an error when they lie outside it or
    /// its file cannot be read.
    pub fn read(&self, from: u64, len: usize, out: &mut Vec<u8>) -> Result<()> {
        let to = from.checked_add(len as u64).filter(|&t| t <= self.len());
        let Some(to) = to else {
            return Err(self.failed(format!("bytes {from}..+{len} lie outside the segment of {}", self.len())));
        };
        match &self.place {
            Place::Memory { bytes, start, .. } => {
                out.extend_from_slice(&bytes[start + from as usize..start + to as usize]);
                Ok(())
            }
            Place::File { file, path, start, .. } => {
                use std::os::unix::fs::FileExt;
                let at = out.len();
                out.resize(at + len, 0);
                file.read_exact_at(&mut out[at..], start + from).map_err(|e| {
                    out.truncate(at);
                    self.failed(format!("{}: {e}", path.display()))
                })
            }
        }
    }
}

/// Where a reducer's copy of one segment lies (copied from this executor's memory or fetched
/// from another executor), and how to read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemorySegment {
    /// Offset of the segment in the copy.
    pub at: usize,
    /// Its length.
    pub len: usize,
    /// Whether it is a record stream (else the records' bytes back to back).
    pub framed: bool,
}

/// Fetches segments of map outputs held by other executors (a cluster runtime's data plane).
pub trait RemoteSegments: Send + Sync {
    /// Appends segment `reduce` of each output `(map, attempt)` of `shuffle` that executor
    /// `executor` holds to `out`, in order, and returns where each went. An error names the
    /// index in `maps` of the first output that could not be fetched, and why.
    fn fetch(
        &self,
        executor: &str,
        shuffle: ShuffleId,
        reduce: usize,
        maps: &[(usize, u64)],
        out: &mut Vec<u8>,
    ) -> std::result::Result<Vec<MemorySegment>, (usize, String)>;
}

/// The map outputs one executor holds: files, and small outputs kept in memory. Outputs kept
/// in memory take storage memory from the executor's budget (`BlockManager::acquire_shuffle`),
/// given back when they are deleted; an output the budget refuses goes to a file.
pub struct ShuffleManager {
    dir: PathBuf,
    /// Every output this executor wrote, by shuffle, so that removing a shuffle deletes them all
    /// (including those of attempts the driver never registered).
    written: Mutex<Written>,
    /// Read by reducers at once, written when an output is kept or deleted.
    memory: RwLock<MemoryOutputs>,
    memory_used: AtomicU64,
    memory_cap: u64,
    blocks: Arc<BlockManager>,
    /// Map outputs up to this size are kept in memory instead of files (creating and deleting
    /// small files dominates the cost of tiny jobs); larger ones stream to disk. 0: always files.
    pub(crate) memory_output_limit: usize,
    /// Fault injection: map statuses this executor still reports with backwards boundaries.
    malformed_statuses: AtomicU64,
    /// Called with each shuffle removed here (a cluster runtime tells its executors).
    on_remove: RwLock<Option<Arc<dyn Fn(ShuffleId) + Send + Sync>>>,
}

impl ShuffleManager {
    /// `memory_cap` bounds the bytes of map outputs held in memory (inside the budget of
    /// `blocks`); outputs larger than `memory_output_limit` always go to files.
    pub(crate) fn new(dir: PathBuf, blocks: Arc<BlockManager>, memory_cap: u64, memory_output_limit: usize) -> Self {
        ShuffleManager {
            dir,
            blocks,
            written: Mutex::new(Written::default()),
            memory: RwLock::new(MemoryOutputs::default()),
            memory_used: AtomicU64::new(0),
            memory_cap,
            memory_output_limit,
            malformed_statuses: AtomicU64::new(0),
            on_remove: RwLock::new(None),
        }
    }

    fn memory(&self) -> RwLockWriteGuard<'_, MemoryOutputs> {
        self.memory.write().unwrap_or_else(|p| p.into_inner())
    }

    fn written(&self) -> MutexGuard<'_, Written> {
        self.written.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How many of a shuffle's outputs this executor holds in memory as record streams and as
    /// bare records: `(framed, bare)`. For tests of the two formats.
    #[doc(hidden)]
    pub fn memory_output_formats(&self, shuffle: ShuffleId) -> (usize, usize) {
        let memory = self.memory.read().unwrap_or_else(|p| p.into_inner());
        let mine = memory.get(&shuffle).into_iter().flat_map(ShuffleMemory::outputs);
        mine.fold((0, 0), |(f, b), o| if o.framed { (f + 1, b) } else { (f, b + 1) })
    }

    /// Bytes of map outputs held in memory.
    pub fn memory_used(&self) -> u64 {
        self.memory_used.load(Ordering::Relaxed)
    }

    /// Takes `n` bytes of the memory budget (within the cap) for an output about to be kept in
    /// memory; `false` when the budget refuses them and the output must go to a file.
    pub(crate) fn reserve_memory(&self, n: u64) -> bool {
        if !self.blocks.acquire_shuffle(n, self.memory_cap) {
            return false;
        }
        self.memory_used.fetch_add(n, Ordering::AcqRel);
        true
    }

    /// Keeps a map output in memory, its bytes already reserved with
    /// [`reserve_memory`](Self::reserve_memory). `framed`: whether its segments are record
    /// streams, or the records' bytes back to back.
    /// The reservation covers its bytes and its boundaries (`SegmentOffsets::heap_bytes`).
    pub(crate) fn keep_in_memory(
        &self,
        (id, map, attempt): (ShuffleId, usize, u64),
        bytes: Arc<[u8]>,
        segments: SegmentOffsets,
        framed: bool,
    ) {
        let old = self.memory().entry(id).or_default().insert(map, attempt, MemoryOutput { bytes, segments, framed });
        if let Some(old) = old {
            self.release(old.held());
        }
    }

    /// Gives back memory reserved for an output that was not kept after all.
    pub(crate) fn unreserve_memory(&self, n: u64) {
        self.release(n);
    }

    fn release(&self, n: u64) {
        self.memory_used.fetch_sub(n, Ordering::AcqRel);
        self.blocks.release_shuffle(n);
    }

    /// Records an output this executor wrote (before its status goes to the driver). Returns
    /// `false`, having deleted the output, when its shuffle was removed while the task ran: a
    /// removed shuffle's outputs would otherwise be kept, and their memory taken, for good.
    pub(crate) fn record_written(&self, status: &MapStatus) -> bool {
        // Deleting needs the location of the data, not the segment sizes.
        let kept = MapStatus {
            segments: Arc::default(),
            location: status.location.clone(),
            data: status.data.clone(),
            ..*status
        };
        let mut written = self.written();
        if written.removed.contains(&status.shuffle) {
            drop(written);
            self.delete_output(status);
            return false;
        }
        written.by_shuffle.entry(status.shuffle).or_default().push(kept);
        true
    }

    /// Copies the segments of `blocks` held in memory into `out`, under one lock, and sets each
    /// block's range in it in `ranges` (`None` for file outputs and for outputs that are gone).
    /// Copying a reducer's segments costs less than sharing each output between reducers, whose
    /// reference counts would bounce between processor caches once per block.
    pub(crate) fn copy_memory_segments(
        &self,
        shuffle: ShuffleId,
        blocks: &[ReduceBlock],
        remote: &[bool],
        out: &mut Vec<u8>,
        ranges: &mut Vec<Option<MemorySegment>>,
    ) {
        out.clear();
        ranges.clear();
        ranges.resize(blocks.len(), None);
        // Blocks other executors hold are fetched, not copied from here.
        let here = |i: usize, b: &ReduceBlock| b.data.is_none() && !remote.get(i).copied().unwrap_or(false);
        if !blocks.iter().enumerate().any(|(i, b)| here(i, b)) {
            return;
        }
        let total: u64 = blocks.iter().enumerate().filter(|&(i, b)| here(i, b)).map(|(_, b)| b.len).sum();
        out.reserve(usize::try_from(total).unwrap_or(0));
        let memory = self.memory.read().unwrap_or_else(|p| p.into_inner());
        let Some(mine) = memory.get(&shuffle) else { return };
        for (i, (b, range)) in blocks.iter().zip(ranges.iter_mut()).enumerate() {
            if !here(i, b) {
                continue;
            }
            if let Some(output) = mine.get(b.map as usize, b.attempt) {
                output.copy_segment(b.offset, b.len, out, range);
            }
        }
    }

    /// Copies reduce segment `reduce` of every in-memory output of `locations` into `out`,
    /// under one lock, with each map's range in `ranges` (`None` for an output that is not here
    /// or has no such segment). The outputs know their own boundaries, so the reducer needs no
    /// column of offsets.
    pub(crate) fn copy_memory_column(
        &self,
        shuffle: ShuffleId,
        locations: &MapLocations,
        reduce: usize,
        out: &mut Vec<u8>,
        ranges: &mut Vec<Option<MemorySegment>>,
    ) {
        out.clear();
        ranges.clear();
        ranges.resize(locations.maps.len(), None);
        let memory = self.memory.read().unwrap_or_else(|p| p.into_inner());
        let Some(mine) = memory.get(&shuffle) else { return };
        let n = locations.maps.len();
        // Each block is a chain of loads from memory other tasks wrote (the output's boundaries,
        // then its bytes at the boundary), and a reducer of many small blocks waits on that chain
        // for nearly all of its gather. The chains of the blocks a few maps ahead are started as
        // prefetches, a step further for each link, so that the loads overlap: map `j` is looked
        // up (once) and its boundary prefetched at step `j`, its segment found and its bytes
        // prefetched at step `j + GATHER_AHEAD / 2`, and copied at step `j + GATHER_AHEAD`.
        let mut ring: [(Option<&MemoryOutput>, Option<(u64, u64)>); GATHER_AHEAD] = [(None, None); GATHER_AHEAD];
        for j in 0..n + GATHER_AHEAD {
            if j >= GATHER_AHEAD {
                let m = j - GATHER_AHEAD;
                if let ((Some(o), Some((offset, len))), Some(range)) = (ring[m % GATHER_AHEAD], ranges.get_mut(m)) {
                    o.copy_segment(offset, len, out, range);
                }
            }
            if let Some(k) = j.checked_sub(GATHER_AHEAD / 2).filter(|&k| k < n) {
                let slot = &mut ring[k % GATHER_AHEAD];
                if let Some(o) = slot.0 {
                    slot.1 = o.segments.segment(reduce);
                    if let Some((offset, _)) = slot.1 {
                        prefetch(o.bytes.as_ptr().wrapping_add(offset as usize));
                    }
                }
            }
            if j < n {
                let loc = &locations.maps[j];
                let o = if loc.data.is_some() { None } else { mine.get(j, loc.attempt) };
                if let Some(o) = o {
                    prefetch(o.segments.boundary_ptr(reduce));
                }
                ring[j % GATHER_AHEAD] = (o, None);
            }
        }
    }

    /// Deletes one output (an attempt that lost, or an output the driver dropped).
    pub fn delete_output(&self, s: &MapStatus) {
        match &s.data {
            Some(p) => {
                let _ = std::fs::remove_file(p);
                let _ = std::fs::remove_file(p.with_extension("index"));
            }
            None => {
                let removed = {
                    let mut memory = self.memory();
                    let removed = memory.get_mut(&s.shuffle).and_then(|m| m.remove(s.map, s.attempt));
                    // A table emptied one output at a time goes too (deletions are rare: losing
                    // attempts, lost outputs), so none outlives its shuffle.
                    if memory.get(&s.shuffle).is_some_and(ShuffleMemory::is_empty) {
                        memory.remove(&s.shuffle);
                    }
                    removed
                };
                if let Some(o) = removed {
                    self.release(o.held());
                }
            }
        }
        if let Some(v) = self.written().by_shuffle.get_mut(&s.shuffle) {
            v.retain(|w| !(w.map == s.map && w.attempt == s.attempt));
        }
    }

    /// Fault injection: the next `n` map statuses this executor reports carry boundaries that go
    /// backwards, as a broken or hostile executor's would. The driver refuses them.
    #[doc(hidden)]
    pub fn malform_next_statuses(&self, n: u64) {
        self.malformed_statuses.store(n, Ordering::SeqCst);
    }

    /// Applies [`malform_next_statuses`](Self::malform_next_statuses) to a status about to be
    /// reported.
    pub(crate) fn maybe_malform(&self, status: &mut MapStatus) {
        let take = |n: u64| n.checked_sub(1);
        if self.malformed_statuses.load(Ordering::Relaxed) > 0
            && self.malformed_statuses.fetch_update(Ordering::SeqCst, Ordering::SeqCst, take).is_ok()
        {
            status.segments = Arc::new(SegmentOffsets::from_boundaries(vec![0, 5, 3]));
        }
    }

    /// Fault injection: destroys a map output's data (file or memory) while the driver still
    /// lists it, as when an executor's disk is lost. Readers then hit a fetch failure and the
    /// scheduler recomputes the output.
    pub fn lose_output(&self, s: &MapStatus) {
        self.delete_output(s);
    }

    /// Deletes every output of a shuffle.
    /// Deletes every output of a shuffle this executor holds (its dependency is gone).
    pub fn remove_shuffle(&self, id: ShuffleId) {
        let hook = self.on_remove.read().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some(hook) = hook {
            hook(id);
        }
        let removed = {
            let mut written = self.written();
            written.remember_removed(id);
            written.by_shuffle.remove(&id)
        };
        for s in removed.into_iter().flatten().filter(|s| s.data.is_some()) {
            self.delete_output(&s);
        }
        // The in-memory outputs go at once (attempts never recorded as written included).
        let memory = self.memory().remove(&id);
        let bytes: u64 = memory.iter().flat_map(ShuffleMemory::outputs).map(MemoryOutput::held).sum();
        self.release(bytes);
    }

    /// Calls `hook` with each shuffle removed from now on (the driver's, so that a cluster
    /// runtime removes the shuffle on its executors too).
    pub fn on_remove_shuffle(&self, hook: Arc<dyn Fn(ShuffleId) + Send + Sync>) {
        *self.on_remove.write().unwrap_or_else(|p| p.into_inner()) = Some(hook);
    }

    /// Appends segment `reduce` of this executor's output of `(shuffle, map, attempt)` to `out`
    /// (for another executor's reducer) and says whether it is a record stream; an error when
    /// this executor holds no such output or its file cannot be read.
    pub fn read_segment(
        &self,
        shuffle: ShuffleId,
        map: usize,
        attempt: u64,
        reduce: usize,
        out: &mut Vec<u8>,
    ) -> Result<bool> {
        let source = self.open_segment(shuffle, map, attempt, reduce)?;
        let len = usize::try_from(source.len()).map_err(|_| source.failed("segment too large".into()))?;
        source.read(0, len, out)?;
        Ok(source.framed())
    }

    /// Segment `reduce` of this executor's output of `(shuffle, map, attempt)`, to read a piece
    /// at a time (what serving it to another executor holds in memory is a piece, not the
    /// segment); an error when this executor holds no such output or its index cannot be read.
    pub fn open_segment(&self, shuffle: ShuffleId, map: usize, attempt: u64, reduce: usize) -> Result<SegmentSource> {
        let missing = |why: String| crate::error::Error::FetchFailed { shuffle: shuffle.0, map, reduce, message: why };
        {
            let memory = self.memory.read().unwrap_or_else(|p| p.into_inner());
            if let Some(o) = memory.get(&shuffle).and_then(|m| m.get(map, attempt)) {
                let (offset, len) =
                    o.segments.segment(reduce).ok_or_else(|| missing(format!("no segment {reduce}")))?;
                let end = offset.checked_add(len).and_then(|e| usize::try_from(e).ok());
                return match end.filter(|&e| e <= o.bytes.len()) {
                    Some(end) => Ok(SegmentSource {
                        at: (shuffle, map, reduce),
                        place: Place::Memory { bytes: o.bytes.clone(), start: offset as usize, end },
                        framed: o.framed,
                    }),
                    None => Err(missing("segment out of its output's bounds".into())),
                };
            }
        }
        let data = self
            .written()
            .by_shuffle
            .get(&shuffle)
            .and_then(|v| v.iter().find(|w| w.map == map && w.attempt == attempt).and_then(|w| w.data.clone()))
            .ok_or_else(|| missing("this executor holds no such map output".into()))?;
        let index_path = data.with_extension("index");
        use std::os::unix::fs::FileExt;
        let index = std::fs::File::open(&index_path).map_err(|e| missing(format!("{}: {e}", index_path.display())))?;
        let mut pair = [0u8; 16];
        let at = reduce.checked_mul(8).map(|a| a as u64).ok_or_else(|| missing(format!("no segment {reduce}")))?;
        index
            .read_exact_at(&mut pair, at)
            .map_err(|e| missing(format!("{} has no segment {reduce}: {e}", index_path.display())))?;
        let start = u64::from_le_bytes(pair[..8].try_into().unwrap_or_default());
        let end = u64::from_le_bytes(pair[8..].try_into().unwrap_or_default());
        let file = std::fs::File::open(&data).map_err(|e| missing(format!("{}: {e}", data.display())))?;
        let size = file.metadata().map_err(|e| missing(format!("{}: {e}", data.display())))?.len();
        if start > end || end > size {
            return Err(missing(format!("{}: segment {reduce} lies outside the file", index_path.display())));
        }
        Ok(SegmentSource {
            at: (shuffle, map, reduce),
            place: Place::File { file, path: data, start, end },
            framed: true,
        })
    }

    pub(crate) fn data_path(&self, id: ShuffleId, map: usize, attempt: u64) -> PathBuf {
        self.dir.join(format!("shuffle_{}_{}_{}.data", id.0, map, attempt))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manager(dir: &Path) -> ShuffleManager {
        let blocks = Arc::new(BlockManager::new(64 << 20, 0.5, 2, dir.join("blocks"), crate::conf::Codec::Lz4));
        ShuffleManager::new(dir.join("shuffle"), blocks, 8 << 20, 1 << 20)
    }

    fn status(shuffle: u64, map: usize, attempt: u64) -> MapStatus {
        MapStatus {
            shuffle: ShuffleId(shuffle),
            map,
            attempt,
            location: Arc::from("driver"),
            data: None,
            segments: Arc::new(SegmentOffsets::from_sizes(&[3, 0, 2])),
        }
    }

    /// A segment served in pieces, from memory or from a file, reads back as the whole segment
    /// does; a read past its end, and an output not held, are errors naming the segment.
    #[test]
    fn segments_read_in_pieces_as_they_read_whole() {
        let dir = tempfile::tempdir().unwrap();
        let m = manager(dir.path());
        let sizes = [3u64, 0, 2_500_007, 5];
        let total: u64 = sizes.iter().sum();
        let bytes: Vec<u8> = (0..total).map(|i| (i * 7 % 251) as u8).collect();
        // In memory.
        let memory = status(1, 0, 0);
        m.keep_in_memory((memory.shuffle, 0, 0), Arc::from(bytes.clone()), SegmentOffsets::from_sizes(&sizes), true);
        // In a file with its index of boundaries.
        let data = dir.path().join("shuffle_2_0_0.data");
        std::fs::write(&data, &bytes).unwrap();
        let mut index = Vec::new();
        let mut at = 0u64;
        index.extend_from_slice(&at.to_le_bytes());
        for s in sizes {
            at += s;
            index.extend_from_slice(&at.to_le_bytes());
        }
        std::fs::write(data.with_extension("index"), &index).unwrap();
        let mut file = status(2, 0, 0);
        file.data = Some(data.clone());
        file.segments = Arc::new(SegmentOffsets::from_sizes(&sizes));
        assert!(m.record_written(&file));
        for shuffle in [1, 2] {
            let mut start = 0usize;
            for (reduce, &len) in sizes.iter().enumerate() {
                let mut whole = Vec::new();
                m.read_segment(ShuffleId(shuffle), 0, 0, reduce, &mut whole).unwrap();
                let expected = &bytes[start..start + len as usize];
                assert_eq!(whole, expected, "shuffle {shuffle} reduce {reduce}");
                let source = m.open_segment(ShuffleId(shuffle), 0, 0, reduce).unwrap();
                assert_eq!(source.len(), len);
                let mut pieces = Vec::new();
                let mut from = 0;
                while from < len {
                    let n = (len - from).min(1 << 20);
                    source.read(from, n as usize, &mut pieces).unwrap();
                    from += n;
                }
                assert_eq!(pieces, expected, "shuffle {shuffle} reduce {reduce}, in pieces");
                let past = source.read(len.saturating_sub(1), 2, &mut pieces).unwrap_err();
                assert!(past.to_string().contains("outside the segment"), "{past}");
                start += len as usize;
            }
        }
        let missing = m.open_segment(ShuffleId(3), 0, 0, 0).err().unwrap();
        assert!(missing.to_string().contains("holds no such map output"), "{missing}");
    }

    /// The column gather (with its prefetch pipeline) copies what the block-list gather copies,
    /// for columns shorter and longer than the pipeline, with outputs missing, outputs of retried
    /// attempts (kept beside the dense table), outputs in files and empty segments.
    #[test]
    fn the_column_gather_copies_what_the_block_gather_copies() {
        let dir = tempfile::tempdir().unwrap();
        let m = manager(dir.path());
        let mut seed = 7u64;
        let mut next = move |n: u64| {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (seed >> 33) % n
        };
        for (round, maps) in
            [0usize, 1, 3, GATHER_AHEAD / 2, GATHER_AHEAD, GATHER_AHEAD + 1, 40].into_iter().enumerate()
        {
            let shuffle = ShuffleId(100 + round as u64);
            let parts = 3usize;
            let mut locations = MapLocations { maps: Vec::new(), all_in_memory: true };
            for map in 0..maps {
                // Attempt 0 normally; a few maps only have a later attempt (kept aside), a few
                // are gone, a few are files.
                let kind = next(6);
                let attempt = if kind == 1 { 3 } else { 0 };
                let data = (kind == 2).then(|| Arc::<Path>::from(dir.path().join(format!("f{round}-{map}"))));
                if kind == 1 {
                    // The dense slot holds attempt 0 of another output; attempt 3 goes aside.
                    let sizes: Vec<u64> = vec![1; parts];
                    m.keep_in_memory(
                        (shuffle, map, 0),
                        Arc::from(vec![9u8; parts]),
                        SegmentOffsets::from_sizes(&sizes),
                        false,
                    );
                }
                if kind != 2 && kind != 3 {
                    let sizes: Vec<u64> = (0..parts).map(|_| next(4)).collect();
                    let total: u64 = sizes.iter().sum();
                    let bytes: Vec<u8> = (0..total).map(|i| (map as u64 * 31 + i) as u8).collect();
                    m.keep_in_memory(
                        (shuffle, map, attempt),
                        Arc::from(bytes),
                        SegmentOffsets::from_sizes(&sizes),
                        kind == 4,
                    );
                }
                locations.maps.push(MapLocation { attempt, executor: 0, data });
            }
            for reduce in 0..parts {
                let blocks: Vec<ReduceBlock> = locations
                    .maps
                    .iter()
                    .enumerate()
                    .map(|(map, l)| {
                        let (offset, len) = m
                            .memory()
                            .get(&shuffle)
                            .and_then(|t| t.get(map, l.attempt))
                            .and_then(|o| o.segments.segment(reduce))
                            .unwrap_or((0, 0));
                        ReduceBlock {
                            map: map as u32,
                            executor: 0,
                            attempt: l.attempt,
                            data: l.data.clone(),
                            offset,
                            len,
                        }
                    })
                    .collect();
                let (mut a, mut ra, mut b, mut rb) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
                m.copy_memory_column(shuffle, &locations, reduce, &mut a, &mut ra);
                m.copy_memory_segments(shuffle, &blocks, &[], &mut b, &mut rb);
                assert_eq!((&a, &ra), (&b, &rb), "{maps} maps, reducer {reduce}");
                assert_eq!(ra.len(), maps);
                let copied = ra.iter().flatten().count();
                let present = locations.maps.iter().enumerate().filter(|(map, l)| {
                    l.data.is_none() && m.memory().get(&shuffle).is_some_and(|t| t.get(*map, l.attempt).is_some())
                });
                assert_eq!(copied, present.count(), "every output held in memory is copied");
            }
        }
    }

    #[test]
    fn an_output_committed_after_its_shuffle_was_removed_is_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let m = manager(dir.path());
        let keep = |s: &MapStatus| {
            assert!(m.reserve_memory(5 + 8));
            m.keep_in_memory((s.shuffle, s.map, s.attempt), Arc::from(&b"abcde"[..]), (*s.segments).clone(), false);
        };
        let live = status(1, 0, 10);
        keep(&live);
        assert!(m.record_written(&live));
        // 5 bytes and 4 boundaries of 2 bytes.
        assert_eq!(m.memory_used(), 13);
        // A task of shuffle 2 commits after shuffle 2 was removed.
        m.remove_shuffle(ShuffleId(2));
        let late = status(2, 0, 11);
        keep(&late);
        assert_eq!(m.memory_used(), 26);
        assert!(!m.record_written(&late), "a removed shuffle takes no outputs");
        assert_eq!(m.memory_used(), 13, "the late output's memory is given back");
        assert_eq!(m.memory_output_formats(ShuffleId(2)), (0, 0));
        // Removing the live shuffle frees the rest.
        m.remove_shuffle(ShuffleId(1));
        assert_eq!(m.memory_used(), 0);
    }

    fn output(n: usize) -> MemoryOutput {
        MemoryOutput { bytes: Arc::from(vec![7u8; n]), segments: SegmentOffsets::default(), framed: false }
    }

    #[test]
    fn a_shuffle_table_holds_every_attempt_of_a_map() {
        let mut t = ShuffleMemory::default();
        assert!(t.insert(3, 10, output(1)).is_none());
        assert!(t.insert(3, 11, output(2)).is_none(), "a second attempt goes aside");
        assert_eq!(t.get(3, 10).map(|o| o.bytes.len()), Some(1));
        assert_eq!(t.get(3, 11).map(|o| o.bytes.len()), Some(2));
        assert!(t.get(3, 12).is_none() && t.get(4, 10).is_none());
        // The first attempt goes; the second, kept again, replaces its copy aside.
        assert_eq!(t.remove(3, 10).map(|o| o.bytes.len()), Some(1));
        assert_eq!(t.insert(3, 11, output(3)).map(|o| o.bytes.len()), Some(2), "the same attempt kept twice");
        assert_eq!(t.outputs().count(), 1);
        assert_eq!(t.get(3, 11).map(|o| o.bytes.len()), Some(3));
        // A map index far beyond the table does not grow it.
        assert!(t.insert(1 << 24, 1, output(4)).is_none());
        assert!(t.by_map.len() < 4096, "{}", t.by_map.len());
        assert_eq!(t.get(1 << 24, 1).map(|o| o.bytes.len()), Some(4));
        assert_eq!(t.remove(1 << 24, 1).map(|o| o.bytes.len()), Some(4));
        assert_eq!(t.remove(3, 11).map(|o| o.bytes.len()), Some(3));
        assert!(t.is_empty());
    }

    #[test]
    fn deleting_outputs_one_by_one_then_removing_the_shuffle_gives_back_everything() {
        let dir = tempfile::tempdir().unwrap();
        let m = manager(dir.path());
        let statuses: Vec<MapStatus> = (0..4).map(|map| status(5, map, 20 + map as u64)).collect();
        for s in &statuses {
            assert!(m.reserve_memory(5 + 8));
            m.keep_in_memory((s.shuffle, s.map, s.attempt), Arc::from(&b"abcde"[..]), (*s.segments).clone(), false);
            assert!(m.record_written(s));
        }
        // A second attempt of map 0 (a speculative copy that lost).
        let loser = status(5, 0, 99);
        assert!(m.reserve_memory(5 + 8));
        m.keep_in_memory(
            (loser.shuffle, loser.map, loser.attempt),
            Arc::from(&b"vwxyz"[..]),
            (*loser.segments).clone(),
            false,
        );
        // Each output: 5 bytes and 4 boundaries of 2 bytes.
        assert_eq!(m.memory_used(), 5 * 13);
        m.delete_output(&loser);
        m.delete_output(&statuses[1]);
        assert_eq!(m.memory_used(), 3 * 13);
        assert_eq!(m.memory_output_formats(ShuffleId(5)), (0, 3));
        m.remove_shuffle(ShuffleId(5));
        assert_eq!(m.memory_used(), 0);
        assert_eq!(m.memory_output_formats(ShuffleId(5)), (0, 0));
    }

    #[test]
    fn boundaries_take_the_narrowest_width_that_holds_them() {
        let tiny = SegmentOffsets::from_boundaries(vec![0, 3, 3, 65_535]);
        let small = SegmentOffsets::from_boundaries(vec![0, 65_536]);
        let large = SegmentOffsets::from_boundaries(vec![0, 1 << 32]);
        assert!(matches!(tiny, SegmentOffsets::Tiny(_)) && tiny.heap_bytes() == 8);
        assert!(matches!(small, SegmentOffsets::Small(_)) && small.heap_bytes() == 8);
        assert!(matches!(large, SegmentOffsets::Large(_)) && large.heap_bytes() == 16);
        assert_eq!(tiny.segment(2), Some((3, 65_532)));
        assert_eq!(small.segment(0), Some((0, 65_536)));
        assert_eq!(large.segment(0), Some((0, 1 << 32)));
        assert_eq!(SegmentOffsets::from_u32(&[0, 3, 3, 65_535]), tiny);
        assert_eq!(SegmentOffsets::from_u32(&[0, 65_536]), small);
        assert_eq!(SegmentOffsets::heap_bytes_for(65_535, 3), tiny.heap_bytes());
        assert_eq!(SegmentOffsets::heap_bytes_for(65_536, 1), small.heap_bytes());
        assert_eq!(SegmentOffsets::heap_bytes_for(1 << 32, 1), large.heap_bytes());
        assert_eq!(tiny.to_u64(), [0, 3, 3, 65_535]);
        assert_eq!(tiny.sizes().collect::<Vec<_>>(), [3, 0, 65_532]);
        assert_eq!(SegmentOffsets::from_sizes(&[3, 0, 65_532]), tiny);
        assert_eq!(tiny.segment(3), None);
    }

    #[test]
    fn removed_shuffles_are_remembered_up_to_a_bound() {
        let mut w = Written::default();
        for id in 0..(REMOVED_KEPT as u64 + 10) {
            w.remember_removed(ShuffleId(id));
        }
        assert_eq!(w.removed.len(), REMOVED_KEPT);
        assert!(!w.removed.contains(&ShuffleId(0)) && w.removed.contains(&ShuffleId(REMOVED_KEPT as u64 + 9)));
    }
}
