//! Source RDDs: in-memory collections, ranges, text files, whole files, binary files and records, checkpoints.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::actions::PartitionFn;
use super::output::RemoveOnDrop;
use super::{Dependency, Rdd, RddImpl};
use crate::context::Context;
use crate::data::Data;
use crate::error::{Error, Result};
use crate::ship::{Marker, Ship};
use crate::storage::MemoryConsumer;
use crate::stream::{ChunkDecoder, StreamWriter};
use crate::task::{BoxIter, Interruptible, TaskContext};

/// `parallelize`: a local collection cut into slices. Slice `i` of `n` holds positions
/// `i * len / n .. (i + 1) * len / n`, computed when a task asks, so that more slices than records
/// cost nothing.
#[derive(Serialize, Deserialize)]
#[serde(bound = "T: Data")]
pub(crate) struct ParallelCollection<T> {
    data: Arc<Vec<T>>,
    slices: usize,
}

impl<T: Data> ParallelCollection<T> {
    pub(crate) fn new(data: Vec<T>, slices: usize) -> Self {
        ParallelCollection { data: Arc::new(data), slices: slices.max(1) }
    }

    fn bounds(&self, split: usize) -> (usize, usize) {
        let (len, n) = (self.data.len() as u128, self.slices as u128);
        // `split < n` and the products fit in 128 bits; the quotients are at most `len`.
        let at = |i: usize| (i as u128 * len / n) as usize;
        (at(split.min(self.slices)), at((split + 1).min(self.slices)))
    }
}

impl<T: Data> RddImpl<T> for ParallelCollection<T> {
    fn name(&self) -> &'static str {
        "parallelize"
    }
    fn num_partitions(&self) -> usize {
        self.slices
    }
    fn dependencies(&self) -> Vec<Dependency> {
        Vec::new()
    }
    fn compute<'a>(&'a self, split: usize, tc: &'a TaskContext) -> BoxIter<'a, T> {
        let (start, end) = self.bounds(split);
        let slice = self.data.get(start..end).unwrap_or(&[]);
        Box::new(Interruptible::new(slice.iter().cloned(), tc))
    }
}

/// `range`: integers from `start` (inclusive) to `end` (exclusive) by `step`.
#[derive(Serialize, Deserialize)]
pub(crate) struct RangeRdd {
    pub(crate) start: i64,
    pub(crate) end: i64,
    pub(crate) step: i64,
    pub(crate) slices: usize,
}

impl RangeRdd {
    fn len(&self) -> u64 {
        if (self.step > 0 && self.start >= self.end) || (self.step < 0 && self.start <= self.end) {
            return 0;
        }
        let span = (self.end as i128 - self.start as i128).unsigned_abs();
        let step = (self.step as i128).unsigned_abs();
        span.div_ceil(step) as u64
    }
}

impl RddImpl<i64> for RangeRdd {
    fn name(&self) -> &'static str {
        "range"
    }
    fn num_partitions(&self) -> usize {
        self.slices
    }
    fn dependencies(&self) -> Vec<Dependency> {
        Vec::new()
    }
    fn compute<'a>(&'a self, split: usize, tc: &'a TaskContext) -> BoxIter<'a, i64> {
        let len = self.len() as u128;
        let n = self.slices as u128;
        let lo = (split as u128 * len / n) as i128;
        let hi = ((split as u128 + 1) * len / n) as i128;
        let (start, step) = (self.start as i128, self.step as i128);
        Box::new(Interruptible::new((lo..hi).map(move |i| (start + i * step) as i64), tc))
    }
}

/// `empty`: no partitions.
#[derive(Serialize, Deserialize)]
#[serde(bound = "")]
pub(crate) struct EmptyRdd<T>(pub(crate) Marker<T>);

