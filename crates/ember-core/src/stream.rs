//! Record streams: records serialized with postcard into checksummed, optionally LZ4-compressed
//! chunks. Shuffle files, spill files, serialized cache blocks and checkpoints all use this form.
//!
//! A chunk is `[tag u8][raw_len u32][stored_len u32][body checksum u64][header checksum u32]`
//! followed by the stored bytes, little endian. The header checksum covers the 17 bytes before
//! it, so a corrupt length is caught before anything is allocated for it; the body checksum covers
//! the stored bytes, checked before they are decompressed. Chunks hold whole records, so a stream
//! can be cut and concatenated at chunk boundaries: a shuffle writer copies spilled segments into
//! its output without decoding them.

use std::io::{Read, Write};
use std::marker::PhantomData;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::conf::Codec;
use crate::error::{Error, Result};

const TAG_RAW: u8 = 0;
const TAG_LZ4: u8 = 1;
const TAG_ZSTD: u8 = 2;
/// A chunk of fewer than 256 raw bytes and records, with a short header:
/// `[tag][len u8][records u8][checksum u32]`. A shuffle of many tiny blocks (one record per map
/// and reduce partition) pays 7 bytes of header per block instead of 25.
const TAG_TINY: u8 = 3;
const TINY_HEADER: usize = 1 + 1 + 1 + 4;
const HEADER: usize = 1 + 4 + 4 + 4 + 8 + 4;
/// Zstandard level: the fastest regular level, which still compresses text well.
const ZSTD_LEVEL: i32 = 1;
/// Chunks up to this stored size are read into a buffer allocated at once; larger ones grow with
/// the bytes actually read.
const EAGER_READ: usize = 1 << 20;
/// Chunks smaller than this are stored uncompressed, with a short header (at most 256).
const SMALL_CHUNK: usize = 256;
/// zstd chunks claiming up to this many raw bytes get their buffer at once (a writer's chunk is
/// about `CHUNK_BYTES`, or one larger record).
const ZSTD_EAGER: usize = 2 * CHUNK_BYTES;
/// The most bytes LZ4 decompresses from one stored byte.
const LZ4_MAX_RATIO: usize = 255;
/// Target size of a chunk's uncompressed records.
pub(crate) const CHUNK_BYTES: usize = 64 * 1024;

fn checksum(bytes: &[u8]) -> u64 {
    crate::data::stable_hash(bytes)
}

fn tiny_checksum(len: u8, records: u8, body: &[u8]) -> u32 {
    let mut h = rustc_hash::FxHasher::default();
    std::hash::Hasher::write_u8(&mut h, len);
    std::hash::Hasher::write_u8(&mut h, records);
    std::hash::Hasher::write(&mut h, body);
    let z = std::hash::Hasher::finish(&h);
    // Mix the high bits down: FxHash's low bits are weak.
    ((z >> 32) ^ z.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32) as u32
}

fn header_checksum(head: &[u8]) -> u32 {
    checksum(head) as u32
}

/// Appends records to an in-memory buffer of finished chunks.
pub(crate) struct ChunkEncoder {
    codec: Codec,
    pending: Vec<u8>,
    /// Records in `pending` (a record may serialize to no bytes at all, so bytes alone cannot
    /// count them).
    pending_records: u32,
    /// Finished chunks.
    pub(crate) out: Vec<u8>,
}

impl ChunkEncoder {
    pub(crate) fn new(codec: Codec) -> Self {
        ChunkEncoder { codec, pending: Vec::new(), pending_records: 0, out: Vec::new() }
    }

    /// Adds one record; finishes a chunk when enough bytes are pending.
    #[inline]
    pub(crate) fn push<T: Serialize + ?Sized>(&mut self, record: &T) -> Result<()> {
        crate::data::encode_into(record, &mut self.pending)?;
        if self.pending.len() > u32::MAX as usize {
            self.pending.clear();
            self.pending_records = 0;
            return Err(Error::ResourcesExhausted("a single record serializes to more than 4 GiB".into()));
        }
        self.pending_records += 1;
        if self.pending.len() >= CHUNK_BYTES || self.pending_records == u32::MAX {
            self.finish_chunk();
        }
        Ok(())
    }

