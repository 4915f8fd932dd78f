//! What an RDD knows about itself: its user-given name, the printed lineage
//! (`to_debug_string`) and local checkpoints, which truncate the lineage onto cached blocks.

use std::marker::PhantomData;

use serde::{Deserialize, Serialize};

use super::actions::PartitionFn;
use super::{Dependency, Rdd, RddBase, RddImpl};
use crate::data::Data;
use crate::error::{Error, Result};
use crate::ship::{Marker, Ship};
use crate::storage::{BlockId, RddId, StorageLevel};
use crate::task::{BoxIter, TaskContext};

/// `ember_core::rdd::narrow::PipeRdd<i32, ..>` → `PipeRdd`.
pub(crate) fn short_type_name(full: &'static str) -> &'static str {
    let base = full.split('<').next().unwrap_or(full);
    base.rsplit("::").next().unwrap_or(base)
}

impl StorageLevel {
    /// Spark's description of a storage level, as `to_debug_string` prints it
    /// (`Memory Deserialized 1x Replicated`, `Disk Serialized 1x Replicated`, ...). Empty for
    /// `None`.
    pub fn description(self) -> String {
        if self == StorageLevel::None {
            return String::new();
        }
        let mut s = String::new();
        if self.use_disk() {
            s.push_str("Disk ");
        }
        if self.use_memory() {
            s.push_str("Memory ");
        }
        s.push_str(if self.deserialized() { "Deserialized " } else { "Serialized " });
        s.push_str(&format!("{}x Replicated", self.replication()));
        s
    }
}

/// Spark's `Utils.bytesToString`: the largest binary unit the size holds at least twice.
fn bytes_to_string(size: u64) -> String {
    const UNITS: [(u64, &str); 5] =
        [(1 << 50, "PiB"), (1 << 40, "TiB"), (1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")];
    for (unit, name) in UNITS {
        if size >= 2 * unit {
            return format!("{:.1} {name}", size as f64 / unit as f64);
        }
    }
    format!("{size}.0 B")
}

/// The lines describing one RDD, without its parents: the label with its storage level, and for
/// a persisted RDD with cached partitions, what they hold.
fn debug_self(rdd: &dyn RddBase) -> Vec<String> {
    let level = rdd.storage_level();
    let mut lines = vec![format!("{} [{}]", rdd.debug_label(), level.description())];
    if level != StorageLevel::None {
        if let Some(ctx) = rdd.context() {
            let (mut n, mut mem, mut disk) = (0, 0, 0);
            for b in ctx.storage_status().blocks {
                let BlockId::Rdd { rdd: id, .. } = b.id;
                if id == rdd.id() {
                    n += 1;
                    mem += b.memory_bytes;
                    disk += b.disk_bytes;
                }
            }
            if n > 0 {
                lines.push(format!(
                    "    CachedPartitions: {n}; MemorySize: {}; DiskSize: {}",
                    bytes_to_string(mem),
                    bytes_to_string(disk)
                ));
            }
        }
    }
    lines
}

/// The parents of `rdd`, the last one marked as such (it draws no continuing `|`).
fn debug_children(rdd: &dyn RddBase, prefix: &str, out: &mut Vec<String>) {
    let deps = rdd.dependencies();
    let len = deps.len();
    for (i, dep) in deps.into_iter().enumerate() {
        let last = i + 1 == len;
        match dep {
            Dependency::Narrow(parent) => debug_narrow(&*parent, prefix, out),
            Dependency::Shuffle(shuffle) => {
                if let Some(parent) = shuffle.parent() {
                    debug_shuffle(&*parent, prefix, last, out);
                }
            }
        }
    }
}

/// `(n)` and the prefix that continues below it: a `|` under the middle of `(n)`.
fn partition_column(rdd: &dyn RddBase) -> (String, String) {
    let ps = format!("({})", rdd.num_partitions());
    let left = (ps.len() - 1) / 2;
    let next = format!("{}|{}", " ".repeat(left), " ".repeat(ps.len() - left));
    (ps, next)
}

/// A parent in the same stage: its lines under the same prefix.
fn debug_narrow(rdd: &dyn RddBase, prefix: &str, out: &mut Vec<String>) {
    out.extend(debug_self(rdd).into_iter().map(|l| format!("{prefix}{l}")));
    debug_children(rdd, prefix, out);
}

/// A parent across a shuffle, i.e. in an earlier stage: `+-(n)` and one more level of indent.
fn debug_shuffle(rdd: &dyn RddBase, prefix: &str, last: bool, out: &mut Vec<String>) {
    let (ps, column) = partition_column(rdd);
    // Spark drops the parent's trailing `|` (and the spaces after it) before `+-`.
    let trimmed = prefix.trim_end();
    let this_prefix = match trimmed.strip_suffix('|') {
        Some(t) if trimmed.len() < prefix.len() => t,
        _ => prefix,
    };
    let next = format!("{this_prefix}{}{column}", if last { "  " } else { "| " });
    for (i, line) in debug_self(rdd).into_iter().enumerate() {
        out.push(if i == 0 { format!("{this_prefix}+-{ps} {line}") } else { format!("{next}{line}") });
    }
    debug_children(rdd, &next, out);
}

/// The level a local checkpoint keeps its blocks at: `level`, spilling to disk rather than
/// dropping blocks on eviction (Spark's `LocalRDDCheckpointData.transformStorageLevel`).
pub(super) fn with_disk(level: StorageLevel) -> StorageLevel {
    match level {
        StorageLevel::None | StorageLevel::MemoryOnly => StorageLevel::MemoryAndDisk,
        StorageLevel::MemoryOnlySer => StorageLevel::MemoryAndDiskSer,
        StorageLevel::MemoryOnly2 => StorageLevel::MemoryAndDisk2,
        StorageLevel::MemoryOnlySer2 => StorageLevel::MemoryAndDiskSer2,
        other => other,
    }
}

/// Reads the cached blocks of a locally checkpointed RDD; a missing block is an error since the
/// lineage to recompute it is gone.
#[derive(Serialize, Deserialize)]
#[serde(bound = "")]
pub(crate) struct LocalCheckpointRdd<T> {
    rdd: RddId,
    partitions: usize,
    _t: Marker<T>,
}

impl<T: Data> RddImpl<T> for LocalCheckpointRdd<T> {
    fn name(&self) -> &'static str {
        "local_checkpoint"
    }
    fn num_partitions(&self) -> usize {
        self.partitions
    }
    fn dependencies(&self) -> Vec<Dependency> {
        Vec::new()
    }
    fn compute<'a>(&'a self, split: usize, tc: &'a TaskContext) -> BoxIter<'a, T> {
        match tc.env().blocks.get::<T>(&BlockId::Rdd { rdd: self.rdd, split }, tc) {
            Ok(Some(it)) => it,
            Ok(None) => {
                tc.fail(Error::LocalCheckpointLost { rdd: self.rdd.0, split });
                Box::new(std::iter::empty())
            }
            Err(e) => {
                tc.fail(e);
                Box::new(std::iter::empty())
            }
        }
    }
}

/// Computes (and so caches) a partition, returning its size.
#[derive(Serialize, Deserialize)]
#[serde(bound = "")]
struct MaterializeFn<T>(Marker<T>);

impl<T: Data> PartitionFn<T, u64> for MaterializeFn<T> {
    fn call(&self, _: &TaskContext, _: usize, it: BoxIter<'_, T>) -> Result<u64> {
        Ok(it.count() as u64)
    }
}

impl<T: Data> Rdd<T> {
    /// The name given with [`Rdd::set_name`].
    pub fn name(&self) -> Option<String> {
        self.node.name.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Names this RDD (shown by [`Rdd::to_debug_string`]). Returns the same RDD.
    pub fn set_name(&self, name: impl Into<String>) -> Rdd<T> {
        *self.node.name.lock().unwrap_or_else(|p| p.into_inner()) = Some(name.into());
        self.clone()
    }

    /// The lineage as Spark prints it: one line per RDD, `(partitions) [name ]Kind[id] at
    /// operation [storage level]`, parents indented below their child. A parent across a
    /// shuffle dependency — a stage boundary — starts with `+-` and indents one level more:
    ///
    /// ```text
    /// (2) PipeRdd[3] at map []
    ///  |  AggregatedRdd[2] at reduce_by_key []
    ///  +-(4) PipeRdd[1] at map []
    ///     |  ParallelCollection[0] at parallelize []
    /// ```
    ///
    /// A persisted RDD shows its level (`[Memory Deserialized 1x Replicated]`) and, once
    /// partitions are cached, a `CachedPartitions: ..` line.
    pub fn to_debug_string(&self) -> String {
        let base = self.as_base();
        let (ps, next) = partition_column(&*base);
        let mut out = Vec::new();
        for (i, line) in debug_self(&*base).into_iter().enumerate() {
            out.push(if i == 0 { format!("{ps} {line}") } else { format!("{next} {line}") });
        }
        debug_children(&*base, &next, &mut out);
        out.join("\n")
    }

    /// Whether [`Rdd::local_checkpoint`] truncated this RDD's lineage.
    pub fn is_locally_checkpointed(&self) -> bool {
        let source = self.node.source();
        source.checkpointed && source.imp.downcast_ref::<LocalCheckpointRdd<T>>().is_some()
    }

    /// Truncates the lineage onto cached blocks (Spark's `localCheckpoint`), without a
    /// checkpoint directory: the RDD is persisted at a level that survives eviction (memory
    /// levels gain disk, as in Spark), every partition is computed now (one job), and later
    /// computations read the cached blocks instead of recomputing parents.
    ///
    /// This trades fault tolerance for speed: if a block is lost (the RDD is unpersisted, or
    /// its executor goes), reading it fails with [`Error::LocalCheckpointLost`] since the
    /// lineage to rebuild it is gone. As with [`Rdd::checkpoint`], the lineage is released once
    /// every block is cached: ancestors the program holds no other handle on go, with their
    /// cached blocks and shuffle outputs. Does nothing on an RDD already checkpointed.
    pub fn local_checkpoint(&self) -> Result<()> {
        let _writing = self.node.checkpoint_guard()?;
        if self.is_checkpointed() {
            return Ok(());
        }
        self.force_level(with_disk(self.storage_level()));
        let ctx = self.context()?.clone();
        ctx.run_job(self, Ship::new(MaterializeFn::<T>(PhantomData)), None)?;
        let n = self.num_partitions();
        if !ctx.env().blocks.has_all(self.id(), n) {
            return Err(Error::ResourcesExhausted(format!(
                "local_checkpoint: not every partition of rdd {} could be cached (memory and disk)",
                self.id().0
            )));
        }
        self.node.truncate(Ship::new(LocalCheckpointRdd::<T> { rdd: self.id(), partitions: n, _t: PhantomData }));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_and_sizes() {
        assert_eq!(short_type_name("a::b::PipeRdd<i32, c::D<u8>>"), "PipeRdd");
        assert_eq!(short_type_name("Plain"), "Plain");
        assert_eq!(bytes_to_string(100), "100.0 B");
        assert_eq!(bytes_to_string(4096), "4.0 KiB");
        // A unit is used from twice its size, as Spark does.
        assert_eq!(bytes_to_string(1500), "1500.0 B");
        assert_eq!(bytes_to_string(3 << 20), "3.0 MiB");
        assert_eq!(StorageLevel::MemoryAndDisk.description(), "Disk Memory Deserialized 1x Replicated");
        assert_eq!(StorageLevel::DiskOnly.description(), "Disk Serialized 1x Replicated");
    }
}
