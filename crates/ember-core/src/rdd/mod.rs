//! Resilient distributed datasets: the typed handle [`Rdd`], the node traits behind it, and the
//! dependency graph the scheduler cuts into stages.
//!
//! An `Rdd<T>` is a cheap handle on a node of the lineage graph. Each node implements
//! [`RddImpl`](crate::rdd::RddImpl) (how to compute a partition from its parents) and is wrapped in a
//! [`Ship`](crate::ship::Ship) so that it can be encoded into a task. The handle adds what every
//! RDD has: an id, a storage level and the source of its partitions — its lineage node, until a
//! checkpoint replaces (and releases) it.

mod actions;
mod approx;
mod cut;
mod decoded;
mod keyed;
mod lineage;
mod more_actions;
mod narrow;
mod numeric;
mod output;
mod pair;
mod pipe;
mod sampling;
mod setops;
mod source;
mod transform;
mod tree;

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::context::Context;
use crate::data::Data;
use crate::error::{Error, Result};
use crate::ship::{Ship, Upcast};
use crate::shuffle::ShuffleDepBase;
use crate::storage::{RddId, StorageLevel};
use crate::task::{BoxIter, Interruptible, TaskContext};

#[cfg(test)]
pub(crate) use actions::CountFn;
pub use actions::{CollectPartition, PartitionFn, StatCounter, ToF64};
pub(crate) use cut::{with_cut, CutNode, FetchedLineages};
pub use cut::{Lineages, RemoteLineage};
pub use more_actions::LocalIterator;
pub use numeric::OrderedF64;
pub use output::TextCodec;
pub(crate) use source::{plan_splits, resolve_input, ParallelCollection, SplitPolicy};

pub(crate) fn source_range(start: i64, end: i64, step: i64, slices: usize) -> source::RangeRdd {
    source::RangeRdd { start, end, step, slices }
}

pub(crate) fn source_empty<T: Data>() -> source::EmptyRdd<T> {
    source::EmptyRdd(std::marker::PhantomData)
}

pub(crate) fn source_union<T: Data>(parents: Vec<Rdd<T>>) -> narrow::UnionRdd<T> {
    narrow::UnionRdd::new(parents)
}

pub(crate) fn source_text(partitions: Vec<Vec<source::FileSplit>>, max_line: u64) -> source::TextFileRdd {
    source::TextFileRdd { partitions, max_line }
}

pub(crate) fn source_whole_files(
    files: Vec<std::path::PathBuf>,
    min_partitions: usize,
) -> Result<source::WholeTextFilesRdd> {
    source::WholeTextFilesRdd::new(files, min_partitions)
}

pub(crate) fn source_binary_files(
    files: Vec<std::path::PathBuf>,
    min_partitions: usize,
) -> Result<source::BinaryFilesRdd> {
    source::BinaryFilesRdd::new(files, min_partitions)
}

pub(crate) fn source_binary_records(
    files: Vec<std::path::PathBuf>,
    record_length: usize,
    policy: SplitPolicy,
) -> Result<source::BinaryRecordsRdd> {
    source::BinaryRecordsRdd::new(files, record_length, policy)
}

static NEXT_RDD_ID: AtomicU64 = AtomicU64::new(0);

/// A dependency of an RDD on a parent.
#[derive(Clone)]
pub enum Dependency {
    /// Each child partition depends on a bounded set of parent partitions: pipelined into the
    /// same stage.
    Narrow(Arc<dyn RddBase>),
    /// Child partitions depend on all parent partitions through a shuffle: a stage boundary.
    Shuffle(Arc<dyn ShuffleDepBase>),
}

impl fmt::Debug for Dependency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dependency::Narrow(r) => write!(f, "Narrow(rdd {})", r.id().0),
            Dependency::Shuffle(s) => write!(f, "Shuffle({})", s.shuffle_id().0),
        }
    }
}

