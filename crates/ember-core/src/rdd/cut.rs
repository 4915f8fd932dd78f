//! Lineage cut at cached partitions: what keeps an iterative program's tasks the same size
//! however many iterations came before.
//!
//! A task body carries its RDD's narrow lineage, and an iterative program's lineage grows by a
//! few nodes per iteration (each state is computed from the previous one), so without a cut
//! every task would cost more to encode, ship and decode than the one before. When the driver
//! encodes a stage and knows where partitions are cached (its block locations, which executors
//! in other processes report), a persisted node whose every partition some executor holds, or
//! that an earlier job of the group being scheduled makes whole, is encoded as a
//! [`CachedLineage`] instead: its id, level and partition count, without its parents. The
//! executor reads the cached partition from its own store (or, for the partition its task was
//! placed for, from a holder the task names); only when it has no copy does it fetch the node's
//! lineage from the driver ([`RemoteLineage`], served from [`Lineages`]) and compute the
//! partition from it, caching it as it would have. A stage keeps the nodes it was cut at alive
//! until its job ends, so the driver can always serve them; what it serves is the lineage as
//! it is then (a value a closure captures by shared reference is sent as it is at that time,
//! and a node checkpointed since is read from its checkpoint). An executor keeps what it
//! fetched for a stage ([`FetchedLineages`]), so a wrong cut costs a round trip to the driver
//! per executor and stage that miss, not per task.
//!
//! The lineage a driver serves is itself cut at the node's cached ancestors, but never at the
//! node asked for.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, Weak};

use serde::{Deserialize, Serialize};

use super::{Dependency, Node, Rdd, RddBase, RddImpl, Source};
use crate::data::Data;
use crate::error::{Error, Result};
use crate::scheduler::BlockLocations;
use crate::ship::{Marker, Ship, ShipKey};
use crate::storage::RddId;
use crate::task::{BoxIter, TaskContext};

/// How an executor in another process than its driver fetches a node's lineage from the driver.
pub trait RemoteLineage: Send + Sync {
    /// The encoding (with the application's key) of RDD `rdd` as [`Lineages::encode`] gives it.
    fn fetch(&self, rdd: RddId) -> Result<Vec<u8>>;
}

/// Encodes one node's lineage afresh (the node held weakly; `None` once it is released).
type Encoder = Arc<dyn Fn() -> Option<Result<Vec<u8>>> + Send + Sync>;

/// A remembered node: whether it lives, and how to encode it.
struct Entry {
    node: Weak<dyn std::any::Any + Send + Sync>,
    encode: Encoder,
}

/// The nodes a driver cut lineages at, by id: what it serves executors that need one's lineage.
/// Nodes are held weakly (a node lives as long as the program or a running stage holds it).
#[derive(Default)]
pub struct Lineages {
    inner: Mutex<Registry>,
    served: std::sync::atomic::AtomicU64,
}

/// The lineages an executor fetched from its driver, by stage and node: the tasks of a stage
/// that miss the same cut node (all of them, after the executor holding it was lost) fetch it
/// once. A later stage fetches again, so it sees the lineage as it is then (a node
/// checkpointed or unpersisted since). Bounded: it starts afresh past [`FETCHED_ENTRIES`]
/// entries or [`FETCHED_BYTES`].
#[derive(Default)]
pub(crate) struct FetchedLineages {
    inner: Mutex<Fetched>,
}

#[derive(Default)]
struct Fetched {
    lineages: HashMap<(crate::task::StageId, RddId), Arc<std::sync::OnceLock<Result<Arc<Vec<u8>>>>>>,
    bytes: usize,
}

/// Most nodes whose fetched lineage an executor keeps.
const FETCHED_ENTRIES: usize = 64;

/// Most bytes of fetched lineage an executor keeps.
const FETCHED_BYTES: usize = 16 << 20;