impl<T: Data> RddImpl<T> for EmptyRdd<T> {
    fn name(&self) -> &'static str {
        "empty"
    }
    fn num_partitions(&self) -> usize {
        0
    }
    fn dependencies(&self) -> Vec<Dependency> {
        Vec::new()
    }
    fn compute<'a>(&'a self, _: usize, _: &'a TaskContext) -> BoxIter<'a, T> {
        Box::new(std::iter::empty())
    }
}

// ---- files -----------------------------------------------------------------------------------

/// Resolves comma-separated paths, each a file, directory or glob, into the files they name:
/// each path's files sorted, the paths in the order given. Hidden files (`.name`, `_name`)
/// inside directories are skipped, as Hadoop input formats do.
pub(crate) fn resolve_input(paths: &str) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for path in paths.split(',') {
        if path.trim().is_empty() {
            return Err(Error::InvalidArgument(format!("empty path in the comma-separated input `{paths}`")));
        }
        files.extend(resolve_one(path)?);
    }
    Ok(files)
}

/// Resolves one path, directory or glob into the sorted list of files it names.
fn resolve_one(path: &str) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    if path.contains(['*', '?', '[']) {
        let paths = glob::glob(path).map_err(|e| Error::InvalidArgument(format!("bad glob pattern `{path}`: {e}")))?;
        for p in paths {
            let p = p.map_err(|e| Error::io(e.path().to_path_buf(), std::io::Error::other(e.to_string())))?;
            if p.is_dir() {
                files.extend(list_dir(&p)?);
            } else {
                files.push(p);
            }
        }
    } else {
        let p = PathBuf::from(path);
        let meta = std::fs::metadata(&p).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::InputNotFound(p.clone()),
            _ => Error::io(&p, e),
        })?;
        if meta.is_dir() {
            files.extend(list_dir(&p)?);
        } else {
            files.push(p);
        }
    }
    if files.is_empty() {
        return Err(Error::InputNotFound(PathBuf::from(path)));
    }
    // Absolute, as the driver resolves them: executors run in directories of their own.
    let mut files = files
        .into_iter()
        .map(|f| std::path::absolute(&f).map_err(|e| Error::io(&f, e)))
        .collect::<Result<Vec<PathBuf>>>()?;
    files.sort();
    Ok(files)
}

fn list_dir(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') || name.starts_with('_') {
            continue;
        }
        let p = entry.path();
        if p.is_file() {
            out.push(p);
        }
    }
    Ok(out)
}

fn is_gzip(p: &Path) -> bool {
    p.extension().is_some_and(|e| e == "gz")
}

/// A byte range of a file, read as lines.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct FileSplit {
    pub(crate) path: PathBuf,
    pub(crate) start: u64,
    pub(crate) len: u64,
}

/// How input files are cut and packed into partitions.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SplitPolicy {
    /// The requested minimum number of partitions.
    pub(crate) min_partitions: usize,
    /// Most bytes in one partition (`ember.files.maxPartitionBytes`).
    pub(crate) max_partition_bytes: u64,
    /// What opening a file costs, in bytes (`ember.files.openCostInBytes`).
    pub(crate) open_cost: u64,
}