/// How to compute the partitions of one kind of RDD node from its parents.
pub trait RddImpl<T>: Send + Sync + 'static {
    /// A short name of the operation (`map`, `reduce_by_key`, ...), shown in stage names.
    fn name(&self) -> &'static str;
    /// The number of partitions.
    fn num_partitions(&self) -> usize;
    /// Dependencies on parent RDDs.
    fn dependencies(&self) -> Vec<Dependency>;
    /// Computes one partition. Errors are recorded with [`TaskContext::fail`].
    fn compute<'a>(&'a self, split: usize, tc: &'a TaskContext) -> BoxIter<'a, T>;
    /// The node's kind as shown by [`Rdd::to_debug_string`]: by default the implementing
    /// type's name without its path or type parameters (`PipeRdd`, `ShuffledRdd`, ...).
    fn kind(&self) -> &'static str {
        lineage::short_type_name(std::any::type_name::<Self>())
    }
}

impl<T: 'static, R: RddImpl<T>> Upcast<dyn RddImpl<T>> for R {
    fn upcast(this: Arc<Self>) -> Arc<dyn RddImpl<T>> {
        this
    }
}

/// The untyped view of an RDD that the scheduler works with.
pub trait RddBase: Send + Sync {
    /// The RDD's id.
    fn id(&self) -> RddId;
    /// A short description, e.g. `map at rdd 3`.
    fn describe(&self) -> String;
    /// The number of partitions.
    fn num_partitions(&self) -> usize;
    /// Dependencies (none once checkpointed).
    fn dependencies(&self) -> Vec<Dependency>;
    /// The storage level.
    fn storage_level(&self) -> StorageLevel;
    /// One line of [`Rdd::to_debug_string`], without partition count or storage level:
    /// `[name ]Kind[id] at operation`.
    fn debug_label(&self) -> String;
    /// The driver context, when this node was built on the driver.
    fn context(&self) -> Option<&Context>;
}

/// Where a node's partitions come from.
struct Source<T> {
    /// The node implementation: the lineage node, or the checkpoint that replaced it.
    imp: Arc<Ship<dyn RddImpl<T>>>,
    /// Whether `imp` is a checkpoint (reliable or local). Once it is, it is never replaced.
    checkpointed: bool,
}

impl<T> Clone for Source<T> {
    fn clone(&self) -> Self {
        Source { imp: self.imp.clone(), checkpointed: self.checkpointed }
    }
}

struct Node<T> {
    id: RddId,
    ctx: Option<Context>,
    /// The lineage node until a checkpoint replaces it. Replacing it drops the node's reference
    /// to the lineage (and so to its parents, their cached blocks and shuffle outputs); whoever
    /// computes from the source holds its own reference (see [`Rdd::iterator`]).
    source: Mutex<Source<T>>,
    level: Mutex<StorageLevel>,
    /// The user-given name (`set_name`); driver side only, not encoded.
    name: Mutex<Option<String>>,
    /// Held while a checkpoint of this node is written, so that concurrent `checkpoint` calls
    /// write it once (the others wait, then find it checkpointed).
    checkpointing: Mutex<()>,
}

