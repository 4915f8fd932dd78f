//! The map-side writer: records serialized into per-partition chunk buffers, spilled when memory is refused, committed as one output per map task.

use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;

use crate::collections::SpillFile;
use crate::data::{Data, Key};
use crate::error::{Error, Result};
use crate::storage::MemoryConsumer;
use crate::stream::{ChunkEncoder, StreamWriter};
use crate::task::{BoxIter, TaskContext};

use super::*;

/// Output of one map task being assembled: an encoded stream with segment boundaries.
/// Where map output bytes go: memory until they pass the limit, then a temporary file.
enum Sink {
    Memory(Vec<u8>),
    File(BufWriter<File>),
}

struct OutputSink {
    sink: Sink,
    tmp: PathBuf,
    limit: usize,
}

impl Write for OutputSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Sink::Memory(v) = &mut self.sink {
            if v.len() + buf.len() <= self.limit {
                v.extend_from_slice(buf);
                return Ok(buf.len());
            }
            let mut f = BufWriter::with_capacity(1 << 16, File::create(&self.tmp)?);
            f.write_all(v)?;
            self.sink = Sink::File(f);
        }
        match &mut self.sink {
            Sink::File(f) => f.write(buf),
            Sink::Memory(_) => Ok(0),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match &mut self.sink {
            Sink::File(f) => f.flush(),
            Sink::Memory(_) => Ok(()),
        }
    }
}

struct MapOutputFile {
    w: StreamWriter<OutputSink>,
    tmp: PathBuf,
    offsets: Vec<u64>,
}

impl MapOutputFile {
    /// `expected` is about how many bytes the output will have; an output that may stay in
    /// memory gets its buffer at once.
    fn create(tmp: PathBuf, codec: crate::conf::Codec, limit: usize, expected: usize) -> Result<Self> {
        let buf = Vec::with_capacity(if expected <= limit { expected } else { 0 });
        let sink = OutputSink { sink: Sink::Memory(buf), tmp: tmp.clone(), limit };
        Ok(MapOutputFile { w: StreamWriter::new(sink, codec, &tmp), tmp, offsets: vec![0] })
    }

    fn reserve_segments(&mut self, partitions: usize) {
        self.offsets.reserve_exact(partitions);
    }

    /// Ends segments up to (not including) partition `p`.
    fn close_until(&mut self, p: usize) -> Result<()> {
        while self.offsets.len() <= p {
            let end = self.w.end_segment()?;
            self.offsets.push(end);
        }
        Ok(())
    }

    /// Finishes every segment. A small output stays in memory as record streams (`None`); a
    /// large one gets its index written and both files moved into place.
    fn commit(
        mut self,
        partitions: usize,
        data: &Path,
        shuffle: &ShuffleManager,
        key: (ShuffleId, usize, u64),
    ) -> Result<(Option<PathBuf>, Arc<SegmentOffsets>)> {
        self.close_until(partitions)?;
        let mut file = match self.w.finish()?.sink {
            Sink::Memory(bytes) => {
                let segments = Arc::new(SegmentOffsets::from_boundaries(std::mem::take(&mut self.offsets)));
                let held = bytes.len() as u64 + segments.heap_bytes();
                if shuffle.memory_output_limit > 0 && shuffle.reserve_memory(held) {
                    // One allocation of exactly the output's size: no slack stays in memory.
                    shuffle.keep_in_memory(key, Arc::from(bytes), (*segments).clone(), true);
                    return Ok((None, segments));
                }
                self.offsets = segments.to_u64();
                std::fs::write(&self.tmp, &bytes).map_err(|e| Error::io(&self.tmp, e))?;
                File::options().append(true).open(&self.tmp).map_err(|e| Error::io(&self.tmp, e))?
            }
            Sink::File(f) => f.into_inner().map_err(|e| Error::io(&self.tmp, e.into_error()))?,
        };
        file.flush().map_err(|e| Error::io(&self.tmp, e))?;
        let index_tmp = self.tmp.with_extension("index.tmp");
        let mut idx = Vec::with_capacity(self.offsets.len() * 8);
        for o in &self.offsets {
            idx.extend_from_slice(&o.to_le_bytes());
        }
        std::fs::write(&index_tmp, &idx).map_err(|e| Error::io(&index_tmp, e))?;
        let index = data.with_extension("index");
        std::fs::rename(&index_tmp, &index).map_err(|e| Error::io(&index, e))?;
        std::fs::rename(&self.tmp, data).map_err(|e| Error::io(data, e))?;
        Ok((Some(data.to_path_buf()), Arc::new(SegmentOffsets::from_boundaries(self.offsets))))
    }
}

