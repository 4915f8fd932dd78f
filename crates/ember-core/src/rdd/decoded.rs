//! Lineage nodes decoded earlier in this process, reused when a later lineage carries the very
//! same node.
//!
//! Every task body carries its RDD's whole narrow lineage, so an executor decodes it again for
//! every task; an iterative program's lineage grows by a few nodes per iteration, and so would
//! the cost of each of its tasks. A node decoded once is kept here with its encoding, and a later
//! decode takes it instead of decoding again when it is the same node: the same id (ids are
//! unique in the driver's process), the same bytes (sealed with the same key), the same storage
//! level and checkpoint state, and parents that are themselves the very nodes it was decoded
//! with. A node that fetched a broadcast value while decoding (or whose parents did) is not
//! kept, so that a destroyed broadcast's value is not held here. Nodes of more than
//! [`MAX_NODE_BYTES`] (a large `parallelize`d collection) are not kept either, and the cache
//! starts afresh once its entries weigh [`CACHE_WEIGHT`]: a node's weight is its encoding
//! counted [`DECODED_FACTOR`] times (decoded records take several times their compact encoding),
//! so what the cache holds stays within some tens of MiB.

use std::any::Any;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use crate::storage::{RddId, StorageLevel};

/// A decoded node, type-erased (`Arc<Node<T>>`).
pub(super) type AnyNode = Arc<dyn Any + Send + Sync>;

/// Most weight the cache holds.
pub(super) const CACHE_WEIGHT: usize = 16 << 20;

/// The largest encoding of a node kept.
pub(super) const MAX_NODE_BYTES: usize = 16 << 10;

/// How many times its encoding a node is taken to weigh.
pub(super) const DECODED_FACTOR: usize = 8;

/// A node's weight: its encoding (kept, and decoded) and its bookkeeping.
fn weight(entry: &Decoded) -> usize {
    (DECODED_FACTOR + 1) * entry.bytes.len() + 64 * (entry.parents.len() + 1)
}

/// A node kept for reuse.
struct Decoded {
    /// Fingerprint of the key its bytes were sealed with.
    key: u64,
    checkpointed: bool,
    level: StorageLevel,
    bytes: Vec<u8>,
    /// The nodes its decode resolved as parents, by id.
    parents: Vec<(RddId, AnyNode)>,
    node: AnyNode,
}

#[derive(Default)]
struct Cache {
    nodes: HashMap<RddId, Arc<Decoded>>,
    weight: usize,
}

fn cache() -> &'static Mutex<Cache> {
    static CACHE: std::sync::OnceLock<Mutex<Cache>> = std::sync::OnceLock::new();
    CACHE.get_or_init(Mutex::default)
}

fn lookup(id: RddId) -> Option<Arc<Decoded>> {
    cache().lock().unwrap_or_else(|p| p.into_inner()).nodes.get(&id).cloned()
}

/// Whether the cache holds node `id` (for tests).
#[cfg(test)]
fn holds(id: RddId) -> bool {
    cache().lock().unwrap_or_else(|p| p.into_inner()).nodes.contains_key(&id)
}

/// One decode's view: the encodings still to decode, the nodes decoded so far, and the parents
/// each node in progress resolved.
pub(super) struct Session {
    /// Fingerprint of the decode's key (`None`: nothing is reused or kept).
    key: Option<u64>,
    bytes: HashMap<RddId, (bool, Vec<u8>)>,
    decoded: HashMap<RddId, AnyNode>,
    /// Decoded nodes that may not be kept (they or their parents hold a broadcast value).
    unkept: HashSet<RddId>,
    /// Nodes found not to be reusable: not looked for again.
    missed: HashSet<RddId>,
    /// One frame per node being decoded: the parents it resolved, and whether each may be kept.
    frames: Vec<Vec<(RddId, AnyNode, bool)>>,
}

