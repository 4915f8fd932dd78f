//! The map-side writer: records serialized into per-partition chunk buffers, spilled when memory is refused, committed as one output per map task.

use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

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

    /// Ends segments up to (not including) partition `p`.
    fn close_until(&mut self, p: usize) -> Result<()> {
        while self.offsets.len() <= p {
            let end = self.w.end_segment()?;
            self.offsets.push(end);
        }
        Ok(())
    }

    /// Finishes every segment. A small output stays in memory (`None`); a large one gets its
    /// index written and both files moved into place.
    fn commit(
        mut self,
        partitions: usize,
        data: &Path,
        shuffle: &ShuffleManager,
        (id, map, attempt): (ShuffleId, usize, u64),
    ) -> Result<(Option<PathBuf>, Vec<u64>)> {
        self.close_until(partitions)?;
        let sizes: Vec<u64> = self.offsets.windows(2).map(|w| w[1] - w[0]).collect();
        let mut file = match self.w.finish()?.sink {
            Sink::Memory(bytes) => match shuffle.try_keep_in_memory((id, map, attempt), bytes) {
                Ok(()) => return Ok((None, sizes)),
                Err(bytes) => {
                    std::fs::write(&self.tmp, &bytes).map_err(|e| Error::io(&self.tmp, e))?;
                    File::options().append(true).open(&self.tmp).map_err(|e| Error::io(&self.tmp, e))?
                }
            },
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
        Ok((Some(data.to_path_buf()), sizes))
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
    let (data, sizes) = out.commit(tmp, &data, (dep.shuffle_id, map, tc.task_attempt_id))?;
    if let Some(e) = tc.take_error() {
        if let Some(d) = &data {
            let _ = std::fs::remove_file(d);
        }
        return Err(e);
    }
    let bytes: u64 = sizes.iter().sum();
    tc.add_shuffle_write(written, bytes);
    let status = MapStatus {
        shuffle: dep.shuffle_id,
        map,
        attempt: tc.task_attempt_id,
        location: env.executor_id.clone(),
        data,
        sizes,
    };
    env.shuffle.record_written(&status);
    Ok(status)
}

/// Map-side combine keeps at most this many keys in its hash map: a map this size stays in the
/// processor caches, where lookups are several times faster than in a map of every key of the
/// partition. When it fills, its partial combiners go to the output and it starts again; reducers
/// merge combiners anyway, so this only trades some shuffle volume for much cheaper lookups
/// (partial aggregation, as in Presto or Flink's mini-batches, rather than Spark's full map).
const PARTIAL_AGG_KEYS: usize = 1 << 16;

/// Combines values by key on the map side in a bounded hash map whose partial combiners are
/// flushed into `out` when it fills or when memory is refused.
fn combine_into<K: Key, V: Data, C: Data>(
    records: BoxIter<'_, (K, V)>,
    agg: &dyn Aggregator<V, C>,
    part: &dyn Partitioner<K>,
    out: &mut PartitionBuffers<'_>,
) -> Result<()> {
    use hashbrown::hash_map::Entry;
    let mut map: hashbrown::HashMap<K, C, rustc_hash::FxBuildHasher> =
        hashbrown::HashMap::with_hasher(rustc_hash::FxBuildHasher);
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
            let map_bytes = map.len() as u64 * (sampler.per_record() + 16);
            if !out.fits(map_bytes) {
                flush(&mut map, out)?;
            }
        }
    }
    flush(&mut map, out)
}

/// A map task's output being assembled: records serialized at once into per-partition chunk
/// buffers (compact, compressed). When memory is refused the buffers spill to a run file whose
/// segments are later copied, still encoded, into the output.
struct PartitionBuffers<'a> {
    bufs: Vec<ChunkEncoder>,
    mem: MemoryConsumer<'a>,
    runs: Vec<(SpillFile, Vec<(u64, u64)>)>,
    records: u64,
    tc: &'a TaskContext,
}

impl<'a> PartitionBuffers<'a> {
    fn new(tc: &'a TaskContext, parts: usize) -> Self {
        let codec = tc.env().codec;
        PartitionBuffers {
            bufs: (0..parts).map(|_| ChunkEncoder::new(codec)).collect(),
            mem: MemoryConsumer::new(tc),
            runs: Vec::new(),
            records: 0,
            tc,
        }
    }

    #[inline]
    fn push<R: Serialize>(&mut self, p: usize, record: &R) -> Result<()> {
        let parts = self.bufs.len();
        self.bufs.get_mut(p).ok_or_else(|| bad_partition(p, parts))?.push(record)?;
        self.records += 1;
        if self.records % 256 == 0 && !self.fits(0) {
            self.spill()?;
        }
        Ok(())
    }

    /// Whether the buffers plus `extra` bytes held elsewhere fit in the task's memory grant.
    /// When they do not, the buffers are spilled (and `false` tells the caller to free its share).
    fn fits(&mut self, extra: u64) -> bool {
        let held: u64 = self.bufs.iter().map(|b| b.held_bytes() as u64).sum::<u64>() + self.bufs.len() as u64 * 64;
        if self.mem.ensure(held + extra) {
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

    fn spill(&mut self) -> Result<()> {
        let held: u64 = self.bufs.iter().map(|b| b.held_bytes() as u64).sum();
        if held > 0 {
            self.runs.push(spill_buffers(&mut self.bufs, self.tc, held)?);
        }
        self.mem.release_all();
        Ok(())
    }

    /// Writes the output: for each partition, its spilled segments then its buffer.
    fn commit(
        mut self,
        tmp: PathBuf,
        data: &Path,
        key: (ShuffleId, usize, u64),
    ) -> Result<(Option<PathBuf>, Vec<u64>)> {
        let env = self.tc.env();
        let parts = self.bufs.len();
        // Buffered chunks, one header per partition for the pending records, and spilled runs.
        let expected = self.bufs.iter().map(|b| b.held_bytes() + 32).sum::<usize>()
            + self.runs.iter().map(|(_, segs)| segs.iter().map(|s| s.1 as usize).sum::<usize>()).sum::<usize>();
        let mut out = MapOutputFile::create(tmp, env.codec, env.shuffle.memory_output_limit, expected)?;
        let mut copy = Vec::new();
        for (p, b) in self.bufs.iter_mut().enumerate() {
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
            out.w.write_encoded(&b.take_bytes())?;
        }
        out.commit(parts, data, &env.shuffle, key)
    }
}

fn spill_buffers(bufs: &mut [ChunkEncoder], tc: &TaskContext, held: u64) -> Result<(SpillFile, Vec<(u64, u64)>)> {
    let mut segs = Vec::with_capacity(bufs.len());
    let mut chunks = Vec::with_capacity(bufs.len());
    let mut pos = 0u64;
    for b in bufs.iter_mut() {
        let bytes = b.take_bytes();
        segs.push((pos, bytes.len() as u64));
        pos += bytes.len() as u64;
        chunks.push(bytes);
    }
    // The run file holds already-encoded chunk bytes, copied later without decoding.
    let path = crate::collections::spill_path(tc, "shuffle")?;
    let spill = SpillFile { path: path.clone() };
    let mut f = BufWriter::new(File::create(&path).map_err(|e| Error::io(&path, e))?);
    for c in &chunks {
        f.write_all(c).map_err(|e| Error::io(&path, e))?;
    }
    f.flush().map_err(|e| Error::io(&path, e))?;
    tc.add_spill(held, pos);
    Ok((spill, segs))
}