/// Cuts files into byte ranges and packs them into partitions, as Spark's file sources do.
///
/// The target size is `min(max_partition_bytes, max(open_cost, total / min_partitions))`, where
/// `total` counts every file's length plus `open_cost`. Files larger than the target are cut
/// into ranges of that size (gzip files cannot be split and stay whole); ranges are then packed,
/// in path order, into partitions of at most the target size, each file counting its length
/// plus `open_cost`. So a directory of many small files gives a few partitions, not one per
/// file, and the number of shuffle partitions downstream follows. Unlike Spark, ranges are not
/// reordered by size: lines come out in path order.
pub(crate) fn plan_splits(files: &[PathBuf], policy: SplitPolicy) -> Result<Vec<Vec<FileSplit>>> {
    let mut sizes = Vec::with_capacity(files.len());
    for f in files {
        let m = std::fs::metadata(f).map_err(|e| Error::io(f, e))?;
        sizes.push(m.len());
    }
    let open_cost = policy.open_cost;
    let total: u64 = sizes.iter().map(|&s| s.saturating_add(open_cost)).fold(0, u64::saturating_add);
    let per_partition = total / policy.min_partitions.max(1) as u64;
    // No more ranges than the partition limit allows, whatever `min_partitions` asks for.
    let floor = total.div_ceil(crate::conf::MAX_PARTITIONS).max(1);
    let target = policy.max_partition_bytes.min(open_cost.max(per_partition)).max(floor);

    let mut ranges = Vec::new();
    for (f, &size) in files.iter().zip(&sizes) {
        if is_gzip(f) || size <= target {
            ranges.push(FileSplit { path: f.clone(), start: 0, len: size });
            continue;
        }
        let mut start = 0;
        while start < size {
            let len = target.min(size - start);
            ranges.push(FileSplit { path: f.clone(), start, len });
            start += len;
        }
    }

    let mut partitions = Vec::new();
    let mut current: Vec<FileSplit> = Vec::new();
    let mut current_size = 0u64;
    for r in ranges {
        if !current.is_empty() && current_size.saturating_add(r.len) > target {
            partitions.push(std::mem::take(&mut current));
            current_size = 0;
        }
        current_size = current_size.saturating_add(r.len).saturating_add(open_cost);
        current.push(r);
    }
    if !current.is_empty() || partitions.is_empty() {
        partitions.push(current);
    }
    Ok(partitions)
}

/// `text_file`: the lines of files; each partition reads one or more byte ranges in order.
#[derive(Serialize, Deserialize)]
pub(crate) struct TextFileRdd {
    pub(crate) partitions: Vec<Vec<FileSplit>>,
    /// Longest accepted line, in bytes without its end.
    pub(crate) max_line: u64,
}

/// Lines up to this size are read in one step and not counted in the memory budget; a longer
/// line grows its buffer by this much at a time, each step granted by the budget first.
const LINE_STEP: u64 = 1 << 20;

/// The open range of a [`LineReader`].
struct OpenRange {
    src: Box<dyn BufRead>,
    path: PathBuf,
    /// Position of the next line's first byte.
    pos: u64,
    /// Lines starting after `end` belong to the next range.
    end: u64,
}

impl OpenRange {
    fn open(split: &FileSplit) -> Result<OpenRange> {
        let p = &split.path;
        let mut f = File::open(p).map_err(|e| Error::io(p, e))?;
        if is_gzip(p) {
            let dec = flate2::read::MultiGzDecoder::new(BufReader::with_capacity(1 << 16, f));
            return Ok(OpenRange {
                src: Box::new(BufReader::with_capacity(1 << 18, dec)),
                path: p.clone(),
                pos: 0,
                end: u64::MAX,
            });
        }
        f.seek(SeekFrom::Start(split.start)).map_err(|e| Error::io(p, e))?;
        let mut range = OpenRange {
            src: Box::new(BufReader::with_capacity(1 << 18, f)),
            path: p.clone(),
            pos: split.start,
            end: split.start + split.len,
        };
        if split.start != 0 {
            // The line in progress at `start` belongs to the previous range. Skipped without
            // buffering it, however long it is.
            range.skip_line()?;
        }
        Ok(range)
    }

    fn skip_line(&mut self) -> Result<()> {
        loop {
            let avail = self.src.fill_buf().map_err(|e| Error::io(&self.path, e))?;
            if avail.is_empty() {
                return Ok(());
            }
            let (n, found) = match avail.iter().position(|&b| b == b'\n') {
                Some(i) => (i + 1, true),
                None => (avail.len(), false),
            };
            self.src.consume(n);
            self.pos += n as u64;
            if found {
                return Ok(());
            }
        }
    }
}

