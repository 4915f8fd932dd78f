//! The reduce-side reader: the segments of every map output for one reduce partition.

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::sync::Arc;

use super::{MemorySegment, ReduceBlock, ShuffleId, SCRATCH_KEPT_BYTES};
use crate::error::{Error, Result};
use crate::storage::MemoryConsumer;
use crate::stream::{ChunkDecoder, Origin};
use crate::task::TaskContext;

/// Most bytes of remote segments a reducer fetches at once (more only for one larger segment).
const FETCH_WINDOW_BYTES: u64 = 8 << 20;

/// Most blocks a reducer fetches at once.
const FETCH_WINDOW_BLOCKS: usize = 4096;

/// Where a framed block's bytes come from: no allocation or dynamic call per block.
enum BlockSource {
    Memory(SharedSlice),
    File(std::io::Take<BufReader<File>>),
}

impl Read for BlockSource {
    #[inline]
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            BlockSource::Memory(m) => m.read(buf),
            BlockSource::File(f) => f.read(buf),
        }
    }
}

/// A byte range of a shared buffer, read without copying the buffer.
struct SharedSlice {
    bytes: Arc<Vec<u8>>,
    pos: usize,
    end: usize,
}

impl Read for SharedSlice {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf.len().min(self.end - self.pos);
        buf[..n].copy_from_slice(&self.bytes[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Reads reduce partition `reduce`: the segment of each map output, in map order. A missing,
/// short or corrupt segment is a fetch failure recorded on the task context.
///
/// When every output is in memory the reducer needs no column of blocks: the executor's outputs
/// know their segment boundaries, and the reader copies its segments from them in one pass over
/// the shuffle's table of locations. Otherwise it reads the column the tracker builds for it.
pub(crate) struct ShuffleReader<'a, R> {
    shuffle: ShuffleId,
    /// The number of map outputs (one segment each).
    maps: usize,
    /// The column of blocks, or empty when all outputs are in memory (then `ranges` says all).
    blocks: Vec<ReduceBlock>,
    /// The blocks' in-memory segments, copied at once, and each block's range in them.
    memory: Arc<Vec<u8>>,
    ranges: Vec<Option<MemorySegment>>,
    next_map: usize,
    current: Option<ChunkDecoder<BlockSource, R>>,
    /// The in-memory segment being read: its records' bytes, unframed, as `memory[pos..end]`
    /// (or `window[pos..end]` when `raw_remote`).
    raw: Option<(usize, usize)>,
    raw_remote: bool,
    /// Which blocks other executors hold (empty when none does).
    remote: Vec<bool>,
    /// Segments fetched from other executors for blocks `window_start..window_end`, and where
    /// each lies in `window`.
    window: Arc<Vec<u8>>,
    window_start: usize,
    window_end: usize,
    window_ranges: Vec<Option<MemorySegment>>,
    /// Execution memory granted for the window.
    window_memory: MemoryConsumer<'a>,
    /// A finished decoder, kept for its buffers.
    spare: Option<ChunkDecoder<BlockSource, R>>,
    reduce: usize,
    tc: &'a TaskContext,
    records: u64,
    bytes: u64,
}

impl<'a, R> ShuffleReader<'a, R> {
    /// A reader of reduce partition `reduce` of `shuffle` (of `maps` map tasks), or the fetch
    /// failure that its column of blocks is.
    pub(crate) fn new(shuffle: ShuffleId, maps: usize, reduce: usize, tc: &'a TaskContext) -> Result<Self> {
        let ReadScratch { mut blocks, mut memory, mut ranges } = ReadScratch::take();
        let env = tc.env();
        let mut remote = Vec::new();
        // On a cluster the column says which executor holds each block: no table of
        // locations is needed (it might come from another snapshot than the column).
        let locations = match env.remote {
            Some(_) => Ok(None),
            None => env.map_outputs.map_locations(shuffle, maps, reduce).map(Some),
        };
        let located = locations.and_then(|locations| {
            // On a cluster, outputs other executors hold are fetched; the rest are read here.
            let elsewhere =
                |executor: u32| env.map_outputs.executor(executor).is_none_or(|name| *name != *env.executor_id);
            if let Some(locations) = locations.filter(|l| l.all_in_memory) {
                env.shuffle.copy_memory_column(shuffle, &locations, reduce, &mut memory, &mut ranges);
                Ok(locations.maps.len())
            } else {
                env.map_outputs.reduce_blocks_into(shuffle, maps, reduce, &mut blocks)?;
                if env.remote.is_some() {
                    remote = blocks.iter().map(|b| elsewhere(b.executor)).collect();
                    if remote.iter().any(|&r| r) {
                        for (b, _) in blocks.iter_mut().zip(&remote).filter(|(_, r)| **r) {
                            // Another executor's file: not this one's to open.
                            b.data = None;
                        }
                    } else {
                        remote.clear();
                    }
                }
                env.shuffle.copy_memory_segments(shuffle, &blocks, &remote, &mut memory, &mut ranges);
                Ok(blocks.len())
            }
        });
        let maps = match located {
            Ok(n) => n,
            Err(e) => {
                ReadScratch { blocks, memory, ranges }.give_back();
                return Err(e);
            }
        };
        Ok(ShuffleReader {
            shuffle,
            maps,
            blocks,
            memory: Arc::new(memory),
            ranges,
            next_map: 0,
            current: None,
            raw: None,
            raw_remote: false,
            remote,
            window: Arc::default(),
            window_start: 0,
            window_end: 0,
            window_ranges: Vec::new(),
            window_memory: MemoryConsumer::new(tc),
            spare: None,
            reduce,
            tc,
            records: 0,
            bytes: 0,
        })
    }
}

impl<R: serde::de::DeserializeOwned> ShuffleReader<'_, R> {
    fn decoder(&mut self, src: BlockSource, origin: Origin, len: u64) -> ChunkDecoder<BlockSource, R> {
        match self.spare.take() {
            Some(mut d) => {
                d.reset(src, origin, len);
                d
            }
            None => ChunkDecoder::with_origin(src, origin).expecting(len),
        }
    }

    /// Starts reading block `i`: an in-memory segment becomes `raw`, a file segment `current`.
    fn open(&mut self, i: usize) -> Result<()> {
        // Columns are in map order: block `i` is map `i`'s.
        let (shuffle, map, reduce) = (self.shuffle.0, i, self.reduce);
        let fetch_failed = |message: String| Error::FetchFailed { shuffle, map, reduce, message };
        // The tracker gives the segment's offset and length, so a read needs no index lookup;
        // the index file is there for a remote executor's transfer service. Without a column,
        // every output is in memory.
        let (start, len, data) = match self.blocks.get(i) {
            Some(b) => {
                debug_assert_eq!(b.map as usize, i, "a column lists its blocks in map order");
                (b.offset, b.len, b.data.clone())
            }
            None => (0, self.ranges.get(i).copied().flatten().map_or(0, |s| s.len as u64), None),
        };
        if self.remote.get(i).copied().unwrap_or(false) {
            if !(self.window_start..self.window_end).contains(&i) {
                self.fetch_window(i)?;
            }
            let seg = self
                .window_ranges
                .get(i - self.window_start)
                .copied()
                .flatten()
                .ok_or_else(|| fetch_failed("the executor holding it sent no segment".into()))?;
            let end = seg.at + seg.len;
            if seg.framed {
                let src = BlockSource::Memory(SharedSlice { bytes: self.window.clone(), pos: seg.at, end });
                let origin = Origin::ShuffleMemory { shuffle, map };
                self.current = Some(self.decoder(src, origin, seg.len as u64));
            } else {
                self.raw = Some((seg.at, end));
                self.raw_remote = true;
            }
            return Ok(());
        }
        let Some(path) = data else {
            // The copy holds the whole segment, or nothing when the output is gone or short.
            let seg = self
                .ranges
                .get(i)
                .copied()
                .flatten()
                .ok_or_else(|| fetch_failed("in-memory map output is gone".into()))?;
            let end = seg.at + seg.len;
            if seg.framed {
                let src = BlockSource::Memory(SharedSlice { bytes: self.memory.clone(), pos: seg.at, end });
                let origin = Origin::ShuffleMemory { shuffle, map };
                self.current = Some(self.decoder(src, origin, len));
            } else {
                self.raw = Some((seg.at, end));
                self.raw_remote = false;
            }
            return Ok(());
        };
        let mut f = File::open(&*path).map_err(|e| fetch_failed(format!("{}: {e}", path.display())))?;
        f.seek(SeekFrom::Start(start)).map_err(|e| fetch_failed(format!("{}: {e}", path.display())))?;
        let buf = (len as usize).clamp(64, 1 << 16);
        let src = BlockSource::File(BufReader::with_capacity(buf, f).take(len));
        self.current = Some(self.decoder(src, Origin::Path(path.to_path_buf()), len));
        Ok(())
    }

    /// Fetches the segments of the remote blocks from `first` on, up to [`FETCH_WINDOW_BYTES`]
    /// (at least `first`'s) or [`FETCH_WINDOW_BLOCKS`] blocks, one request per executor holding
    /// some: the bytes a reducer holds at once stay bounded whatever the shuffle's size.
    fn fetch_window(&mut self, first: usize) -> Result<()> {
        let (shuffle, reduce) = (self.shuffle, self.reduce);
        let env = self.tc.env();
        let remote = env.remote.clone().ok_or_else(|| Error::Internal("remote blocks without a data plane".into()))?;
        // The window's bytes come out of the task's execution memory: as many blocks as the
        // budget grants up to the window's size, and always the first (one segment over a
        // refusing budget, rather than no progress).
        self.window_memory.release_all();
        let mut end = first;
        let mut bytes = 0u64;
        while end < self.maps && end - first < FETCH_WINDOW_BLOCKS {
            let len = self.blocks.get(end).map_or(0, |b| b.len);
            if self.remote.get(end).copied().unwrap_or(false) {
                if end > first && (bytes + len > FETCH_WINDOW_BYTES || !self.window_memory.ensure(bytes + len)) {
                    break;
                }
                bytes += len;
            }
            end += 1;
        }
        self.window_memory.ensure(bytes);
        // By executor, in map order within each.
        let mut by_executor: Vec<(u32, Vec<usize>)> = Vec::new();
        for i in first..end {
            let Some(b) = self.blocks.get(i).filter(|b| self.remote[i] && b.len > 0) else { continue };
            match by_executor.iter_mut().find(|(e, _)| *e == b.executor) {
                Some((_, v)) => v.push(i),
                None => by_executor.push((b.executor, vec![i])),
            }
        }
        let mut buf = Arc::try_unwrap(std::mem::take(&mut self.window)).unwrap_or_default();
        buf.clear();
        self.window_ranges.clear();
        self.window_ranges.resize(end - first, None);
        for (executor, blocks) in by_executor {
            let failed = |i: usize, message: String| Error::FetchFailed { shuffle: shuffle.0, map: i, reduce, message };
            let name = env
                .map_outputs
                .executor(executor)
                .ok_or_else(|| failed(blocks[0], format!("executor number {executor} is unknown")))?;
            let maps: Vec<(usize, u64)> = blocks.iter().map(|&i| (i, self.blocks[i].attempt)).collect();
            let got = remote.fetch(&name, shuffle, reduce, &maps, &mut buf).map_err(|(k, why)| {
                failed(blocks.get(k).copied().unwrap_or(blocks[0]), format!("from executor {name}: {why}"))
            })?;
            if got.len() != blocks.len() {
                return Err(failed(
                    blocks[got.len().min(blocks.len() - 1)],
                    format!("executor {name} sent too few segments"),
                ));
            }
            for (&i, seg) in blocks.iter().zip(got) {
                if seg.at.checked_add(seg.len).is_none_or(|e| e > buf.len()) || seg.len as u64 != self.blocks[i].len {
                    return Err(failed(i, format!("executor {name} sent a segment of the wrong size")));
                }
                self.window_ranges[i - first] = Some(seg);
            }
        }
        self.window = Arc::new(buf);
        self.window_start = first;
        self.window_end = end;
        Ok(())
    }

    /// The next record of the in-memory segment being read, if it has one more.
    fn next_raw(&mut self) -> Option<Result<R>> {
        let (pos, end) = self.raw?;
        if pos >= end {
            self.raw = None;
            return None;
        }
        let bytes = if self.raw_remote { &self.window[pos..end] } else { &self.memory[pos..end] };
        Some(match postcard::take_from_bytes::<R>(bytes) {
            // A record of no bytes never reaches this path (such outputs are framed): one that
            // consumed nothing means the bytes are not records of this type.
            Ok((_, rest)) if rest.len() == end - pos => {
                self.raw = None;
                Err(Error::Serialization("in-memory map output holds a record of no bytes".into()))
            }
            Ok((r, rest)) => {
                self.raw = Some((end - rest.len(), end));
                Ok(r)
            }
            Err(e) => {
                self.raw = None;
                Err(Error::Serialization(format!("in-memory map output holds an undecodable record: {e}")))
            }
        })
    }
}

impl<R: serde::de::DeserializeOwned> Iterator for ShuffleReader<'_, R> {
    type Item = R;
    fn next(&mut self) -> Option<R> {
        loop {
            let mut got = self.next_raw();
            if got.is_none() {
                if let Some(dec) = &mut self.current {
                    got = dec.next_record().transpose();
                    if got.is_none() {
                        self.spare = self.current.take();
                    }
                }
            }
            match got {
                Some(Ok(r)) => {
                    self.records += 1;
                    // Every record: a killed reducer stops however slow its consumer is.
                    if self.tc.should_stop() {
                        return None;
                    }
                    return Some(r);
                }
                Some(Err(e)) => {
                    self.tc.fail(Error::FetchFailed {
                        shuffle: self.shuffle.0,
                        map: self.next_map - 1,
                        reduce: self.reduce,
                        message: e.to_string(),
                    });
                    return None;
                }
                None => {}
            }
            if self.tc.should_stop() {
                return None;
            }
            let i = self.next_map;
            if i >= self.maps {
                return None;
            }
            self.next_map += 1;
            // Without a column a missing range is an output that is gone: `open` says so.
            let len = match self.blocks.get(i) {
                Some(b) => Some(b.len),
                None => self.ranges.get(i).copied().flatten().map(|s| s.len as u64),
            };
            if len == Some(0) {
                continue;
            }
            self.bytes += len.unwrap_or(0);
            if let Err(e) = self.open(i) {
                self.tc.fail(e);
                return None;
            }
        }
    }
}

