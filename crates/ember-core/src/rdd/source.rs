//! Source RDDs: in-memory collections, ranges, text files, whole files, checkpoints.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::actions::PartitionFn;
use super::{Dependency, Rdd, RddImpl};
use crate::context::Context;
use crate::data::Data;
use crate::error::{Error, Result};
use crate::ship::{Marker, Ship};
use crate::stream::{ChunkDecoder, StreamWriter};
use crate::task::{BoxIter, Interruptible, TaskContext};

/// `parallelize`: a local collection cut into slices.
#[derive(Serialize, Deserialize)]
#[serde(bound = "T: Data")]
pub(crate) struct ParallelCollection<T> {
    slices: Arc<Vec<Vec<T>>>,
}

impl<T: Data> ParallelCollection<T> {
    pub(crate) fn new(data: Vec<T>, slices: usize) -> Self {
        let n = slices.max(1);
        let len = data.len();
        let mut out: Vec<Vec<T>> = Vec::with_capacity(n);
        let mut it = data.into_iter();
        for i in 0..n {
            let start = i * len / n;
            let end = (i + 1) * len / n;
            out.push(it.by_ref().take(end - start).collect());
        }
        ParallelCollection { slices: Arc::new(out) }
    }
}

impl<T: Data> RddImpl<T> for ParallelCollection<T> {
    fn name(&self) -> &'static str {
        "parallelize"
    }
    fn num_partitions(&self) -> usize {
        self.slices.len()
    }
    fn dependencies(&self) -> Vec<Dependency> {
        Vec::new()
    }
    fn compute<'a>(&'a self, split: usize, tc: &'a TaskContext) -> BoxIter<'a, T> {
        let slice = self.slices.get(split).map(Vec::as_slice).unwrap_or(&[]);
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

/// Resolves a path, directory or glob into the sorted list of files it names. Hidden files
/// (`.name`, `_name`) inside directories are skipped, as Hadoop input formats do.
pub(crate) fn resolve_input(path: &str) -> Result<Vec<PathBuf>> {
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
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct FileSplit {
    pub(crate) path: PathBuf,
    pub(crate) start: u64,
    pub(crate) len: u64,
}

/// Local file systems report no block size; Spark uses 32 MiB for them.
const MAX_SPLIT: u64 = 32 << 20;

/// Cuts files into splits of about `total / min_partitions` bytes (at most 32 MiB). Gzip files
/// cannot be split and give one split each.
pub(crate) fn plan_splits(files: &[PathBuf], min_partitions: usize) -> Result<Vec<FileSplit>> {
    let mut sizes = Vec::with_capacity(files.len());
    for f in files {
        let m = std::fs::metadata(f).map_err(|e| Error::io(f, e))?;
        sizes.push(m.len());
    }
    let total: u64 = sizes.iter().sum();
    let goal = (total / min_partitions.max(1) as u64).max(1);
    let split = goal.clamp(1 << 10, MAX_SPLIT);
    let mut out = Vec::new();
    for (f, &size) in files.iter().zip(&sizes) {
        if is_gzip(f) || size == 0 {
            out.push(FileSplit { path: f.clone(), start: 0, len: size });
            continue;
        }
        let mut start = 0;
        // Like Hadoop, let the last split run up to 10% over rather than leave a sliver.
        while (size - start) as f64 / split as f64 > 1.1 {
            out.push(FileSplit { path: f.clone(), start, len: split });
            start += split;
        }
        out.push(FileSplit { path: f.clone(), start, len: size - start });
    }
    Ok(out)
}

/// `text_file`: the lines of files, one partition per split.
#[derive(Serialize, Deserialize)]
pub(crate) struct TextFileRdd {
    pub(crate) splits: Vec<FileSplit>,
}

struct LineReader<'a> {
    src: Box<dyn BufRead>,
    path: PathBuf,
    /// Position of the next line's first byte.
    pos: u64,
    /// Lines starting after `end` belong to the next split.
    end: u64,
    buf: Vec<u8>,
    tc: &'a TaskContext,
    n: u32,
}

impl LineReader<'_> {
    fn open<'a>(split: &FileSplit, tc: &'a TaskContext) -> Result<LineReader<'a>> {
        let p = &split.path;
        let mut f = File::open(p).map_err(|e| Error::io(p, e))?;
        if is_gzip(p) {
            let dec = flate2::read::MultiGzDecoder::new(BufReader::with_capacity(1 << 16, f));
            return Ok(LineReader {
                src: Box::new(BufReader::with_capacity(1 << 18, dec)),
                path: p.clone(),
                pos: 0,
                end: u64::MAX,
                buf: Vec::new(),
                tc,
                n: 0,
            });
        }
        f.seek(SeekFrom::Start(split.start)).map_err(|e| Error::io(p, e))?;
        let mut src: Box<dyn BufRead> = Box::new(BufReader::with_capacity(1 << 18, f));
        let mut pos = split.start;
        if split.start != 0 {
            // The line in progress at `start` belongs to the previous split.
            let mut skip = Vec::new();
            pos += src.read_until(b'\n', &mut skip).map_err(|e| Error::io(p, e))? as u64;
        }
        Ok(LineReader { src, path: p.clone(), pos, end: split.start + split.len, buf: Vec::new(), tc, n: 0 })
    }

    fn next_line(&mut self) -> Result<Option<String>> {
        if self.pos > self.end {
            return Ok(None);
        }
        self.buf.clear();
        let n = self.src.read_until(b'\n', &mut self.buf).map_err(|e| Error::io(&self.path, e))?;
        if n == 0 {
            return Ok(None);
        }
        let line_start = self.pos;
        self.pos += n as u64;
        let mut len = self.buf.len();
        if self.buf[len - 1] == b'\n' {
            len -= 1;
            if len > 0 && self.buf[len - 1] == b'\r' {
                len -= 1;
            }
        }
        match std::str::from_utf8(&self.buf[..len]) {
            Ok(s) => Ok(Some(s.to_owned())),
            Err(e) => Err(Error::InvalidUtf8 { path: self.path.clone(), offset: line_start + e.valid_up_to() as u64 }),
        }
    }
}