impl FetchedLineages {
    /// The lineage of node `at.1` for stage `at.0`: fetched by `fetch` once, however many tasks
    /// ask at the same time, and kept; a failed fetch is tried again by the next task.
    fn get_or_fetch(
        &self,
        at: (crate::task::StageId, RddId),
        fetch: impl FnOnce() -> Result<Vec<u8>>,
    ) -> Result<Arc<Vec<u8>>> {
        let cell = self.inner.lock().unwrap_or_else(|p| p.into_inner()).lineages.entry(at).or_default().clone();
        let mut fetched_here = false;
        let got = match cell.get_or_init(|| {
            fetched_here = true;
            fetch().map(Arc::new)
        }) {
            Ok(bytes) => Ok(bytes.clone()),
            Err(e) => Err(e.duplicate()),
        };
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        match &got {
            Err(_) => {
                if inner.lineages.get(&at).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
                    inner.lineages.remove(&at);
                }
            }
            Ok(bytes) if fetched_here => {
                inner.bytes += bytes.len();
                if inner.bytes > FETCHED_BYTES || inner.lineages.len() > FETCHED_ENTRIES {
                    let keep = inner.lineages.remove(&at);
                    inner.lineages.clear();
                    inner.bytes = 0;
                    if let Some(keep) = keep.filter(|_| bytes.len() <= FETCHED_BYTES) {
                        inner.lineages.insert(at, keep);
                        inner.bytes = bytes.len();
                    }
                }
            }
            Ok(_) => {}
        }
        got
    }
}

#[derive(Default)]
struct Registry {
    encoders: HashMap<RddId, Entry>,
    /// Entries after the last sweep of released nodes: the next sweep comes at twice as many.
    swept_at: usize,
}