impl<R> Drop for ShuffleReader<'_, R> {
    fn drop(&mut self) {
        self.tc.add_shuffle_read(self.records, self.bytes);
        // A decoder may still share the copy; then it is not kept.
        self.current = None;
        self.spare = None;
        let memory = std::mem::take(&mut self.memory);
        if let Ok(memory) = Arc::try_unwrap(memory) {
            let blocks = std::mem::take(&mut self.blocks);
            let ranges = std::mem::take(&mut self.ranges);
            ReadScratch { blocks, memory, ranges }.give_back();
        }
    }
}

/// A reducer's column, copy and ranges, kept by each thread between reduce tasks: with
/// thousands of map tasks they are tens of kilobytes, allocated anew for every task otherwise.
#[derive(Default)]
struct ReadScratch {
    blocks: Vec<ReduceBlock>,
    memory: Vec<u8>,
    ranges: Vec<Option<MemorySegment>>,
}

thread_local! {
    static READ_SCRATCH: std::cell::Cell<Option<ReadScratch>> = const { std::cell::Cell::new(None) };
}

impl ReadScratch {
    /// This thread's scratch (a new one when it is in use or was not kept).
    fn take() -> ReadScratch {
        READ_SCRATCH.with(|c| c.take()).unwrap_or_default()
    }

    /// Keeps the scratch for the thread's next reduce task, unless it grew large.
    fn give_back(mut self) {
        let bytes = self.blocks.capacity() * std::mem::size_of::<ReduceBlock>()
            + self.memory.capacity()
            + self.ranges.capacity() * std::mem::size_of::<Option<MemorySegment>>();
        if bytes <= SCRATCH_KEPT_BYTES {
            // Nothing of the last task's data stays reachable (file paths in blocks included).
            self.blocks.clear();
            self.memory.clear();
            self.ranges.clear();
            READ_SCRATCH.with(|c| c.set(Some(self)));
        }
    }
}
