//! The reduce-side reader: the segments of every map output for one reduce partition.

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::sync::Arc;

use super::ReduceBlock;
use crate::error::{Error, Result};
use crate::stream::{ChunkDecoder, Origin};
use crate::task::TaskContext;

/// Where a block's bytes come from: no allocation or dynamic call per block.
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

/// Reads reduce partition `reduce`: the segment of each map output in `blocks`, in map order.
/// A missing, short or corrupt segment is a fetch failure recorded on the task context.
pub(crate) struct ShuffleReader<'a, R> {
    blocks: Vec<ReduceBlock>,
    /// The blocks' in-memory segments, copied at once, and each block's range in them.
    memory: Arc<Vec<u8>>,
    ranges: Vec<Option<(usize, usize)>>,
    next_map: usize,
    current: Option<ChunkDecoder<BlockSource, R>>,
    /// A finished decoder, kept for its buffers.
    spare: Option<ChunkDecoder<BlockSource, R>>,
    reduce: usize,
    tc: &'a TaskContext,
    records: u64,
    bytes: u64,
}

impl<'a, R> ShuffleReader<'a, R> {
    pub(crate) fn new(blocks: Vec<ReduceBlock>, reduce: usize, tc: &'a TaskContext) -> Self {
        let (memory, ranges) = tc.env().shuffle.copy_memory_segments(&blocks);
        let memory = Arc::new(memory);
        ShuffleReader {
            blocks,
            memory,
            ranges,
            next_map: 0,
            current: None,
            spare: None,
            reduce,
            tc,
            records: 0,
            bytes: 0,
        }
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

    fn open(&mut self, i: usize) -> Result<ChunkDecoder<BlockSource, R>> {
        let b = &self.blocks[i];
        let (shuffle, map, reduce) = (b.shuffle.0, b.map, self.reduce);
        let fetch_failed = |message: String| Error::FetchFailed { shuffle, map, reduce, message };
        // The tracker gives the segment's offset and length, so a read needs no index lookup;
        // the index file is there for a remote executor's transfer service.
        let (start, len) = (b.offset, b.len);
        let Some(path) = b.data.clone() else {
            // The copy holds the whole segment, or nothing when the output is gone or short.
            let (at, n) = self
                .ranges
                .get(i)
                .copied()
                .flatten()
                .ok_or_else(|| fetch_failed("in-memory map output is gone".into()))?;
            let src = BlockSource::Memory(SharedSlice { bytes: self.memory.clone(), pos: at, end: at + n });
            return Ok(self.decoder(src, Origin::ShuffleMemory { shuffle, map }, len));
        };
        let mut f = File::open(&*path).map_err(|e| fetch_failed(format!("{}: {e}", path.display())))?;
        f.seek(SeekFrom::Start(start)).map_err(|e| fetch_failed(format!("{}: {e}", path.display())))?;
        let buf = (len as usize).clamp(64, 1 << 16);
        let src = BlockSource::File(BufReader::with_capacity(buf, f).take(len));
        Ok(self.decoder(src, Origin::Path(path.to_path_buf()), len))
    }
}

impl<R: serde::de::DeserializeOwned> Iterator for ShuffleReader<'_, R> {
    type Item = R;
    fn next(&mut self) -> Option<R> {
        loop {
            if let Some(dec) = &mut self.current {
                match dec.next_record() {
                    Ok(Some(r)) => {
                        self.records += 1;
                        // Every record: a killed reducer stops however slow its consumer is.
                        if self.tc.should_stop() {
                            return None;
                        }
                        return Some(r);
                    }
                    Ok(None) => self.spare = self.current.take(),
                    Err(e) => {
                        let s = &self.blocks[self.next_map - 1];
                        self.tc.fail(Error::FetchFailed {
                            shuffle: s.shuffle.0,
                            map: s.map,
                            reduce: self.reduce,
                            message: e.to_string(),
                        });
                        return None;
                    }
                }
            }
            if self.tc.should_stop() {
                return None;
            }
            let i = self.next_map;
            let len = self.blocks.get(i)?.len;
            self.next_map += 1;
            if len == 0 {
                continue;
            }
            self.bytes += len;
            match self.open(i) {
                Ok(d) => self.current = Some(d),
                Err(e) => {
                    self.tc.fail(e);
                    return None;
                }
            }
        }
    }
}

impl<R> Drop for ShuffleReader<'_, R> {
    fn drop(&mut self) {
        self.tc.add_shuffle_read(self.records, self.bytes);
    }
}