    /// Adds one record that is already serialized (postcard) by the caller.
    #[inline]
    pub(crate) fn push_encoded(&mut self, record: &[u8]) -> Result<()> {
        if self.pending.len() + record.len() > u32::MAX as usize {
            return Err(Error::ResourcesExhausted("a chunk of records would exceed 4 GiB".into()));
        }
        self.pending.extend_from_slice(record);
        self.pending_records += 1;
        if self.pending.len() >= CHUNK_BYTES || self.pending_records == u32::MAX {
            self.finish_chunk();
        }
        Ok(())
    }

    /// Finishes the last chunk and lends every finished byte; [`ChunkEncoder::recycle`] then
    /// empties the encoder, keeping its buffers for the next use.
    pub(crate) fn take_bytes_reusing(&mut self) -> &[u8] {
        self.finish_chunk();
        &self.out
    }

    /// Empties the finished bytes, keeping the allocation.
    pub(crate) fn recycle(&mut self) {
        self.out.clear();
    }

    /// Bytes held (finished chunks plus pending records).
    pub(crate) fn held_bytes(&self) -> usize {
        self.out.len() + self.pending.len()
    }

    /// Closes the pending chunk, if any.
    pub(crate) fn finish_chunk(&mut self) {
        if self.pending_records == 0 {
            return;
        }
        let records = std::mem::take(&mut self.pending_records);
        if self.pending.len() < SMALL_CHUNK && records <= u8::MAX as u32 {
            // SMALL_CHUNK <= 256, so the length fits in a byte; so does the count.
            let (len, count) = (self.pending.len() as u8, records as u8);
            self.out.reserve(TINY_HEADER + self.pending.len());
            self.out.push(TAG_TINY);
            self.out.push(len);
            self.out.push(count);
            self.out.extend_from_slice(&tiny_checksum(len, count, &self.pending).to_le_bytes());
            self.out.extend_from_slice(&self.pending);
            self.pending.clear();
            return;
        }
        let compressed = match self.codec {
            // Compressing a few bytes saves nothing and costs a compressor's setup (hash tables
            // to clear), which dominates shuffles of many tiny blocks.
            Codec::Lz4 => Some((TAG_LZ4, lz4_flex::block::compress(&self.pending))),
            // Compressing a buffer in memory cannot fail but for allocation; store it raw then.
            Codec::Zstd => zstd::bulk::compress(&self.pending, ZSTD_LEVEL).ok().map(|c| (TAG_ZSTD, c)),
            Codec::None => None,
        };
        let (tag, stored): (u8, &[u8]) = match &compressed {
            // A compressed form that would not fit the header's length field is not used.
            Some((tag, c)) if c.len() <= u32::MAX as usize => (*tag, c),
            _ => (TAG_RAW, &self.pending),
        };
        self.out.reserve(HEADER + stored.len());
        let head_start = self.out.len();
        self.out.push(tag);
        // `push` refuses records that would take a chunk past `u32::MAX` bytes, and a block
        // compressor's output is at most a little larger than its input, which `decode_bound`
        // accounts for; stored lengths over `u32::MAX` are refused by the reader.
        self.out.extend_from_slice(&(self.pending.len() as u32).to_le_bytes());
        self.out.extend_from_slice(&(stored.len() as u32).to_le_bytes());
        self.out.extend_from_slice(&records.to_le_bytes());
        self.out.extend_from_slice(&checksum(stored).to_le_bytes());
        let head = header_checksum(&self.out[head_start..]);
        self.out.extend_from_slice(&head.to_le_bytes());
        self.out.extend_from_slice(stored);
        self.pending.clear();
    }