fn bad_partition(p: usize, parts: usize) -> Error {
    Error::InvalidArgument(format!("the partitioner returned partition {p}, but it has {parts} partitions"))
}

pub(super) fn write_map_output<K: Key, V: Data, C: Data>(
    dep: &ShuffleDependency<K, V, C>,
    map: usize,
    records: BoxIter<'_, (K, V)>,
    tc: &TaskContext,
) -> Result<MapStatus> {
    let env = tc.env();
    let parts = dep.partitioner.num_partitions();
    if parts as u64 > crate::conf::MAX_PARTITIONS {
        return Err(Error::InvalidArgument(format!(
            "the partitioner has {parts} partitions; at most {} are supported",
            crate::conf::MAX_PARTITIONS
        )));
    }
    let data = env.shuffle.data_path(dep.shuffle_id, map, tc.task_attempt_id);
    let tmp = data.with_extension(format!("tmp{}", env.next_file_id()));
    let part: &dyn Partitioner<K> = &**dep.partitioner.get();
    let mut out = PartitionBuffers::new(tc, parts);
    match (&dep.aggregator, dep.map_side_combine) {
        (Some(agg), true) => combine_into(records, &**agg.get(), part, &mut out)?,
        _ => {
            for (k, v) in records {
                out.push(part.partition(&k), &(k, v))?;
            }
        }
    }
    if let Some(e) = tc.take_error() {
        return Err(e);
    }
    let written = out.records;
    let (data, segments) = out.commit(tmp, &data, (dep.shuffle_id, map, tc.task_attempt_id))?;
    let bytes = segments.total();
    let status = MapStatus {
        shuffle: dep.shuffle_id,
        map,
        attempt: tc.task_attempt_id,
        location: env.executor_id.clone(),
        data,
        segments,
    };
    if let Some(e) = tc.take_error() {
        // Killed or failed while committing: the output (file and index, or memory) goes.
        env.shuffle.delete_output(&status);
        return Err(e);
    }
    tc.add_shuffle_write(written, bytes);
    if !env.shuffle.record_written(&status) {
        return Err(Error::Cancelled(format!("shuffle {} was removed while map task {map} ran", dep.shuffle_id.0)));
    }
    let mut status = status;
    env.shuffle.maybe_malform(&mut status);
    Ok(status)
}

/// Map-side combine keeps at most this many keys in its hash map: a map this size stays in the
/// processor caches, where lookups are several times faster than in a map of every key of the
/// partition. When it fills, its partial combiners go to the output and it starts again; reducers
/// merge combiners anyway, so this only trades some shuffle volume for much cheaper lookups
/// (partial aggregation, as in Presto or Flink's mini-batches, rather than Spark's full map).
const PARTIAL_AGG_KEYS: usize = 1 << 16;

/// Keys the map-side combine map has room for before it first grows.
const COMBINE_START_KEYS: usize = 1 << 10;