impl Lineages {
    fn registry(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Remembers `node` (cut in an encoding under `key`) so that its lineage can be served.
    fn remember<T: Data>(&self, node: &Arc<Node<T>>, key: ShipKey) {
        let node_id = node.id;
        let mut registry = self.registry();
        if registry.encoders.contains_key(&node_id) {
            return;
        }
        let weak: Weak<Node<T>> = Arc::downgrade(node);
        let encode: Encoder = Arc::new(move || {
            let node = weak.upgrade()?;
            Some(encode_whole(&Rdd { node }, &key))
        });
        let node: Weak<dyn std::any::Any + Send + Sync> = Arc::downgrade(node) as Weak<dyn std::any::Any + Send + Sync>;
        registry.encoders.insert(node_id, Entry { node, encode });
        if registry.encoders.len() >= 2 * registry.swept_at.max(64) {
            // Nodes the program released are forgotten.
            registry.encoders.retain(|_, e| e.node.strong_count() > 0);
            registry.swept_at = registry.encoders.len();
        }
    }

    /// The encoding of node `rdd`'s lineage, cut at its cached ancestors (the node itself is
    /// never cut).
    pub fn encode(&self, rdd: RddId) -> Result<Vec<u8>> {
        // Encoded outside the lock: encoding a node may register others.
        let encode = self.registry().encoders.get(&rdd).map(|e| e.encode.clone()).ok_or_else(|| unknown(rdd))?;
        self.served.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        encode().ok_or_else(|| unknown(rdd))?
    }

    /// How many lineages were encoded to be served (for tests and metrics).
    pub fn served(&self) -> u64 {
        self.served.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether node `rdd` was cut at (its lineage is served while the node lives).
    pub fn contains(&self, rdd: RddId) -> bool {
        self.registry().encoders.contains_key(&rdd)
    }

    /// How many nodes are remembered (for tests).
    pub fn len(&self) -> usize {
        self.registry().encoders.len()
    }

    /// Whether no node is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn unknown(rdd: RddId) -> Error {
    Error::Internal(format!("the driver holds no lineage of rdd {} (it was released)", rdd.0))
}

/// The cut an encode on this thread makes: where partitions are cached, and the node that is
/// never cut (the one whose lineage is asked for).
pub(super) struct Cut {
    pub(super) locations: Arc<BlockLocations>,
    /// Nodes an earlier job of the group being scheduled computes and caches whole: tasks of
    /// later jobs wait for their partitions where they are made (see the scheduler's
    /// placement), so they are cut too.
    pub(super) coming: Arc<HashSet<RddId>>,
    pub(super) whole: Option<RddId>,
    /// The nodes cut at: whoever runs what was encoded keeps them alive meanwhile.
    made: Mutex<Vec<CutNode>>,
}

/// A node a lineage was cut at, held (type-erased) so that the driver can serve its lineage.
pub(crate) type CutNode = Arc<dyn std::any::Any + Send + Sync>;

thread_local! {
    static CUT: std::cell::RefCell<Option<Arc<Cut>>> = const { std::cell::RefCell::new(None) };
}

/// Restores the previous cut when an encode ends, even by unwinding.
struct CutGuard(Option<Arc<Cut>>);

impl Drop for CutGuard {
    fn drop(&mut self) {
        let previous = self.0.take();
        CUT.with(|c| *c.borrow_mut() = previous);
    }
}

/// Runs `encode` with lineages cut at the nodes whose every partition `locations` holds, and
/// at the nodes `coming` names; returns its result and the nodes it cut at, which the caller
/// keeps while what it encoded may run (the driver serves their lineage meanwhile, even if
/// the program releases them).
pub(crate) fn with_cut<R>(
    locations: &Arc<BlockLocations>,
    coming: &Arc<HashSet<RddId>>,
    encode: impl FnOnce() -> R,
) -> (R, Vec<CutNode>) {
    with(Cut { locations: locations.clone(), coming: coming.clone(), whole: None, made: Mutex::default() }, encode)
}

fn with<R>(cut: Cut, encode: impl FnOnce() -> R) -> (R, Vec<CutNode>) {
    let cut = Arc::new(cut);
    let guard = CutGuard(CUT.with(|c| c.replace(Some(cut.clone()))));
    let result = encode();
    drop(guard);
    let made = std::mem::take(&mut *cut.made.lock().unwrap_or_else(|p| p.into_inner()));
    (result, made)
}

/// The cut of the encode starting on this thread, if any.
pub(super) fn current() -> Option<Arc<Cut>> {
    CUT.with(|c| c.borrow().clone())
}

/// Encodes `rdd` whole (cut only at its cached ancestors) with `key`.
fn encode_whole<T: Data>(rdd: &Rdd<T>, key: &ShipKey) -> Result<Vec<u8>> {
    let locations = rdd.node.ctx.as_ref().map(|c| c.env().block_locations.clone()).unwrap_or_default();
    let cut = Cut { locations, coming: Arc::default(), whole: Some(rdd.node.id), made: Mutex::default() };
    // The nodes cut at are not kept: an executor asking again finds them while its stage runs
    // (its own cut keeps them), and the lineage of a released node is asked for by no one.
    with(cut, || key.encode(rdd)).0
}

impl Cut {
    /// The encoding of `node` when it is cut here: a persisted node, not checkpointed, whose
    /// every partition an executor holds or an earlier job of the group makes (a source is
    /// cut too: a parallelized collection's node carries all its records).
    pub(super) fn stub<T: Data>(&self, node: &Arc<Node<T>>, source: &Source<T>) -> Option<Result<Vec<u8>>> {
        if self.whole == Some(node.id) || source.checkpointed || node.storage_level() == crate::StorageLevel::None {
            return None;
        }
        let partitions = source.imp.num_partitions();
        if !self.coming.contains(&node.id) && !self.locations.has_all(node.id, partitions) {
            return None;
        }
        let ctx = node.ctx.as_ref()?;
        // The key of the encode in progress: what the served lineage is encoded with too.
        let key = ShipKey::current()?;
        ctx.env().lineages.remember(node, key);
        self.made.lock().unwrap_or_else(|p| p.into_inner()).push(node.clone());
        let stub = CachedLineage::<T> { rdd: node.id, partitions, key: None, _t: std::marker::PhantomData };
        Some(Ship::<dyn RddImpl<T>>::new(stub).encode())
    }
}

/// A node cut from a lineage: its partitions are read from the cache, and computed from the
/// lineage the driver serves when no executor holds them any more.
#[derive(Serialize, Deserialize)]
#[serde(bound = "")]
pub(crate) struct CachedLineage<T> {
    rdd: RddId,
    partitions: usize,
    /// The key this stub was decoded with: the one the served lineage decodes with.
    #[serde(skip, default = "ShipKey::current")]
    key: Option<ShipKey>,
    _t: Marker<T>,
}

impl<T: Data> CachedLineage<T> {
    /// The node's lineage, decoded.
    fn lineage(&self, tc: &TaskContext) -> Result<Rdd<T>> {
        let env = tc.env();
        let bytes = match env.remote_lineage() {
            Some(remote) => env.fetched_lineages.get_or_fetch((tc.stage, self.rdd), || remote.fetch(self.rdd))?,
            None => Arc::new(env.lineages.encode(self.rdd)?),
        };
        let key = self.key.as_ref().ok_or_else(|| {
            Error::Internal(format!("the cut lineage of rdd {} was not decoded with a key", self.rdd.0))
        })?;
        let rdd: Rdd<T> = key.decode(&bytes)?;
        if rdd.node.id != self.rdd {
            return Err(Error::Serialization(format!(
                "the driver sent the lineage of rdd {} for rdd {}",
                rdd.node.id.0, self.rdd.0
            )));
        }
        Ok(rdd)
    }
}

impl<T: Data> RddImpl<T> for CachedLineage<T> {
    fn name(&self) -> &'static str {
        "cached"
    }
    fn num_partitions(&self) -> usize {
        self.partitions
    }
    fn dependencies(&self) -> Vec<Dependency> {
        Vec::new()
    }
    /// Reached only when neither this executor nor a holder the task names has the partition
    /// (the cache is read first): computed from the node's lineage.
    fn compute<'a>(&'a self, split: usize, tc: &'a TaskContext) -> BoxIter<'a, T> {
        tracing::debug!("partition {split} of rdd {} is cached nowhere: computing it from its lineage", self.rdd.0);
        match self.lineage(tc) {
            Ok(rdd) => {
                let imp = tc.keep_alive(rdd.node.source().imp);
                imp.compute(split, tc)
            }
            Err(e) => {
                tc.fail(e);
                Box::new(std::iter::empty())
            }
        }
    }
    fn kind(&self) -> &'static str {
        "CachedLineage"
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crate::scheduler::BlockLocations;
    use crate::ship::ShipKey;
    use crate::storage::StorageLevel;
    use crate::{Context, EmberConf, Rdd};

    fn context(serialize_tasks: bool) -> Context {
        let conf = EmberConf::new()
            .master("local[2]")
            .and_then(|c| c.set("ember.ui.showConsoleProgress", "false"))
            .and_then(|c| c.set("ember.local.serializeTasks", if serialize_tasks { "true" } else { "false" }))
            .unwrap();
        Context::new(conf).unwrap()
    }

    /// Records every partition of `rdd` as held by executor `holder`.
    fn held(locations: &BlockLocations, rdd: &Rdd<u64>, holder: &str) {
        let holder: Arc<str> = Arc::from(holder);
        for split in 0..rdd.num_partitions() {
            locations.added(&holder, rdd.id(), split);
        }
    }

    #[test]
    fn a_lineage_cut_at_cached_nodes_does_not_grow_with_it() {
        let ctx = context(false);
        let key = ShipKey::local();
        let locations = Arc::new(BlockLocations::default());
        let mut states = vec![ctx.parallelize((0..100u64).collect(), 4).cache().unwrap()];
        for i in 0..60u64 {
            let next = states[states.len() - 1].map_with(i, |i, x| x + i).persist(StorageLevel::MemoryOnly).unwrap();
            states.push(next);
        }
        // Every state but the last is cached somewhere.
        for s in &states[..states.len() - 1] {
            held(&locations, s, "e1");
        }
        let whole = |r: &Rdd<u64>| key.encode(r).unwrap().len();
        let none = Arc::default();
        let cut = |r: &Rdd<u64>| super::with_cut(&locations, &none, || key.encode(r)).0.unwrap().len();
        // Nodes on top of the 10th and of the 60th state: each is itself and one stub.
        let (short, long) = (&states[10].map(|x| x + 1), &states[60]);
        assert!(whole(long) > 4 * whole(short), "the uncut lineage grows: {} vs {}", whole(long), whole(short));
        assert!(cut(long) <= cut(short) + 8, "the cut lineage does not grow: {} vs {}", cut(long), cut(short));
        assert!(cut(long) * 4 < whole(short), "a cut lineage is a node and a stub");
        // A cached source is cut too: a parallelized collection's node carries its records.
        let big = ctx.parallelize((1000..3000u64).collect(), 4).cache().unwrap();
        held(&locations, &big, "e1");
        let over_source = big.map(|x| x + 1);
        assert!(cut(&over_source) + 2000 < whole(&over_source), "the collection was shipped");
        // A cached root is a stub itself: its task reads the cache.
        assert!(cut(&states[30]) < cut(short));
        // The driver can serve the lineage of the node it cut at.
        assert!(ctx.env().lineages.len() >= 2);
        let served: Rdd<u64> = key.decode(&ctx.env().lineages.encode(states[59].id()).unwrap()).unwrap();
        assert_eq!(served.id(), states[59].id());

        // A node not cached everywhere is encoded whole, with its parents.
        let partial = Arc::new(BlockLocations::default());
        partial.added(&Arc::from("e1"), states[59].id(), 0);
        let partly = super::with_cut(&partial, &none, || key.encode(long)).0.unwrap().len();
        assert_eq!(partly, whole(long));
        // ... unless an earlier job of the group being scheduled makes it.
        let coming = Arc::new(std::collections::HashSet::from([states[59].id()]));
        let (encoded, kept) = super::with_cut(&partial, &coming, || key.encode(long));
        assert_eq!(encoded.unwrap().len(), cut(long));
        assert_eq!(kept.len(), 1, "the node cut at is handed to whoever runs the encoding");
    }

    #[test]
    fn a_cut_node_reads_its_cached_partitions() {
        let ctx = context(true);
        let computed = ctx.long_accumulator();
        let counter = computed.clone();
        let mid = ctx
            .parallelize((0..1000u64).collect(), 4)
            .map_with(counter, |c, x| {
                c.add(1);
                x * 2
            })
            .cache()
            .unwrap();
        assert_eq!(mid.count().unwrap(), 1000);
        assert_eq!(computed.value().unwrap(), 1000);
        // In local mode the driver does not track locations: say where the partitions are.
        held(&ctx.env().block_locations, &mid, "driver");
        let top = mid.map(|x| x + 1);
        let got = top.collect().unwrap();
        assert_eq!(got, (0..1000u64).map(|x| x * 2 + 1).collect::<Vec<_>>());
        assert!(!ctx.env().lineages.is_empty(), "the task's lineage was cut at the cached node");
        assert_eq!(computed.value().unwrap(), 1000, "the cached partitions were read, not computed again");
    }

    #[test]
    fn a_cut_node_cached_nowhere_is_computed_from_the_lineage_the_driver_serves() {
        let ctx = context(true);
        let computed = ctx.long_accumulator();
        let counter = computed.clone();
        let base = ctx.parallelize((0..1000u64).collect(), 4).map(|x| x + 3);
        let mid = base
            .map_with(counter, |c, x| {
                c.add(1);
                x * 2
            })
            .cache()
            .unwrap();
        // The driver believes the partitions are cached; they never were.
        held(&ctx.env().block_locations, &mid, "driver");
        let top = mid.map(|x| x + 1);
        let got = top.collect().unwrap();
        assert_eq!(got, (0..1000u64).map(|x| (x + 3) * 2 + 1).collect::<Vec<_>>());
        assert!(!ctx.env().lineages.is_empty(), "the task's lineage was cut at the cached node");
        assert_eq!(computed.value().unwrap(), 1000, "each partition was computed once, from the served lineage");
        // ... and cached as it is computed: the next job reads it.
        assert_eq!(top.count().unwrap(), 1000);
        assert_eq!(computed.value().unwrap(), 1000);
    }
}