    /// Finishes the last chunk and takes every finished byte, leaving the encoder empty.
    pub(crate) fn take_bytes(&mut self) -> Vec<u8> {
        self.finish_chunk();
        std::mem::take(&mut self.out)
    }
}

/// Names a record stream's source in error messages.
#[derive(Debug, Clone)]
pub(crate) enum Origin {
    /// A file (or a name standing for one).
    Path(PathBuf),
    /// A map output held in an executor's memory.
    ShuffleMemory {
        /// The shuffle.
        shuffle: u64,
        /// The map partition.
        map: usize,
    },
}

impl Origin {
    fn path(&self) -> PathBuf {
        match self {
            Origin::Path(p) => p.clone(),
            other => PathBuf::from(other.to_string()),
        }
    }
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::Path(p) => write!(f, "{}", p.display()),
            Origin::ShuffleMemory { shuffle, map } => write!(f, "map output {map} of shuffle {shuffle} in memory"),
        }
    }
}

/// The largest stored length a chunk of `raw_len` record bytes can have under codec `tag`.
fn decode_bound(tag: u8, raw_len: usize) -> usize {
    match tag {
        TAG_RAW => raw_len,
        // LZ4 and zstd block formats expand incompressible input by well under 1/128 plus a
        // small constant.
        _ => raw_len + raw_len / 128 + 64,
    }
}

/// Decodes records of type `T` from a byte source holding chunks.
pub(crate) struct ChunkDecoder<R: Read, T> {
    src: R,
    buf: Vec<u8>,
    pos: usize,
    stored: Vec<u8>,
    /// Records of the current chunk not yet decoded.
    remaining: u32,
    origin: Origin,
    /// Bytes consumed so far, and how many the stream must have (when known).
    consumed: u64,
    expected: Option<u64>,
    _t: PhantomData<fn() -> T>,
}

impl<R: Read, T: DeserializeOwned> ChunkDecoder<R, T> {
    /// `origin` names the source in error messages.
    pub(crate) fn new(src: R, origin: &Path) -> Self {
        Self::with_origin(src, Origin::Path(origin.to_path_buf()))
    }

    /// A decoder whose source is named by `origin`, formatted only if an error needs it.
    pub(crate) fn with_origin(src: R, origin: Origin) -> Self {
        ChunkDecoder {
            src,
            buf: Vec::new(),
            pos: 0,
            stored: Vec::new(),
            remaining: 0,
            origin,
            consumed: 0,
            expected: None,
            _t: PhantomData,
        }
    }

    /// Reads another source with this decoder's buffers (the next block of a shuffle read).
    pub(crate) fn reset(&mut self, src: R, origin: Origin, expected: u64) {
        self.src = src;
        self.origin = origin;
        self.buf.clear();
        self.pos = 0;
        self.remaining = 0;
        self.consumed = 0;
        self.expected = Some(expected);
    }

    /// Requires the stream to hold exactly `len` bytes: a stream that ends early, even at a chunk
    /// boundary, is an error rather than a silently shorter result.
    pub(crate) fn expecting(mut self, len: u64) -> Self {
        self.expected = Some(len);
        self
    }

    fn corrupt(&self, what: &str) -> Error {
        Error::Serialization(format!("corrupt record stream in {}: {what}", self.origin))
    }

    /// Fills `buf` from the source; `Ok(false)` if the source ended before the first byte.
    fn read_header(&mut self, buf: &mut [u8]) -> Result<bool> {
        let mut filled = 0;
        while filled < buf.len() {
            let n = self.src.read(&mut buf[filled..]).map_err(|e| Error::io(self.origin.path(), e))?;
            if n == 0 {
                return if filled == 0 { Ok(false) } else { Err(self.corrupt("truncated chunk header")) };
            }
            filled += n;
        }
        Ok(true)
    }