impl<T: Data> Node<T> {
    /// One checkpoint of this node at a time (a panic while writing one poisons nothing that
    /// matters: the next caller checks the source again).
    ///
    /// Inside a task it is refused before the lock is taken: a task of the job writing this
    /// checkpoint would otherwise wait for that job, which waits for the task.
    fn checkpoint_guard(&self) -> Result<std::sync::MutexGuard<'_, ()>> {
        if crate::scheduler::in_task_thread() {
            return Err(Error::InvalidArgument(
                "checkpoints are written from the driver, not inside another RDD's function".into(),
            ));
        }
        Ok(self.checkpointing.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn new(
        id: RddId,
        ctx: Option<Context>,
        imp: Ship<dyn RddImpl<T>>,
        checkpointed: bool,
        level: StorageLevel,
    ) -> Self {
        Node {
            id,
            ctx,
            source: Mutex::new(Source { imp: Arc::new(imp), checkpointed }),
            level: Mutex::new(level),
            name: Mutex::new(None),
            checkpointing: Mutex::new(()),
        }
    }

    fn source_slot(&self) -> MutexGuard<'_, Source<T>> {
        self.source.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The current source, held by the caller: a checkpoint taken meanwhile cannot release it.
    fn source(&self) -> Source<T> {
        self.source_slot().clone()
    }

    /// The node implementation partitions are computed by: the checkpoint once there is one.
    fn effective(&self) -> Arc<Ship<dyn RddImpl<T>>> {
        self.source().imp
    }

    /// Makes `checkpoint` the source and releases the lineage it replaces. Does nothing when the
    /// node is already checkpointed (a concurrent checkpoint finished first).
    fn truncate(&self, checkpoint: Ship<dyn RddImpl<T>>) {
        let lineage = {
            let mut slot = self.source_slot();
            if slot.checkpointed {
                return;
            }
            std::mem::replace(&mut *slot, Source { imp: Arc::new(checkpoint), checkpointed: true })
        };
        // Dropped outside the lock: the last reference to the lineage drops parent nodes (removing
        // their cached blocks) and shuffle dependencies (removing their outputs). Tasks still
        // computing from it hold their own references and release them when they end.
        drop(lineage);
    }
}

impl<T: Data> RddBase for Node<T> {
    fn id(&self) -> RddId {
        self.id
    }
    fn describe(&self) -> String {
        format!("{} at rdd {}", self.effective().name(), self.id.0)
    }
    fn num_partitions(&self) -> usize {
        self.effective().num_partitions()
    }
    fn dependencies(&self) -> Vec<Dependency> {
        self.effective().dependencies()
    }
    fn storage_level(&self) -> StorageLevel {
        *self.level.lock().unwrap_or_else(|p| p.into_inner())
    }
    fn debug_label(&self) -> String {
        let name = self.name.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let node = self.effective();
        let prefix = name.map(|n| n + " ").unwrap_or_default();
        format!("{prefix}{}[{}] at {}", node.kind(), self.id.0, node.name())
    }
    fn context(&self) -> Option<&Context> {
        self.ctx.as_ref()
    }
}

impl<T> Drop for Node<T> {
    fn drop(&mut self) {
        // The driver's last handle is gone: drop cached blocks of this RDD.
        if let Some(ctx) = &self.ctx {
            let level = *self.level.lock().unwrap_or_else(|p| p.into_inner());
            if level != StorageLevel::None {
                ctx.env().blocks.remove_rdd(self.id);
            }
        }
    }
}

/// A resilient distributed dataset of `T`: an immutable, partitioned collection computed lazily
/// from its lineage. Cloning the handle is cheap.
pub struct Rdd<T> {
    node: Arc<Node<T>>,
}

impl<T: Data> Clone for Rdd<T> {
    fn clone(&self) -> Self {
        Rdd { node: self.node.clone() }
    }
}

impl<T: Data> fmt::Debug for Rdd<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Rdd({})", self.node.describe())
    }
}

impl<T: Data> Rdd<T> {
    /// Wraps a node implementation in a new RDD handle.
    pub(crate) fn from_impl<R>(ctx: Option<Context>, node: R) -> Rdd<T>
    where
        R: RddImpl<T> + Upcast<dyn RddImpl<T>> + Serialize + serde::de::DeserializeOwned,
    {
        Rdd {
            node: Arc::new(Node::new(
                RddId(NEXT_RDD_ID.fetch_add(1, Ordering::Relaxed)),
                ctx,
                Ship::new(node),
                false,
                StorageLevel::None,
            )),
        }
    }

    /// Wraps a node implementation from another crate in a new RDD of `ctx`: the seam through
    /// which libraries built on the core (SQL stages, streaming sources) add node types of their
    /// own. The node travels to executors as every built-in node does (see [`Ship`]), so it must
    /// serialize everything its `compute` needs.
    pub fn from_node<R>(ctx: &Context, node: R) -> Rdd<T>
    where
        R: RddImpl<T> + Upcast<dyn RddImpl<T>> + Serialize + serde::de::DeserializeOwned,
    {
        Rdd::from_impl(Some(ctx.clone()), node)
    }

    /// A new RDD in the same context as this one.
    pub(crate) fn derive<U: Data, R>(&self, node: R) -> Rdd<U>
    where
        R: RddImpl<U> + Upcast<dyn RddImpl<U>> + Serialize + serde::de::DeserializeOwned,
    {
        Rdd::from_impl(self.node.ctx.clone(), node)
    }

    /// The RDD's id.
    pub fn id(&self) -> RddId {
        self.node.id
    }