impl Session {
    pub(super) fn new(key: Option<u64>, bytes: HashMap<RddId, (bool, Vec<u8>)>) -> Session {
        Session {
            key,
            bytes,
            decoded: HashMap::new(),
            unkept: HashSet::new(),
            missed: HashSet::new(),
            frames: Vec::new(),
        }
    }

    /// The node `id` without decoding it: one this decode already made, or a kept one that is
    /// the same node (checked down through its parents). `level` is the reference's, when known
    /// (a parent's is part of its child's bytes, already compared). Returns the node and
    /// whether it may be kept.
    pub(super) fn reuse(&mut self, id: RddId, level: Option<StorageLevel>) -> Option<(AnyNode, bool)> {
        if let Some(node) = self.decoded.get(&id) {
            return Some((node.clone(), !self.unkept.contains(&id)));
        }
        if self.missed.contains(&id) {
            return None;
        }
        let found = self.reuse_kept(id, level);
        if found.is_none() {
            self.missed.insert(id);
        }
        found
    }

    fn reuse_kept(&mut self, id: RddId, level: Option<StorageLevel>) -> Option<(AnyNode, bool)> {
        let key = self.key?;
        let kept = lookup(id)?;
        let (checkpointed, bytes) = self.bytes.get(&id)?;
        if kept.key != key
            || kept.checkpointed != *checkpointed
            || level.is_some_and(|l| l != kept.level)
            || kept.bytes != *bytes
        {
            return None;
        }
        for (parent, node) in &kept.parents {
            let (found, _) = self.reuse(*parent, None)?;
            if !Arc::ptr_eq(&found, node) {
                return None;
            }
        }
        self.bytes.remove(&id);
        self.decoded.insert(id, kept.node.clone());
        Some((kept.node.clone(), true))
    }

    /// Takes the encoding of node `id` to decode it, and opens its frame.
    pub(super) fn begin(&mut self, id: RddId) -> Option<(bool, Vec<u8>)> {
        let taken = self.bytes.remove(&id)?;
        self.frames.push(Vec::new());
        Some(taken)
    }

    /// Closes the frame [`begin`](Self::begin) opened; returns the parents it resolved.
    pub(super) fn end(&mut self) -> Vec<(RddId, AnyNode, bool)> {
        self.frames.pop().unwrap_or_default()
    }

    /// Records a node decoded (or reused) by this decode: as its parent's, for the node being
    /// decoded around it.
    pub(super) fn resolved(&mut self, id: RddId, node: &AnyNode, keep: bool) {
        self.decoded.entry(id).or_insert_with(|| node.clone());
        if !keep {
            self.unkept.insert(id);
        }
        if let Some(frame) = self.frames.last_mut() {
            frame.push((id, node.clone(), keep));
        }
    }