    /// Reads a tiny chunk, after its tag: `[len u8][records u8][checksum u32][len bytes]`.
    fn next_tiny_chunk(&mut self) -> Result<()> {
        let mut head = [TAG_TINY, 0, 0, 0, 0, 0, 0];
        if !self.read_header(&mut head[1..])? {
            return Err(self.corrupt("truncated chunk header"));
        }
        let len = head[1] as usize;
        self.buf.resize(len, 0);
        let read = self.src.read_exact(&mut self.buf);
        match read {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(self.corrupt("truncated chunk")),
            Err(e) => return Err(Error::io(self.origin.path(), e)),
        }
        let sum = u32::from_le_bytes([head[3], head[4], head[5], head[6]]);
        if tiny_checksum(len as u8, head[2], &self.buf) != sum {
            return Err(self.corrupt("checksum mismatch"));
        }
        self.consumed += (TINY_HEADER + len) as u64;
        self.pos = 0;
        self.remaining = head[2] as u32;
        Ok(())
    }

    /// Reads the next chunk; `Ok(false)` at a clean end of stream.
    fn next_chunk(&mut self) -> Result<bool> {
        let mut header = [0u8; HEADER];
        if !self.read_header(&mut header[..1])? {
            return match self.expected {
                Some(e) if e != self.consumed => {
                    Err(self.corrupt(&format!("truncated stream: {} of {e} bytes", self.consumed)))
                }
                _ => Ok(false),
            };
        }
        if header[0] == TAG_TINY {
            self.next_tiny_chunk()?;
            return Ok(true);
        }
        if !self.read_header(&mut header[1..])? {
            return Err(self.corrupt("truncated chunk header"));
        }
        let u32_at = |i: usize| u32::from_le_bytes([header[i], header[i + 1], header[i + 2], header[i + 3]]);
        if header_checksum(&header[..HEADER - 4]) != u32_at(HEADER - 4) {
            return Err(self.corrupt("chunk header checksum mismatch"));
        }
        let tag = header[0];
        let raw_len = u32_at(1) as usize;
        let stored_len = u32_at(5) as usize;
        let records = u32_at(9);
        let sum = u64::from_le_bytes(header[13..21].try_into().unwrap_or_default());
        if stored_len > decode_bound(tag, raw_len) {
            return Err(self.corrupt("implausible chunk length"));
        }
        let mut stored = std::mem::take(&mut self.stored);
        stored.clear();
        let read = if stored_len <= EAGER_READ {
            // Small enough to allocate before reading: one exact read.
            stored.resize(stored_len, 0);
            self.src.read_exact(&mut stored).map(|_| stored_len)
        } else {
            // Read what is there rather than allocating `stored_len` up front, so a truncated
            // stream costs no more memory than its bytes.
            (&mut self.src).take(stored_len as u64).read_to_end(&mut stored)
        };
        self.stored = stored;
        match read {
            Ok(n) if n == stored_len => {}
            Ok(_) => return Err(self.corrupt("truncated chunk")),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(self.corrupt("truncated chunk")),
            Err(e) => return Err(Error::io(self.origin.path(), e)),
        }
        if checksum(&self.stored) != sum {
            return Err(self.corrupt("checksum mismatch"));
        }
        self.consumed += (HEADER + stored_len) as u64;
        // The checksums passed, so `raw_len` is what the writer recorded.
        match tag {
            TAG_RAW => {
                std::mem::swap(&mut self.buf, &mut self.stored);
            }
            TAG_LZ4 => {
                // LZ4 represents at most 255 bytes per stored byte: a larger claim (checksums are
                // not keyed, so a crafted header can make one) must not size an allocation.
                if raw_len > stored_len.saturating_mul(LZ4_MAX_RATIO).saturating_add(LZ4_MAX_RATIO) {
                    return Err(self.corrupt("implausible chunk length"));
                }
                self.buf.resize(raw_len, 0);
                let n = lz4_flex::block::decompress_into(&self.stored, &mut self.buf)
                    .map_err(|e| self.corrupt(&format!("lz4: {e}")))?;
                if n != raw_len {
                    return Err(self.corrupt("chunk length mismatch"));
                }
            }
            TAG_ZSTD => {
                // zstd may expand thousands of times, so a claim cannot be bounded by the stored
                // bytes. A chunk of the usual size decodes at once into a buffer of the size it
                // claims; a larger claim decodes into a buffer that grows with what really
                // decompresses, up to it.
                let n = if raw_len <= ZSTD_EAGER {
                    self.buf.resize(raw_len, 0);
                    zstd::bulk::decompress_to_buffer(&self.stored, &mut self.buf)
                } else {
                    self.buf.clear();
                    zstd::stream::read::Decoder::with_buffer(&self.stored[..])
                        .and_then(|d| d.take(raw_len as u64 + 1).read_to_end(&mut self.buf))
                }
                .map_err(|e| self.corrupt(&format!("zstd: {e}")))?;
                if n != raw_len {
                    return Err(self.corrupt("chunk length mismatch"));
                }
            }
            _ => return Err(self.corrupt("unknown chunk tag")),
        }
        self.pos = 0;
        self.remaining = records;
        Ok(true)
    }