/// Combines values by key on the map side in a bounded hash map whose partial combiners are
/// flushed into `out` when it fills or when memory is refused.
fn combine_into<K: Key, V: Data, C: Data>(
    records: BoxIter<'_, (K, V)>,
    agg: &dyn Aggregator<V, C>,
    part: &dyn Partitioner<K>,
    out: &mut PartitionBuffers<'_>,
) -> Result<()> {
    use hashbrown::hash_map::Entry;
    // Sized for a typical small partition's keys at once, so that it does not rehash its way
    // up from nothing in every task.
    let mut map: hashbrown::HashMap<K, C, rustc_hash::FxBuildHasher> =
        hashbrown::HashMap::with_capacity_and_hasher(COMBINE_START_KEYS, rustc_hash::FxBuildHasher);
    let mut sampler = crate::data::SizeSampler::new();
    let mut ops = 0u64;
    let flush = |map: &mut hashbrown::HashMap<K, C, rustc_hash::FxBuildHasher>, out: &mut PartitionBuffers<'_>| {
        map.drain().try_for_each(|(k, c)| out.push(part.partition(&k), &(k, c)))
    };
    for (k, v) in records {
        ops += 1;
        let sample = ops < 16 || ops % 64 == 0;
        match map.entry(k) {
            Entry::Occupied(e) => {
                let e = e.replace_entry_with(|_, c| Some(agg.merge_value(c, v)));
                if let (true, Entry::Occupied(e)) = (sample, e) {
                    sampler.add(&(e.key(), e.get()));
                }
            }
            Entry::Vacant(e) => {
                let c = agg.create(v);
                if sample {
                    sampler.add(&(e.key(), &c));
                }
                e.insert(c);
            }
        }
        if map.len() >= PARTIAL_AGG_KEYS {
            flush(&mut map, out)?;
        } else if ops % 64 == 0 {
            // By capacity: the table is allocated for more keys than it may hold.
            let map_bytes = map.capacity().max(map.len()) as u64 * (sampler.per_record() + 16);
            if !out.fits(map_bytes) {
                flush(&mut map, out)?;
            }
        }
    }
    flush(&mut map, out)
}

/// A map task's output being assembled.
///
/// Records are serialized at once into one arena, in arrival order, with their partitions noted
/// beside them. When the arena passes its threshold it is *compacted*: its records, grouped by
/// partition (a stable counting sort), become compressed chunks appended to each partition's
/// buffer. A small output never compacts: at commit its arena goes straight into the output,
/// partition by partition, so a map task with many tiny partitions allocates nothing per
/// partition. When memory is refused the buffers spill to a run file whose segments are later
/// copied, still encoded, into the output.
struct PartitionBuffers<'a> {
    parts: usize,
    /// Serialized records in arrival order.
    arena: Vec<u8>,
    /// Partition and start offset of each record of the arena (a record ends where the next
    /// one starts).
    recs: Vec<(u32, u32)>,
    /// Arena size that triggers a compaction.
    compact_at: usize,
    /// Finished chunks per partition (from compactions); empty until the first one.
    outs: Vec<Vec<u8>>,
    enc: ChunkEncoder,
    mem: MemoryConsumer<'a>,
    runs: Vec<(SpillFile, Vec<(u64, u64)>)>,
    records: u64,
    /// Whether a record serialized to no bytes at all.
    empty_records: bool,
    tc: &'a TaskContext,
}

thread_local! {
    /// The arena and record index of this thread's last map task, kept for its next one: a map
    /// task of a thousand small records otherwise grows both from nothing, reallocating and
    /// touching fresh memory about ten times each.
    static ARENA_SCRATCH: std::cell::Cell<Option<(Vec<u8>, Vec<(u32, u32)>)>> = const { std::cell::Cell::new(None) };
}

/// The most arena and record-index capacity kept for a thread's next map task: a task counts
/// what it was given as held memory from its start, so this stays small (a thousand one-record
/// partitions take about 16 KiB of both).
const ARENA_KEPT_BYTES: usize = 128 << 10;

impl Drop for PartitionBuffers<'_> {
    fn drop(&mut self) {
        let kept = self.arena.capacity() + self.recs.capacity() * std::mem::size_of::<(u32, u32)>();
        if kept > 0 && kept <= ARENA_KEPT_BYTES {
            let (mut arena, mut recs) = (std::mem::take(&mut self.arena), std::mem::take(&mut self.recs));
            arena.clear();
            recs.clear();
            ARENA_SCRATCH.with(|c| c.set(Some((arena, recs))));
        }
    }
}

/// Arena bytes per partition before a compaction: enough for chunks that compress well.
const ARENA_BYTES_PER_PARTITION: usize = 16 << 10;

impl<'a> PartitionBuffers<'a> {
    fn new(tc: &'a TaskContext, parts: usize) -> Self {
        let (arena, recs) = ARENA_SCRATCH.with(|c| c.take()).unwrap_or_default();
        PartitionBuffers {
            parts,
            arena,
            recs,
            compact_at: parts.saturating_mul(ARENA_BYTES_PER_PARTITION).clamp(256 << 10, 16 << 20),
            outs: Vec::new(),
            enc: ChunkEncoder::new(tc.env().codec),
            mem: MemoryConsumer::new(tc),
            runs: Vec::new(),
            records: 0,
            empty_records: false,
            tc,
        }
    }