    /// The number of partitions.
    pub fn num_partitions(&self) -> usize {
        self.node.num_partitions()
    }

    /// The driver context that created this RDD.
    pub fn context(&self) -> Result<&Context> {
        self.node.ctx.as_ref().ok_or(Error::NoContext)
    }

    /// The untyped view of this RDD.
    pub fn as_base(&self) -> Arc<dyn RddBase> {
        self.node.clone()
    }

    /// The dependencies of this RDD.
    pub fn dependencies(&self) -> Vec<Dependency> {
        self.node.dependencies()
    }

    /// The storage level.
    pub fn storage_level(&self) -> StorageLevel {
        self.node.storage_level()
    }

    /// Keeps computed partitions at `level` (Spark's `persist`). Returns the same RDD.
    ///
    /// As in Spark, an RDD's level can be assigned only once: persisting again at the same
    /// level is a no-op, at another level an [`Error::InvalidArgument`] (call
    /// [`Rdd::unpersist`] first). On a locally checkpointed RDD, as in Spark, the level may
    /// change but keeps using disk.
    ///
    /// Inside a task (an executor's decoded copy of an RDD) it is an error: levels are the
    /// driver's to set, and decoded nodes are shared by the executor's tasks.
    pub fn persist(&self, level: StorageLevel) -> Result<Rdd<T>> {
        if self.node.ctx.is_none() {
            return Err(Error::InvalidArgument(format!(
                "rdd {} is persisted from the driver program, not inside a task",
                self.node.id.0
            )));
        }
        if self.is_locally_checkpointed() {
            let kept = if level == StorageLevel::None { StorageLevel::DiskOnly } else { lineage::with_disk(level) };
            self.force_level(kept);
            return Ok(self.clone());
        }
        let mut current = self.node.level.lock().unwrap_or_else(|p| p.into_inner());
        if *current != StorageLevel::None && *current != level {
            return Err(Error::InvalidArgument(format!(
                "cannot change the storage level of rdd {} from {:?} to {:?} after it was assigned; \
                 unpersist() it first",
                self.node.id.0, *current, level
            )));
        }
        *current = level;
        Ok(self.clone())
    }

    /// `persist(StorageLevel::MemoryOnly)`: fails, like `persist`, when the RDD is already
    /// persisted at another level.
    pub fn cache(&self) -> Result<Rdd<T>> {
        self.persist(StorageLevel::MemoryOnly)
    }

    /// Sets the storage level without the check `persist` makes (local checkpoints upgrade the
    /// level to one that survives eviction).
    fn force_level(&self, level: StorageLevel) {
        *self.node.level.lock().unwrap_or_else(|p| p.into_inner()) = level;
    }

    /// Drops cached partitions and stops caching. Inside a task (on a decoded copy) it does
    /// nothing: levels are the driver's to set.
    pub fn unpersist(&self) -> Rdd<T> {
        if let Some(ctx) = &self.node.ctx {
            *self.node.level.lock().unwrap_or_else(|p| p.into_inner()) = StorageLevel::None;
            ctx.env().blocks.remove_rdd(self.node.id);
        }
        self.clone()
    }

    /// Whether this RDD has been checkpointed (its lineage truncated).
    pub fn is_checkpointed(&self) -> bool {
        self.node.source_slot().checkpointed
    }

    /// Writes every partition to the context's checkpoint directory now (running a job) and
    /// truncates the lineage: later computations read the checkpoint files instead of
    /// recomputing parents. Unlike Spark, this is eager, so no separate job is hidden behind the
    /// next action.
    ///
    /// As in Spark, the RDD then no longer references its parents: ancestors the program holds
    /// no other handle on are released, their cached blocks removed and the outputs of the
    /// shuffles they fed deleted. Jobs running meanwhile finish with the lineage they started
    /// with, which is released when their last task ends.
    pub fn checkpoint(&self) -> Result<()> {
        let _writing = self.node.checkpoint_guard()?;
        if self.is_checkpointed() {
            return Ok(());
        }
        let ctx = self.context()?.clone();
        let dir = ctx.checkpoint_dir()?.join(format!("rdd-{}", self.node.id.0));
        let cp = source::write_checkpoint(&ctx, self, &dir)?;
        self.node.truncate(Ship::new(cp));
        Ok(())
    }