    /// The next record, `Ok(None)` at the end.
    pub(crate) fn next_record(&mut self) -> Result<Option<T>> {
        while self.remaining == 0 {
            if self.pos != self.buf.len() {
                return Err(self.corrupt("a chunk holds bytes past its records"));
            }
            if !self.next_chunk()? {
                return Ok(None);
            }
        }
        let (rec, rest) =
            postcard::take_from_bytes::<T>(&self.buf[self.pos..]).map_err(|e| self.corrupt(&format!("record: {e}")))?;
        self.pos = self.buf.len() - rest.len();
        self.remaining -= 1;
        Ok(Some(rec))
    }
}

/// Encodes records straight into a writer, chunk by chunk. Returns bytes written on finish.
pub(crate) struct StreamWriter<W: Write> {
    enc: ChunkEncoder,
    dst: W,
    written: u64,
    origin: PathBuf,
}

impl<W: Write> StreamWriter<W> {
    pub(crate) fn new(dst: W, codec: Codec, origin: &Path) -> Self {
        StreamWriter { enc: ChunkEncoder::new(codec), dst, written: 0, origin: origin.to_path_buf() }
    }

    #[inline]
    pub(crate) fn write<T: Serialize + ?Sized>(&mut self, rec: &T) -> Result<()> {
        self.enc.push(rec)?;
        if !self.enc.out.is_empty() {
            self.drain()?;
        }
        Ok(())
    }

    fn drain(&mut self) -> Result<()> {
        self.dst.write_all(&self.enc.out).map_err(|e| Error::io(&self.origin, e))?;
        self.written += self.enc.out.len() as u64;
        self.enc.out.clear();
        Ok(())
    }