    #[inline]
    fn push<R: Serialize>(&mut self, p: usize, record: &R) -> Result<()> {
        if p >= self.parts {
            return Err(bad_partition(p, self.parts));
        }
        let start = self.arena.len();
        // The arena is compacted as soon as it reaches `compact_at` (at most 16 MiB), so a
        // record starts below that; its own length is bounded to keep offsets in 32 bits.
        let Ok(start32) = u32::try_from(start) else {
            return Err(Error::Internal(format!("shuffle arena at {start} bytes was not compacted")));
        };
        crate::data::encode_into(record, &mut self.arena)?;
        let len = self.arena.len() - start;
        if len > u32::MAX as usize {
            self.arena.truncate(start);
            return Err(Error::ResourcesExhausted("a single record serializes to more than 4 GiB".into()));
        }
        self.empty_records |= len == 0;
        // `p < parts`, and partition counts are far below `u32::MAX` (a shuffle has one block
        // per map and partition).
        self.recs.push((p as u32, start32));
        self.records += 1;
        if self.arena.len() >= self.compact_at {
            self.compact()?;
        }
        if self.records % 256 == 0 && !self.fits(0) {
            self.spill()?;
        }
        Ok(())
    }

    /// Bytes the buffers hold, counted by capacity (what is allocated, not what is used).
    fn held(&self) -> u64 {
        (self.arena.capacity()
            + self.recs.capacity() * std::mem::size_of::<(u32, u32)>()
            + self.outs.iter().map(Vec::capacity).sum::<usize>()
            + self.outs.capacity() * std::mem::size_of::<Vec<u8>>()
            + self.enc.held_bytes()) as u64
            // The counting sort's index vector, when the arena is drained.
            + self.recs.len() as u64 * 4
            + self.parts as u64 * 24
    }

    /// Whether the buffers plus `extra` bytes held elsewhere fit in the task's memory grant.
    /// When they do not, the buffers are spilled (and `false` tells the caller to free its share).
    fn fits(&mut self, extra: u64) -> bool {
        if self.mem.ensure(self.held() + extra) {
            return true;
        }
        if extra == 0 {
            return false;
        }
        if let Err(e) = self.spill() {
            self.tc.fail(e);
        }
        self.mem.ensure(extra)
    }

    /// Calls `emit(p, chunks)` for each partition `p` in order with the arena's records of `p`
    /// encoded as chunks, then empties the arena.
    fn drain_arena(&mut self, mut emit: impl FnMut(usize, &[u8]) -> Result<()>) -> Result<()> {
        let mut sort = SortScratch::take();
        self.sort(&mut sort);
        let r = (0..self.parts).try_for_each(|p| {
            for &i in sort.partition(p) {
                let (start, end) = self.record(i as usize);
                self.enc.push_encoded(&self.arena[start..end])?;
            }
            let bytes = self.enc.take_bytes_reusing();
            let r = emit(p, bytes);
            self.enc.recycle();
            r
        });
        sort.give_back();
        r?;
        self.arena.clear();
        self.recs.clear();
        Ok(())
    }

    /// Where record `i` of the arena starts and ends.
    #[inline]
    fn record(&self, i: usize) -> (usize, usize) {
        let start = self.recs[i].1 as usize;
        let end = self.recs.get(i + 1).map_or(self.arena.len(), |r| r.1 as usize);
        (start, end)
    }

    /// Groups the arena's records by partition into `s`: a stable counting sort.
    fn sort(&self, s: &mut SortScratch) {
        // Record counts fit in 32 bits: records of some bytes are compacted at 16 MiB, and
        // 4 Gi records of none would need far more than any grant to index (`fits` spills them).
        s.starts.clear();
        s.starts.resize(self.parts + 1, 0);
        for &(p, _) in &self.recs {
            s.starts[p as usize + 1] += 1;
        }
        for i in 0..self.parts {
            s.starts[i + 1] += s.starts[i];
        }
        s.order.clear();
        s.order.resize(self.recs.len(), 0);
        s.next.clear();
        s.next.extend_from_slice(&s.starts);
        for (i, &(p, _)) in self.recs.iter().enumerate() {
            s.order[s.next[p as usize] as usize] = i as u32;
            s.next[p as usize] += 1;
        }
    }