    /// Partition `split` inside a task: read from the cache or checkpoint when present, computed
    /// from the lineage otherwise. The seam through which a node from another crate reads a
    /// parent it depends on narrowly (see [`Rdd::from_node`]).
    pub fn read_partition<'a>(&'a self, split: usize, tc: &'a TaskContext) -> BoxIter<'a, T> {
        self.iterator(split, tc)
    }

    /// Computes partition `split`, reading the cache or checkpoint when present.
    ///
    /// The task context holds the node implementation the iterator borrows until the task ends,
    /// so a checkpoint that releases this RDD's lineage while the task reads it frees nothing
    /// the task still uses.
    pub(crate) fn iterator<'a>(&'a self, split: usize, tc: &'a TaskContext) -> BoxIter<'a, T> {
        let node = &*self.node;
        let Source { imp, checkpointed } = node.source();
        let imp = tc.keep_alive(imp);
        if checkpointed {
            return imp.compute(split, tc);
        }
        let level = node.storage_level();
        if level == StorageLevel::None {
            return imp.compute(split, tc);
        }
        // Records read back from the cache are checked too: a killed task stops reading them.
        let cached = tc
            .env()
            .blocks
            .get_or_compute(node.id, split, level, tc, || Box::new(Interruptible::new(imp.compute(split, tc), tc)));
        Box::new(Interruptible::new(cached, tc))
    }
}

// ---- wire form -------------------------------------------------------------------------------
//
// An RDD handle encodes as a table of lineage nodes, each encoded once and referenced by id, plus
// a reference to the root. Nodes reference their parents by id, so encoding is linear in the
// size of the lineage even when it is deep or shares parents (a diamond, `r.union(&r)`), and
// decoding rebuilds one shared node per id, as on the driver.

/// A reference to a node of the table.
#[derive(Serialize, Deserialize)]
struct NodeRef {
    id: RddId,
    level: StorageLevel,
}

/// A node of the table: its implementation's encoding and whether that is a checkpoint, taken
/// from one snapshot of the node's source (a checkpoint may land while a lineage is encoded).
#[derive(Serialize, Deserialize)]
struct EncodedNode {
    id: RddId,
    checkpointed: bool,
    bytes: Vec<u8>,
}

/// The top-level form: the node table and the root.
#[derive(Serialize, Deserialize)]
struct Lineage {
    nodes: Vec<EncodedNode>,
    root: NodeRef,
}

#[derive(Default)]
struct EncodeSession {
    seen: std::collections::HashSet<RddId>,
    nodes: Vec<EncodedNode>,
    /// Where the lineage is cut at cached nodes, when it is.
    cut: Option<Arc<cut::Cut>>,
}

thread_local! {
    static ENCODING: std::cell::RefCell<Option<EncodeSession>> = const { std::cell::RefCell::new(None) };
    static DECODING: std::cell::RefCell<Option<decoded::Session>> = const { std::cell::RefCell::new(None) };
}

/// Ends this thread's encode session when the outermost encode returns, even by unwinding: a
/// user `Serialize` impl that panics must not leave a session behind, or every later encode on
/// the thread (the scheduler's) would be taken for a nested one and lose its node table.
struct EncodingGuard;

impl Drop for EncodingGuard {
    fn drop(&mut self) {
        ENCODING.with(|e| e.borrow_mut().take());
    }
}

/// Ends this thread's decode session when the outermost decode returns, even by unwinding.
struct DecodingGuard;

impl Drop for DecodingGuard {
    fn drop(&mut self) {
        DECODING.with(|d| d.borrow_mut().take());
    }
}

impl<T: Data> Rdd<T> {
    fn node_ref(&self) -> NodeRef {
        NodeRef { id: self.node.id, level: self.storage_level() }
    }