/// Reads the lines of a partition's byte ranges, one range after the other. A line's buffer
/// is bounded by the line limit and, past [`LINE_STEP`], counted in the task's memory budget.
struct LineReader<'a> {
    ranges: &'a [FileSplit],
    next_range: usize,
    current: Option<OpenRange>,
    max_line: u64,
    buf: Vec<u8>,
    mem: MemoryConsumer<'a>,
    tc: &'a TaskContext,
}

impl<'a> LineReader<'a> {
    fn new(ranges: &'a [FileSplit], max_line: u64, tc: &'a TaskContext) -> Self {
        LineReader { ranges, next_range: 0, current: None, max_line, buf: Vec::new(), mem: MemoryConsumer::new(tc), tc }
    }

    fn next_line(&mut self) -> Result<Option<String>> {
        loop {
            let range = match &mut self.current {
                Some(r) => r,
                None => {
                    let Some(split) = self.ranges.get(self.next_range) else {
                        return Ok(None);
                    };
                    self.next_range += 1;
                    self.current.insert(OpenRange::open(split)?)
                }
            };
            if range.pos <= range.end {
                if let Some(line) = read_line(range, &mut self.buf, self.max_line, &mut self.mem)? {
                    return Ok(Some(line));
                }
            }
            self.current = None;
        }
    }
}

/// Reads the next line of `range` (its `\n` or `\r\n` end removed), or `None` at the end of
/// the file.
fn read_line(
    range: &mut OpenRange,
    buf: &mut Vec<u8>,
    max_line: u64,
    mem: &mut MemoryConsumer,
) -> Result<Option<String>> {
    if buf.capacity() as u64 > LINE_STEP {
        // The last line was long: give its memory back.
        *buf = Vec::new();
        mem.release_all();
    }
    buf.clear();
    let line_start = range.pos;
    let too_long = || Error::LineTooLong { path: range.path.clone(), offset: line_start, limit: max_line };
    loop {
        let before = buf.len() as u64;
        if before > 0 {
            // A long line: the buffer and the string made from it must fit in the budget.
            let need = 2 * (before + LINE_STEP);
            if !mem.ensure(need) {
                return Err(Error::ResourcesExhausted(format!(
                    "a line of more than {before} bytes in {} at byte offset {line_start} does not fit in \
                     the task's share of the memory budget (ember.memory.size)",
                    range.path.display()
                )));
            }
        }
        let n = (&mut range.src).take(LINE_STEP).read_until(b'\n', buf).map_err(|e| Error::io(&range.path, e))?;
        range.pos += n as u64;
        if n == 0 || buf.last() == Some(&b'\n') {
            break;
        }
        // Without its end, the line so far is at least `len - 1` bytes (a `\r` may end it).
        if buf.len() as u64 > max_line.saturating_add(1) {
            return Err(too_long());
        }
    }
    if buf.is_empty() {
        return Ok(None);
    }
    let mut len = buf.len();
    if buf[len - 1] == b'\n' {
        len -= 1;
        if len > 0 && buf[len - 1] == b'\r' {
            len -= 1;
        }
    }
    if len as u64 > max_line {
        return Err(too_long());
    }
    match std::str::from_utf8(&buf[..len]) {
        Ok(s) => Ok(Some(s.to_owned())),
        Err(e) => Err(Error::InvalidUtf8 { path: range.path.clone(), offset: line_start + e.valid_up_to() as u64 }),
    }
}

impl Iterator for LineReader<'_> {
    type Item = String;
    fn next(&mut self) -> Option<String> {
        // Checked before every record: a relaxed load, so a killed task stops within one line.
        if self.tc.should_stop() {
            return None;
        }
        match self.next_line() {
            Ok(l) => l,
            Err(e) => {
                self.tc.fail(e);
                None
            }
        }
    }
}