impl Iterator for LineReader<'_> {
    type Item = String;
    fn next(&mut self) -> Option<String> {
        self.n = self.n.wrapping_add(1);
        if self.n & 1023 == 0 && self.tc.should_stop() {
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
        self.splits.len()
    }
    fn dependencies(&self) -> Vec<Dependency> {
        Vec::new()
    }
    fn compute<'a>(&'a self, split: usize, tc: &'a TaskContext) -> BoxIter<'a, String> {
        let Some(s) = self.splits.get(split) else {
            tc.fail(Error::Internal(format!("text file has no split {split}")));
            return Box::new(std::iter::empty());
        };
        match LineReader::open(s, tc) {
            Ok(r) => Box::new(r),
            Err(e) => {
                tc.fail(e);
                Box::new(std::iter::empty())
            }
        }
    }
}

/// `whole_text_files`: (path, content) of each file; files grouped into partitions by size.
#[derive(Serialize, Deserialize)]
pub(crate) struct WholeTextFilesRdd {
    pub(crate) groups: Vec<Vec<PathBuf>>,
}

impl WholeTextFilesRdd {
    pub(crate) fn new(files: Vec<PathBuf>, min_partitions: usize) -> Result<Self> {
        let n = min_partitions.max(1).min(files.len().max(1));
        let mut groups: Vec<(u64, Vec<PathBuf>)> = (0..n).map(|_| (0, Vec::new())).collect();
        let mut sized = Vec::with_capacity(files.len());
        for f in files {
            let len = std::fs::metadata(&f).map_err(|e| Error::io(&f, e))?.len();
            sized.push((len, f));
        }
        // Largest first into the lightest group keeps partitions balanced; order within a group
        // follows the path order.
        sized.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        for (len, f) in sized {
            if let Some(g) = groups.iter_mut().min_by_key(|g| g.0) {
                g.0 += len;
                g.1.push(f);
            }
        }
        Ok(WholeTextFilesRdd {
            groups: groups
                .into_iter()
                .map(|(_, mut g)| {
                    g.sort();
                    g
                })
                .collect(),
        })
    }
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
        let mut w = StreamWriter::new(std::io::BufWriter::new(f), tc.env().codec, &tmp);
        let mut n = 0;
        for x in it {
            w.write(&x)?;
            n += 1;
        }
        if let Some(e) = tc.take_error() {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        w.finish()?;
        std::fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))?;
        Ok(n)
    }
}

pub(crate) fn write_checkpoint<T: Data>(ctx: &Context, rdd: &Rdd<T>, dir: &Path) -> Result<CheckpointRdd<T>> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let f = Ship::new(CheckpointWriteFn::<T> { dir: dir.to_path_buf(), _t: PhantomData });
    ctx.run_job(rdd, f, None)?;
    Ok(CheckpointRdd { dir: dir.to_path_buf(), partitions: rdd.num_partitions(), _t: PhantomData })
}