    /// Keeps a small output in executor memory as its records' bytes grouped by partition, with
    /// no chunk framing: these bytes never reach a disk or another process as they are (serving
    /// them to a remote reducer will mean framing them first). Returns the segment boundaries,
    /// or `None` when the memory budget refuses the output, which is then left in the arena for
    /// a file.
    fn commit_in_memory(&mut self, key: (ShuffleId, usize, u64)) -> Option<Arc<SegmentOffsets>> {
        let shuffle = &self.tc.env().shuffle;
        let n = self.arena.len();
        // Records of no bytes cannot be counted without framing; boundaries are in 32 bits at
        // most.
        if self.empty_records || u32::try_from(n).is_err() {
            return None;
        }
        // The combine map is gone and no more records come: only the arena and its index are
        // still held (the sort scratch and the output are all this path allocates, the output
        // from the reservation below), so the slack of the grant goes back for the output.
        self.mem.shrink_to(self.held());
        // Its bytes and its boundaries.
        let held = n as u64 + SegmentOffsets::heap_bytes_for(n as u64, self.parts);
        if !shuffle.reserve_memory(held) {
            return None;
        }
        // The output holds exactly the arena's bytes, in partition order.
        let mut bytes: Arc<[u8]> = std::iter::repeat_n(0u8, n).collect();
        let Some(out) = Arc::get_mut(&mut bytes) else {
            // A new `Arc` has no other reference; should that ever change, the file path serves.
            shuffle.unreserve_memory(held);
            return None;
        };
        let mut sort = SortScratch::take();
        self.sort(&mut sort);
        let mut ends = std::mem::take(&mut sort.ends);
        ends.clear();
        ends.push(0u32);
        let mut at = 0usize;
        for p in 0..self.parts {
            for &i in sort.partition(p) {
                let (start, end) = self.record(i as usize);
                out[at..at + end - start].copy_from_slice(&self.arena[start..end]);
                at += end - start;
            }
            // `at <= n`, which fits (checked above).
            ends.push(at as u32);
        }
        // One allocation of exactly the boundaries' size, in the width `held` counted.
        let segments = Arc::new(SegmentOffsets::from_u32(&ends));
        sort.ends = ends;
        sort.give_back();
        // The boundaries end at `n`, so they take the width counted for it; should that ever
        // differ, the reservation follows what the output really holds.
        let taken = n as u64 + segments.heap_bytes();
        if taken < held {
            shuffle.unreserve_memory(held - taken);
        } else if taken > held && !shuffle.reserve_memory(taken - held) {
            shuffle.unreserve_memory(held);
            return None;
        }
        shuffle.keep_in_memory(key, bytes, (*segments).clone(), false);
        Some(segments)
    }

    /// Moves the arena's records into the per-partition chunk buffers.
    fn compact(&mut self) -> Result<()> {
        if self.recs.is_empty() {
            return Ok(());
        }
        let mut outs = std::mem::take(&mut self.outs);
        outs.resize_with(self.parts, Vec::new);
        let r = self.drain_arena(|p, chunks| {
            outs[p].extend_from_slice(chunks);
            Ok(())
        });
        self.outs = outs;
        r
    }

    fn spill(&mut self) -> Result<()> {
        self.compact()?;
        let held: u64 = self.outs.iter().map(|b| b.len() as u64).sum();
        if held > 0 {
            self.runs.push(spill_buffers(&mut self.outs, self.tc, held)?);
        }
        // The grant goes back: so must the memory behind it.
        self.arena = Vec::new();
        self.recs = Vec::new();
        self.outs = Vec::new();
        self.mem.release_all();
        Ok(())
    }