    /// Keeps a node this decode made, for later decodes.
    pub(super) fn keep(
        &self,
        id: RddId,
        (checkpointed, level, bytes): (bool, StorageLevel, Vec<u8>),
        parents: Vec<(RddId, AnyNode, bool)>,
        node: &AnyNode,
    ) {
        let Some(key) = self.key else { return };
        if bytes.len() > MAX_NODE_BYTES {
            return;
        }
        let entry = Decoded {
            key,
            checkpointed,
            level,
            parents: parents.into_iter().map(|(id, node, _)| (id, node)).collect(),
            node: node.clone(),
            bytes,
        };
        let size = weight(&entry);
        let mut cache = cache().lock().unwrap_or_else(|p| p.into_inner());
        if cache.weight + size > CACHE_WEIGHT {
            // Dropped outside the lock: nodes may hold much.
            let old = std::mem::take(&mut *cache);
            drop(cache);
            drop(old);
            cache = self::cache().lock().unwrap_or_else(|p| p.into_inner());
        }
        if let Some(old) = cache.nodes.insert(id, Arc::new(entry)) {
            cache.weight = cache.weight.saturating_sub(weight(&old));
        }
        cache.weight += size;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crate::ship::ShipKey;
    use crate::storage::StorageLevel;
    use crate::{Context, EmberConf, Rdd};

    fn context(checkpoints: &std::path::Path) -> Context {
        let conf = EmberConf::new()
            .master("local[2]")
            .and_then(|c| c.set("ember.ui.showConsoleProgress", "false"))
            .and_then(|c| c.set("ember.checkpoint.dir", checkpoints.to_str().unwrap()))
            .unwrap();
        Context::new(conf).unwrap()
    }

    fn decode(key: &ShipKey, rdd: &Rdd<u64>) -> Rdd<u64> {
        key.decode::<Rdd<u64>>(&key.encode(rdd).unwrap()).unwrap()
    }

    #[test]
    fn the_same_lineage_decodes_to_the_same_nodes_and_a_changed_one_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = context(dir.path());
        let key = ShipKey::local();
        let base = ctx.parallelize((0..100u64).collect(), 4);
        let top = base.map(|x| x + 1).filter(|x| x % 3 != 0);
        let (first, again) = (decode(key, &top), decode(key, &top));
        assert!(Arc::ptr_eq(&first.node, &again.node), "an unchanged lineage is decoded once");
        assert_eq!(again.num_partitions(), 4);

        // A node on top of it: new, but its parents are the very nodes decoded before.
        let longer = top.map(|x| x * 2);
        let decoded = decode(key, &longer);
        assert!(!Arc::ptr_eq(&decoded.node, &first.node));
        assert_eq!(decoded.num_partitions(), 4);

        // Another key's encoding of the same lineage is decoded afresh.
        // SAFETY: a key only this test holds.
        let other = unsafe { ShipKey::for_verified_peers(*b"decoded-test-key") };
        let theirs = other.decode::<Rdd<u64>>(&other.encode(&top).unwrap()).unwrap();
        assert!(!Arc::ptr_eq(&theirs.node, &first.node));

        // A node persisted since: its reference (and so its encoding) changed.
        top.persist(StorageLevel::MemoryOnly).unwrap();
        let persisted = decode(key, &top);
        assert!(!Arc::ptr_eq(&persisted.node, &first.node));
        assert_eq!(persisted.storage_level(), StorageLevel::MemoryOnly);
    }

    #[test]
    fn nodes_holding_a_broadcast_value_are_not_kept() {
        // Tasks encoded and decoded as for a remote executor, with a task's environment to
        // resolve the broadcast in.
        let conf = EmberConf::new()
            .master("local[2]")
            .and_then(|c| c.set("ember.ui.showConsoleProgress", "false"))
            .and_then(|c| c.set("ember.local.serializeTasks", "true"))
            .unwrap();
        let ctx = Context::new(conf).unwrap();
        let table = ctx.broadcast(vec![5u64; 1000]);
        let base = ctx.parallelize((0..100u64).collect(), 4).map(|x| x + 1);
        let with_value = base.map_with(table, |t, x| x + t[0]);
        let above = with_value.map(|x| x * 2);
        let got = above.collect().unwrap();
        assert_eq!(got, (0..100u64).map(|x| (x + 6) * 2).collect::<Vec<_>>());
        assert!(super::holds(base.id()), "a node without a broadcast is kept");
        assert!(!super::holds(with_value.id()), "the node holding the broadcast value is not kept");
        assert!(!super::holds(above.id()), "nor a node above it");
    }

    #[test]
    fn a_node_whose_parent_changed_is_decoded_again() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = context(dir.path());
        let key = ShipKey::local();
        let base = ctx.parallelize((0..100u64).collect(), 4).map(|x| x + 7);
        let top = base.map(|x| x * 3);
        let first = decode(key, &top);
        // The parent is checkpointed: its encoding changes, the child's does not (it names the
        // parent by id), yet the child must not keep pointing at the old parent.
        base.checkpoint().unwrap();
        base.count().unwrap();
        assert!(base.is_checkpointed());
        let after = decode(key, &top);
        assert!(!Arc::ptr_eq(&after.node, &first.node), "the child was reused over a changed parent");
        assert_eq!(after.num_partitions(), 4);
    }
}