    /// Adds this node (and, through its own encoding, its parents) to the active table.
    fn register(&self) -> Result<()> {
        let id = self.node.id;
        let fresh = ENCODING.with(|e| e.borrow_mut().as_mut().map(|s| s.seen.insert(id)).unwrap_or(false));
        if !fresh {
            return Ok(());
        }
        // No borrow is held here: encoding the node registers its parents first.
        let source = self.node.source();
        let checkpointed = source.checkpointed;
        // A node cached everywhere is cut from the lineage (see `cut`): a stub without parents.
        let stub = ENCODING.with(|e| e.borrow().as_ref().and_then(|s| s.cut.clone()));
        let bytes = match stub.and_then(|cut| cut.stub(&self.node, &source)) {
            Some(stub) => stub?,
            None => source.imp.encode()?,
        };
        ENCODING.with(|e| {
            if let Some(s) = e.borrow_mut().as_mut() {
                s.nodes.push(EncodedNode { id, checkpointed, bytes });
            }
        });
        Ok(())
    }

    /// The node `r` names in the decode in progress: decoded once per decode, and taken from
    /// earlier decodes when it is the very same node (see `decoded`).
    fn resolve(r: NodeRef) -> Result<Rdd<T>> {
        let reused = DECODING.with(|d| {
            let mut d = d.borrow_mut();
            let s = d.as_mut()?;
            let (any, keep) = s.reuse(r.id, Some(r.level))?;
            s.resolved(r.id, &any, keep);
            Some(any)
        });
        if let Some(any) = reused {
            let node = any
                .downcast::<Node<T>>()
                .map_err(|_| Error::Serialization(format!("rdd {} is referenced with two types", r.id.0)))?;
            return Ok(Rdd { node });
        }
        let (checkpointed, bytes) = DECODING
            .with(|d| d.borrow_mut().as_mut().and_then(|s| s.begin(r.id)))
            .ok_or_else(|| Error::Serialization(format!("encoded lineage lacks rdd {}", r.id.0)))?;
        let broadcasts = crate::broadcast::decoded_on_this_thread();
        // Decoded with the key of the decode in progress, which sealed the table's code references.
        // No borrow is held: decoding the node resolves its parents.
        let imp = Ship::<dyn RddImpl<T>>::decode_nested(&bytes);
        let parents = DECODING.with(|d| d.borrow_mut().as_mut().map(|s| s.end()).unwrap_or_default());
        let node = Arc::new(Node::new(r.id, None, imp?, checkpointed, r.level));
        let any: decoded::AnyNode = node.clone();
        // A node that holds a broadcast value, itself or through a parent, is not kept.
        let keep = broadcasts == crate::broadcast::decoded_on_this_thread() && parents.iter().all(|p| p.2);
        DECODING.with(|d| {
            if let Some(s) = d.borrow_mut().as_mut() {
                s.resolved(r.id, &any, keep);
                if keep {
                    s.keep(r.id, (checkpointed, r.level, bytes), parents, &any);
                }
            }
        });
        Ok(Rdd { node })
    }
}

impl<T: Data> Serialize for Rdd<T> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let nested = ENCODING.with(|e| e.borrow().is_some());
        if nested {
            self.register().map_err(serde::ser::Error::custom)?;
            return self.node_ref().serialize(s);
        }
        ENCODING.with(|e| *e.borrow_mut() = Some(EncodeSession { cut: cut::current(), ..Default::default() }));
        let guard = EncodingGuard;
        let registered = self.register();
        let session = ENCODING.with(|e| e.borrow_mut().take()).unwrap_or_default();
        drop(guard);
        registered.map_err(serde::ser::Error::custom)?;
        Lineage { nodes: session.nodes, root: self.node_ref() }.serialize(s)
    }
}

impl<'de, T: Data> Deserialize<'de> for Rdd<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let nested = DECODING.with(|s| s.borrow().is_some());
        if nested {
            let r = NodeRef::deserialize(d)?;
            return Rdd::resolve(r).map_err(|e| crate::ship::decode_failed(e.to_string()));
        }
        let lineage = Lineage::deserialize(d)?;
        let bytes = lineage.nodes.into_iter().map(|n| (n.id, (n.checkpointed, n.bytes))).collect();
        let session = decoded::Session::new(crate::ship::decode_key_fingerprint(), bytes);
        DECODING.with(|s| *s.borrow_mut() = Some(session));
        let guard = DecodingGuard;
        let root = Rdd::resolve(lineage.root);
        drop(guard);
        root.map_err(|e| crate::ship::decode_failed(e.to_string()))
    }
}