    /// Writes the output: for each partition, its spilled segments, its compacted chunks, then
    /// its records still in the arena.
    fn commit(
        mut self,
        tmp: PathBuf,
        data: &Path,
        key: (ShuffleId, usize, u64),
    ) -> Result<(Option<PathBuf>, Arc<SegmentOffsets>)> {
        let env = self.tc.env();
        let parts = self.parts;
        // The common small case: the arena stays in memory as it is (a limit of 0 sends every
        // output, even an empty one, to files).
        let limit = env.shuffle.memory_output_limit;
        if self.runs.is_empty() && self.outs.is_empty() && limit > 0 && self.arena.len() <= limit {
            if let Some(segments) = self.commit_in_memory(key) {
                return Ok((None, segments));
            }
        }
        // Encoded bytes so far, plus the arena and a chunk header per partition.
        let expected = self.held() as usize
            + parts.min(self.recs.len() + self.outs.len()) * 24
            + self.runs.iter().map(|(_, segs)| segs.iter().map(|s| s.1 as usize).sum::<usize>()).sum::<usize>();
        let mut out = MapOutputFile::create(tmp, env.codec, env.shuffle.memory_output_limit, expected)?;
        out.reserve_segments(parts);
        if self.runs.is_empty() && self.outs.is_empty() {
            // No compaction: the arena goes straight into the output.
            self.drain_arena(|p, chunks| {
                out.close_until(p)?;
                out.w.write_encoded(chunks)
            })?;
            return out.commit(parts, data, &env.shuffle, key);
        }
        self.compact()?;
        let mut copy = Vec::new();
        for p in 0..parts {
            out.close_until(p)?;
            for (file, segs) in &self.runs {
                let (start, len) = segs[p];
                if len > 0 {
                    let mut f = File::open(&file.path).map_err(|e| Error::io(&file.path, e))?;
                    f.seek(SeekFrom::Start(start)).map_err(|e| Error::io(&file.path, e))?;
                    copy.resize(len as usize, 0);
                    f.read_exact(&mut copy).map_err(|e| Error::io(&file.path, e))?;
                    out.w.write_encoded(&copy)?;
                }
            }
            if let Some(b) = self.outs.get(p) {
                out.w.write_encoded(b)?;
            }
        }
        out.commit(parts, data, &env.shuffle, key)
    }
}

/// The counting sort's index vectors, kept by each thread between map tasks: allocating them
/// anew for every task (several kilobytes per thousand partitions) costs more than sorting a
/// small task's records.
#[derive(Default)]
struct SortScratch {
    /// Where each partition's records start in `order` (one more entry: the end).
    starts: Vec<u32>,
    next: Vec<u32>,
    /// Record indexes grouped by partition.
    order: Vec<u32>,
    /// Segment boundaries of an in-memory output, before they take their final width.
    ends: Vec<u32>,
}

thread_local! {
    static SORT_SCRATCH: std::cell::Cell<Option<SortScratch>> = const { std::cell::Cell::new(None) };
}

impl SortScratch {
    /// This thread's scratch (a new one when it is in use or was not kept).
    fn take() -> SortScratch {
        SORT_SCRATCH.with(|c| c.take()).unwrap_or_default()
    }

    /// Keeps the scratch for the thread's next task, unless it grew large.
    fn give_back(self) {
        let bytes = (self.starts.capacity() + self.next.capacity() + self.order.capacity() + self.ends.capacity()) * 4;
        if bytes <= SCRATCH_KEPT_BYTES {
            SORT_SCRATCH.with(|c| c.set(Some(self)));
        }
    }

    /// The record indexes of partition `p`, in arrival order.
    fn partition(&self, p: usize) -> &[u32] {
        &self.order[self.starts[p] as usize..self.starts[p + 1] as usize]
    }
}

fn spill_buffers(bufs: &mut [Vec<u8>], tc: &TaskContext, held: u64) -> Result<(SpillFile, Vec<(u64, u64)>)> {
    let mut segs = Vec::with_capacity(bufs.len());
    let mut pos = 0u64;
    // The run file holds already-encoded chunk bytes, copied later without decoding.
    let path = crate::collections::spill_path(tc, "shuffle")?;
    let spill = SpillFile { path: path.clone() };
    let mut f = BufWriter::new(File::create(&path).map_err(|e| Error::io(&path, e))?);
    for b in bufs.iter_mut() {
        segs.push((pos, b.len() as u64));
        pos += b.len() as u64;
        f.write_all(b).map_err(|e| Error::io(&path, e))?;
        b.clear();
    }
    f.flush().map_err(|e| Error::io(&path, e))?;
    tc.add_spill(held, pos);
    Ok((spill, segs))
}