    /// Writes raw, already-encoded chunk bytes (from another stream of the same record type).
    pub(crate) fn write_encoded(&mut self, bytes: &[u8]) -> Result<()> {
        self.enc.finish_chunk();
        self.drain()?;
        self.dst.write_all(bytes).map_err(|e| Error::io(&self.origin, e))?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    /// Bytes written so far (including finished chunks).
    pub(crate) fn position(&self) -> u64 {
        self.written
    }

    /// Closes the pending chunk (a segment boundary) and returns the position after it.
    pub(crate) fn end_segment(&mut self) -> Result<u64> {
        self.enc.finish_chunk();
        self.drain()?;
        Ok(self.written)
    }

    /// Finishes and returns the writer.
    pub(crate) fn finish(mut self) -> Result<W> {
        self.end_segment()?;
        self.dst.flush().map_err(|e| Error::io(&self.origin, e))?;
        Ok(self.dst)
    }
}

#[cfg(test)]
/// Serializes all records into chunk bytes.
pub(crate) fn encode_all<'a, T: Serialize + 'a>(
    codec: Codec,
    items: impl IntoIterator<Item = &'a T>,
) -> Result<Vec<u8>> {
    let mut enc = ChunkEncoder::new(codec);
    for it in items {
        enc.push(it)?;
    }
    Ok(enc.take_bytes())
}

#[cfg(test)]
/// Decodes all records from chunk bytes.
pub(crate) fn decode_all<T: DeserializeOwned>(bytes: &[u8], origin: &Path) -> Result<Vec<T>> {
    decode_exact(bytes, bytes.len() as u64, origin)
}

#[cfg(test)]
/// Decodes all records from chunk bytes that must be `expected` bytes long (a length recorded
/// when they were written).
pub(crate) fn decode_exact<T: DeserializeOwned>(bytes: &[u8], expected: u64, origin: &Path) -> Result<Vec<T>> {
    let mut dec = ChunkDecoder::<_, T>::new(bytes, origin).expecting(expected);
    let mut out = Vec::new();
    while let Some(r) = dec.next_record()? {
        out.push(r);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_concatenates() {
        for codec in [Codec::Lz4, Codec::Zstd, Codec::None] {
            let a: Vec<(String, u64)> = (0..20_000).map(|i| (format!("k{i}"), i)).collect();
            let b: Vec<(String, u64)> = (0..10).map(|i| (format!("z{i}"), i)).collect();
            let mut bytes = encode_all(codec, &a).unwrap();
            bytes.extend(encode_all(codec, &b).unwrap());
            let back: Vec<(String, u64)> = decode_all(&bytes, Path::new("mem")).unwrap();
            assert_eq!(back.len(), a.len() + b.len());
            assert_eq!(&back[..a.len()], &a[..]);
        }
    }

    /// A chunk whose header, checksums included, is well formed, but whose raw length claims
    /// `raw_len` bytes for `stored`.
    fn crafted_chunk(tag: u8, raw_len: u32, stored: &[u8]) -> Vec<u8> {
        let mut c = vec![tag];
        c.extend_from_slice(&raw_len.to_le_bytes());
        c.extend_from_slice(&(stored.len() as u32).to_le_bytes());
        c.extend_from_slice(&1u32.to_le_bytes());
        c.extend_from_slice(&checksum(stored).to_le_bytes());
        let sum = header_checksum(&c);
        c.extend_from_slice(&sum.to_le_bytes());
        assert_eq!(c.len(), HEADER);
        c.extend_from_slice(stored);
        c
    }

    #[test]
    fn a_crafted_raw_length_sizes_no_allocation() {
        // LZ4: refused before any buffer is sized.
        let lz4 = lz4_flex::block::compress(&[7u8; 1000]);
        let bytes = crafted_chunk(TAG_LZ4, 1 << 30, &lz4);
        let err = decode_all::<Vec<u8>>(&bytes, Path::new("f.data")).unwrap_err();
        assert!(err.to_string().contains("implausible chunk length"), "{err}");
        // zstd: the buffer holds what really decompresses, not the claim.
        let zstd = zstd::bulk::compress(&[7u8; 1000], ZSTD_LEVEL).unwrap();
        let bytes = crafted_chunk(TAG_ZSTD, 1 << 30, &zstd);
        let mut d = ChunkDecoder::<_, Vec<u8>>::with_origin(&bytes[..], Origin::Path("f.data".into()));
        let err = d.next_record().unwrap_err();
        assert!(err.to_string().contains("chunk length mismatch"), "{err}");
        assert!(d.buf.capacity() < 1 << 20, "a buffer of {} bytes for 1000", d.buf.capacity());
        // The honest claims decode; one short of the real output is an error, at either size.
        let ok = crafted_chunk(TAG_ZSTD, 1000, &zstd);
        assert!(ChunkDecoder::<_, u8>::with_origin(&ok[..], Origin::Path("f.data".into())).next_record().is_ok());
        let big = vec![7u8; 3 * CHUNK_BYTES];
        let big_zstd = zstd::bulk::compress(&big, ZSTD_LEVEL).unwrap();
        for (raw, stored) in [(1000, &zstd), (big.len(), &big_zstd)] {
            let ok = crafted_chunk(TAG_ZSTD, raw as u32, stored);
            assert!(ChunkDecoder::<_, u8>::with_origin(&ok[..], Origin::Path("f.data".into())).next_record().is_ok());
            let short = crafted_chunk(TAG_ZSTD, raw as u32 - 1, stored);
            let mut d = ChunkDecoder::<_, u8>::with_origin(&short[..], Origin::Path("f.data".into()));
            assert!(d.next_record().is_err(), "a claim of {} for {raw} bytes decoded", raw - 1);
        }
    }

    #[test]
    fn a_record_larger_than_many_chunks_round_trips() {
        let big = vec![vec![7u8; 8 << 20]];
        let bytes = encode_all(Codec::Lz4, &big).unwrap();
        let back: Vec<Vec<u8>> = decode_all(&bytes, Path::new("mem")).unwrap();
        assert_eq!(back, big);
    }

    #[test]
    fn detects_corruption() {
        let a: Vec<u64> = (0..1000).collect();
        let mut bytes = encode_all(Codec::Lz4, &a).unwrap();
        let n = bytes.len();
        bytes[n - 3] ^= 0xff;
        let err = decode_all::<u64>(&bytes, Path::new("f.data")).unwrap_err();
        assert!(err.to_string().contains("f.data"), "{err}");
        let err = decode_all::<u64>(&bytes[..n - 5], Path::new("f.data")).unwrap_err();
        assert!(err.to_string().contains("truncated"), "{err}");
    }

    #[test]
    fn a_stream_cut_at_a_chunk_boundary_is_truncated_when_its_length_is_known() {
        let a: Vec<u64> = (0..100_000).collect();
        let bytes = encode_all(Codec::None, &a).unwrap();
        let first = HEADER + u32::from_le_bytes(bytes[5..9].try_into().unwrap()) as usize;
        assert!(first < bytes.len());
        let err = decode_exact::<u64>(&bytes[..first], bytes.len() as u64, Path::new("m")).unwrap_err();
        assert!(err.to_string().contains("truncated stream"), "{err}");
    }

    #[test]
    fn records_of_no_bytes_are_counted() {
        for n in [0usize, 1, 5, 255, 256, 70_000] {
            let units = vec![(); n];
            let bytes = encode_all(Codec::Lz4, &units).unwrap();
            assert_eq!(decode_all::<()>(&bytes, Path::new("m")).unwrap().len(), n);
        }
    }

    #[test]
    fn tiny_chunks_have_short_headers_and_are_checked() {
        let bytes = encode_all(Codec::Lz4, &[1u64, 2, 3]).unwrap();
        assert_eq!(bytes[0], TAG_TINY);
        assert_eq!(bytes.len(), TINY_HEADER + 3);
        assert_eq!(decode_all::<u64>(&bytes, Path::new("m")).unwrap(), vec![1, 2, 3]);
        for i in 0..bytes.len() {
            for bit in 0..8 {
                let mut bad = bytes.clone();
                bad[i] ^= 1 << bit;
                assert!(decode_all::<u64>(&bad, Path::new("m")).is_err(), "flip of bit {bit} of byte {i}");
            }
        }
    }

    #[test]
    fn a_corrupt_length_is_caught_before_allocating_it() {
        let records: Vec<u64> = (0..1000).collect();
        let bytes = encode_all(Codec::Lz4, &records).unwrap();
        assert_ne!(bytes[0], TAG_TINY);
        let mut bad = bytes.clone();
        // Claim a 4 GiB chunk: the header checksum refuses it before any allocation.
        bad[1..5].copy_from_slice(&u32::MAX.to_le_bytes());
        bad[5..9].copy_from_slice(&u32::MAX.to_le_bytes());
        let err = decode_all::<u64>(&bad, Path::new("m")).unwrap_err();
        assert!(err.to_string().contains("header checksum"), "{err}");
    }
}