impl RddImpl<String> for TextFileRdd {
    fn name(&self) -> &'static str {
        "text_file"
    }
    fn num_partitions(&self) -> usize {
        self.partitions.len()
    }
    fn dependencies(&self) -> Vec<Dependency> {
        Vec::new()
    }
    fn compute<'a>(&'a self, split: usize, tc: &'a TaskContext) -> BoxIter<'a, String> {
        let Some(ranges) = self.partitions.get(split) else {
            tc.fail(Error::Internal(format!("text file has no partition {split}")));
            return Box::new(std::iter::empty());
        };
        Box::new(LineReader::new(ranges, self.max_line, tc))
    }
}

/// `whole_text_files`: (path, content) of each file; files grouped into partitions by size.
#[derive(Serialize, Deserialize)]
pub(crate) struct WholeTextFilesRdd {
    pub(crate) groups: Vec<Vec<PathBuf>>,
}

impl WholeTextFilesRdd {
    pub(crate) fn new(files: Vec<PathBuf>, min_partitions: usize) -> Result<Self> {
        Ok(WholeTextFilesRdd { groups: group_by_size(files, min_partitions)? })
    }
}

/// Spreads whole files over `min_partitions` groups (fewer if there are fewer files), balanced
/// by size; within a group, files keep path order.
fn group_by_size(files: Vec<PathBuf>, min_partitions: usize) -> Result<Vec<Vec<PathBuf>>> {
    let n = min_partitions.max(1).min(files.len().max(1));
    let mut groups: Vec<(u64, Vec<PathBuf>)> = (0..n).map(|_| (0, Vec::new())).collect();
    let mut sized = Vec::with_capacity(files.len());
    for f in files {
        let len = std::fs::metadata(&f).map_err(|e| Error::io(&f, e))?.len();
        sized.push((len, f));
    }
    // Largest first into the lightest group keeps partitions balanced.
    sized.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    for (len, f) in sized {
        if let Some(g) = groups.iter_mut().min_by_key(|g| g.0) {
            g.0 += len;
            g.1.push(f);
        }
    }
    Ok(groups
        .into_iter()
        .map(|(_, mut g)| {
            g.sort();
            g
        })
        .collect())
}

fn read_whole(path: &Path) -> Result<(String, String)> {
    let mut bytes = Vec::new();
    let f = File::open(path).map_err(|e| Error::io(path, e))?;
    if is_gzip(path) {
        flate2::read::MultiGzDecoder::new(f).read_to_end(&mut bytes)
    } else {
        BufReader::new(f).read_to_end(&mut bytes)
    }
    .map_err(|e| Error::io(path, e))?;
    let content = String::from_utf8(bytes)
        .map_err(|e| Error::InvalidUtf8 { path: path.to_path_buf(), offset: e.utf8_error().valid_up_to() as u64 })?;
    Ok((path.display().to_string(), content))
}

impl RddImpl<(String, String)> for WholeTextFilesRdd {
    fn name(&self) -> &'static str {
        "whole_text_files"
    }
    fn num_partitions(&self) -> usize {
        self.groups.len()
    }
    fn dependencies(&self) -> Vec<Dependency> {
        Vec::new()
    }
    fn compute<'a>(&'a self, split: usize, tc: &'a TaskContext) -> BoxIter<'a, (String, String)> {
        let files = self.groups.get(split).map(Vec::as_slice).unwrap_or(&[]);
        Box::new(files.iter().map_while(move |f| tc.ok(read_whole(f))))
    }
}

/// `binary_files`: (path, bytes) of each file, files grouped into partitions by size. Files are
/// read as they are (`.gz` files are not decompressed).
#[derive(Serialize, Deserialize)]
pub(crate) struct BinaryFilesRdd {
    pub(crate) groups: Vec<Vec<PathBuf>>,
}

impl BinaryFilesRdd {
    pub(crate) fn new(files: Vec<PathBuf>, min_partitions: usize) -> Result<Self> {
        Ok(BinaryFilesRdd { groups: group_by_size(files, min_partitions)? })
    }
}

