//! Text output with a commit protocol in the manner of Hadoop's `FileOutputCommitter`.
//!
//! ```text
//! <out>/                                  claimed by create_dir: fails if it exists
//!   _temporary/attempt-<id>/part-NNNNN    a task attempt writes and fsyncs here
//!   _temporary/committed/part-NNNNN       task commit: rename of the attempt's file
//!   part-NNNNN                            job commit: renames, directory fsync,
//!   _SUCCESS                              then the marker, written last
//! ```
//!
//! A failed or cancelled attempt removes its own directory; whatever a lost attempt left behind
//! goes with `_temporary` at job commit; a failed job removes `<out>` entirely.

use std::fmt::Display;
use std::fs::File;
use std::io::Write;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::actions::PartitionFn;
use super::Rdd;
use crate::data::Data;
use crate::error::{Error, Result};
use crate::ship::{Marker, Ship};
use crate::task::{BoxIter, TaskContext};

/// Compression of text output files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TextCodec {
    /// Plain text: `part-NNNNN`.
    None,
    /// gzip: `part-NNNNN.gz`, which `text_file` decompresses when reading.
    Gzip,
}

impl TextCodec {
    /// The file name extension this codec's files carry (with its dot), empty for none.
    pub fn extension(self) -> &'static str {
        match self {
            TextCodec::None => "",
            TextCodec::Gzip => ".gz",
        }
    }
}

const TEMPORARY: &str = "_temporary";
const COMMITTED: &str = "committed";

fn part_name(split: usize, codec: TextCodec) -> String {
    format!("part-{split:05}{}", codec.extension())
}

/// Removes a path when dropped, unless disarmed: temporary files and directories go away on
/// every error path, early returns included.
pub(crate) struct RemoveOnDrop {
    path: Option<PathBuf>,
}

impl RemoveOnDrop {
    pub(crate) fn new(path: PathBuf) -> Self {
        RemoveOnDrop { path: Some(path) }
    }

    /// Keeps the path.
    pub(crate) fn disarm(&mut self) {
        self.path = None;
    }
}

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(p) = self.path.take() {
            // Best effort: the error that made us clean up is the one worth reporting.
            let _ = if p.is_dir() { std::fs::remove_dir_all(&p) } else { std::fs::remove_file(&p) };
        }
    }
}

/// Flushes and fsyncs a directory so that renames into it survive a crash.
fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| Error::io(dir, e))
}

/// The task side: writes a partition into the attempt's directory, then commits it.
#[derive(Serialize, Deserialize)]
#[serde(bound = "")]
struct SaveTextFn<T> {
    out: PathBuf,
    codec: TextCodec,
    _t: Marker<T>,
}

impl<T: Data + Display> SaveTextFn<T> {
    fn write(&self, tc: &TaskContext, file: &Path, it: BoxIter<'_, T>) -> Result<u64> {
        let f = File::create(file).map_err(|e| Error::io(file, e))?;
        let buffered = std::io::BufWriter::with_capacity(1 << 18, f);
        let mut w: Box<dyn Write> = match self.codec {
            TextCodec::None => Box::new(buffered),
            TextCodec::Gzip => Box::new(flate2::write::GzEncoder::new(buffered, flate2::Compression::default())),
        };
        let mut n = 0u64;
        for x in it {
            writeln!(w, "{x}").map_err(|e| Error::io(file, e))?;
            n += 1;
        }
        if let Some(e) = tc.take_error() {
            return Err(e);
        }
        w.flush().map_err(|e| Error::io(file, e))?;
        drop(w); // finishes the gzip stream
        File::open(file).and_then(|f| f.sync_all()).map_err(|e| Error::io(file, e))?;
        Ok(n)
    }
}

impl<T: Data + Display> PartitionFn<T, u64> for SaveTextFn<T> {
    fn call(&self, tc: &TaskContext, split: usize, it: BoxIter<'_, T>) -> Result<u64> {
        let temporary = self.out.join(TEMPORARY);
        let attempt = temporary.join(format!("attempt-{}", tc.task_attempt_id));
        // `create_dir`, not `create_dir_all`: when the job is over and `_temporary` is gone, a
        // late attempt must not bring it back.
        std::fs::create_dir(&attempt).map_err(|e| Error::io(&attempt, e))?;
        // The attempt's directory goes away whether the attempt commits or fails.
        let _attempt_dir = RemoveOnDrop::new(attempt.clone());
        let name = part_name(split, self.codec);
        let file = attempt.join(&name);
        let n = self.write(tc, &file, it)?;
        // Task commit. Two attempts of one task write the same records, so if both commit the
        // second rename replaces an identical file.
        let committed = temporary.join(COMMITTED).join(&name);
        std::fs::rename(&file, &committed).map_err(|e| Error::io(&committed, e))?;
        Ok(n)
    }
}

/// Claims `out` by creating it (an existing path is an error, and two writers cannot both
/// succeed), runs the job, and commits it; on failure `out` is removed entirely.
pub(crate) fn save_text<T: Data + Display>(rdd: &Rdd<T>, out: &Path, codec: TextCodec) -> Result<()> {
    let ctx = rdd.context()?;
    // Absolute, as the driver resolves it: executors run in directories of their own.
    let out = &std::path::absolute(out).map_err(|e| Error::io(out, e))?;
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    }
    match std::fs::create_dir(out) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Err(Error::OutputExists(out.to_path_buf())),
        Err(e) => return Err(Error::io(out, e)),
    }
    let mut cleanup = RemoveOnDrop::new(out.to_path_buf());
    let temporary = out.join(TEMPORARY);
    let committed = temporary.join(COMMITTED);
    std::fs::create_dir_all(&committed).map_err(|e| Error::io(&committed, e))?;
    let f = Ship::new(SaveTextFn::<T> { out: out.to_path_buf(), codec, _t: PhantomData });
    ctx.run_job(rdd, f, None)?;
    // Job commit: every partition committed exactly once, moved into place, made durable,
    // then marked complete.
    for split in 0..rdd.num_partitions() {
        let name = part_name(split, codec);
        let from = committed.join(&name);
        let to = out.join(&name);
        std::fs::rename(&from, &to).map_err(|e| Error::io(&from, e))?;
    }
    std::fs::remove_dir_all(&temporary).map_err(|e| Error::io(&temporary, e))?;
    sync_dir(out)?;
    let marker = out.join("_SUCCESS");
    File::create(&marker).and_then(|f| f.sync_all()).map_err(|e| Error::io(&marker, e))?;
    sync_dir(out)?;
    cleanup.disarm();
    Ok(())
}