fn read_bytes(path: &Path) -> Result<(String, Vec<u8>)> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    Ok((path.display().to_string(), bytes))
}

impl RddImpl<(String, Vec<u8>)> for BinaryFilesRdd {
    fn name(&self) -> &'static str {
        "binary_files"
    }
    fn num_partitions(&self) -> usize {
        self.groups.len()
    }
    fn dependencies(&self) -> Vec<Dependency> {
        Vec::new()
    }
    fn compute<'a>(&'a self, split: usize, tc: &'a TaskContext) -> BoxIter<'a, (String, Vec<u8>)> {
        let files = self.groups.get(split).map(Vec::as_slice).unwrap_or(&[]);
        Box::new(files.iter().map_while(move |f| tc.ok(read_bytes(f))))
    }
}

/// `binary_records`: fixed-length records of files, read as they are. Partitions are the byte
/// ranges of `text_file`; a range reads the records that start inside it.
#[derive(Serialize, Deserialize)]
pub(crate) struct BinaryRecordsRdd {
    pub(crate) partitions: Vec<Vec<FileSplit>>,
    pub(crate) record_length: u64,
}

impl BinaryRecordsRdd {
    /// Plans the ranges; every file's length must be a multiple of `record_length`.
    pub(crate) fn new(files: Vec<PathBuf>, record_length: usize, policy: SplitPolicy) -> Result<Self> {
        if record_length == 0 {
            return Err(Error::InvalidArgument("binary_records: the record length must be at least 1".into()));
        }
        let k = record_length as u64;
        for f in &files {
            let len = std::fs::metadata(f).map_err(|e| Error::io(f, e))?.len();
            if len % k != 0 {
                return Err(Error::InvalidArgument(format!(
                    "binary_records: {} is {len} bytes long, not a multiple of the record length {k} \
                     ({} bytes left over)",
                    f.display(),
                    len % k
                )));
            }
        }
        // `.gz` files stay whole ranges, but are read raw like any other file.
        Ok(BinaryRecordsRdd { partitions: plan_splits(&files, policy)?, record_length: k })
    }
}

/// Reads the records starting inside a partition's ranges.
struct RecordReader<'a> {
    ranges: &'a [FileSplit],
    next_range: usize,
    k: u64,
    /// The open range: reader, path, offset of the next record, records left.
    current: Option<(BufReader<File>, &'a Path, u64, u64)>,
    tc: &'a TaskContext,
}

impl RecordReader<'_> {
    fn next_record(&mut self) -> Result<Option<Vec<u8>>> {
        loop {
            if let Some((src, path, offset, left)) = &mut self.current {
                if *left > 0 {
                    let mut rec = vec![0u8; self.k as usize];
                    src.read_exact(&mut rec).map_err(|e| match e.kind() {
                        std::io::ErrorKind::UnexpectedEof => Error::InvalidArgument(format!(
                            "binary_records: {} ends inside the record at byte offset {offset} \
                             (the file changed after the job was planned?)",
                            path.display()
                        )),
                        _ => Error::io(*path, e),
                    })?;
                    *offset += self.k;
                    *left -= 1;
                    return Ok(Some(rec));
                }
                self.current = None;
            }
            let Some(r) = self.ranges.get(self.next_range) else {
                return Ok(None);
            };
            self.next_range += 1;
            // The records whose first byte lies in [start, start + len).
            let first = r.start.div_ceil(self.k);
            let end = (r.start + r.len).div_ceil(self.k);
            let mut f = File::open(&r.path).map_err(|e| Error::io(&r.path, e))?;
            f.seek(SeekFrom::Start(first * self.k)).map_err(|e| Error::io(&r.path, e))?;
            self.current =
                Some((BufReader::with_capacity(1 << 18, f), &r.path, first * self.k, end.saturating_sub(first)));
        }
    }
}

impl Iterator for RecordReader<'_> {
    type Item = Vec<u8>;
    fn next(&mut self) -> Option<Vec<u8>> {
        // Checked before every record: a relaxed load, so a killed task stops within one line.
        if self.tc.should_stop() {
            return None;
        }
        self.tc.ok(self.next_record()).flatten()
    }
}

impl RddImpl<Vec<u8>> for BinaryRecordsRdd {
    fn name(&self) -> &'static str {
        "binary_records"
    }
    fn num_partitions(&self) -> usize {
        self.partitions.len()
    }
    fn dependencies(&self) -> Vec<Dependency> {
        Vec::new()
    }
    fn compute<'a>(&'a self, split: usize, tc: &'a TaskContext) -> BoxIter<'a, Vec<u8>> {
        let ranges = self.partitions.get(split).map(Vec::as_slice).unwrap_or(&[]);
        Box::new(RecordReader { ranges, next_range: 0, k: self.record_length, current: None, tc })
    }
}

// ---- checkpoints -----------------------------------------------------------------------------

fn checkpoint_file(dir: &Path, split: usize) -> PathBuf {
    dir.join(format!("part-{split:05}"))
}

/// Reads partitions written by `checkpoint()`.
#[derive(Serialize, Deserialize)]
#[serde(bound = "")]
pub(crate) struct CheckpointRdd<T> {
    dir: PathBuf,
    partitions: usize,
    _t: Marker<T>,
}

impl<T: Data> RddImpl<T> for CheckpointRdd<T> {
    fn name(&self) -> &'static str {
        "checkpoint"
    }
    fn num_partitions(&self) -> usize {
        self.partitions
    }
    fn dependencies(&self) -> Vec<Dependency> {
        Vec::new()
    }
    fn compute<'a>(&'a self, split: usize, tc: &'a TaskContext) -> BoxIter<'a, T> {
        let path = checkpoint_file(&self.dir, split);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) => {
                tc.fail(Error::io(&path, e));
                return Box::new(std::iter::empty());
            }
        };
        let mut dec = ChunkDecoder::<_, T>::new(BufReader::new(file), &path);
        Box::new(std::iter::from_fn(move || tc.ok(dec.next_record()).flatten()))
    }
}

/// Writes a partition to a checkpoint file (temporary name, then renamed).
#[derive(Serialize, Deserialize)]
#[serde(bound = "")]
pub(crate) struct CheckpointWriteFn<T> {
    dir: PathBuf,
    _t: Marker<T>,
}

impl<T: Data> PartitionFn<T, u64> for CheckpointWriteFn<T> {
    fn call(&self, tc: &TaskContext, split: usize, it: BoxIter<'_, T>) -> Result<u64> {
        let path = checkpoint_file(&self.dir, split);
        let tmp = path.with_extension(format!("tmp-{}", tc.task_attempt_id));
        let f = File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
        // From here on, any early return removes the temporary file.
        let mut cleanup = RemoveOnDrop::new(tmp.clone());
        let mut w = StreamWriter::new(std::io::BufWriter::new(f), tc.env().codec, &tmp);
        let mut n = 0;
        for x in it {
            w.write(&x)?;
            n += 1;
        }
        if let Some(e) = tc.take_error() {
            return Err(e);
        }
        w.finish()?;
        std::fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))?;
        cleanup.disarm();
        Ok(n)
    }
}

/// Writes every partition of `rdd` into `dir`; if the job fails, `dir` is removed.
pub(crate) fn write_checkpoint<T: Data>(ctx: &Context, rdd: &Rdd<T>, dir: &Path) -> Result<CheckpointRdd<T>> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let mut cleanup = RemoveOnDrop::new(dir.to_path_buf());
    let f = Ship::new(CheckpointWriteFn::<T> { dir: dir.to_path_buf(), _t: PhantomData });
    ctx.run_job(rdd, f, None)?;
    cleanup.disarm();
    Ok(CheckpointRdd { dir: dir.to_path_buf(), partitions: rdd.num_partitions(), _t: PhantomData })
}
