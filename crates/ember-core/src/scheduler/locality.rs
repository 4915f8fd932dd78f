//! Where cached partitions are, and which executors a task should prefer.
//!
//! Executors report the RDD blocks they gain and lose; the driver keeps the locations here and
//! forgets an executor's when it is lost. A task prefers the executors holding a cached
//! partition its computation would read: the stage's RDD or, through narrow dependencies that
//! keep partition numbers (map, filter, zip, ...), its nearest cached ancestor. A wrong guess
//! costs only locality, never correctness: a task without its cached input reads it from a
//! holder, or computes it.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use crate::rdd::{Dependency, RddBase};
use crate::storage::{RddId, StorageLevel};

/// How far up the lineage a task's preference is looked for.
const MAX_STEPS: usize = 256;

/// The executors holding each cached partition (driver side).
#[derive(Default)]
pub struct BlockLocations {
    inner: Mutex<HashMap<(RddId, usize), Vec<Arc<str>>>>,
}

impl BlockLocations {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<(RddId, usize), Vec<Arc<str>>>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `executor` now holds partition `split` of `rdd`.
    pub fn added(&self, executor: &Arc<str>, rdd: RddId, split: usize) {
        let mut map = self.map();
        let holders = map.entry((rdd, split)).or_default();
        if !holders.iter().any(|h| h == executor) {
            holders.push(executor.clone());
        }
    }

    /// `executor` no longer holds partition `split` of `rdd`.
    pub fn removed(&self, executor: &str, rdd: RddId, split: usize) {
        let mut map = self.map();
        if let Some(holders) = map.get_mut(&(rdd, split)) {
            holders.retain(|h| &**h != executor);
            if holders.is_empty() {
                map.remove(&(rdd, split));
            }
        }
    }

    /// `executor` is gone with its blocks.
    pub fn executor_lost(&self, executor: &str) {
        self.map().retain(|_, holders| {
            holders.retain(|h| &**h != executor);
            !holders.is_empty()
        });
    }

    /// The executors holding partition `split` of `rdd`.
    pub fn locations(&self, rdd: RddId, split: usize) -> Vec<Arc<str>> {
        self.map().get(&(rdd, split)).cloned().unwrap_or_default()
    }

    /// Whether every one of the `partitions` partitions of `rdd` is cached on some executor.
    pub fn has_all(&self, rdd: RddId, partitions: usize) -> bool {
        let map = self.map();
        (0..partitions).all(|split| map.contains_key(&(rdd, split)))
    }

    /// Every cached partition an executor holds, sorted (for inspection and tests).
    pub fn held_by(&self, executor: &str) -> Vec<(RddId, usize)> {
        let mut held: Vec<(RddId, usize)> =
            self.map().iter().filter(|(_, h)| h.iter().any(|e| &**e == executor)).map(|(k, _)| *k).collect();
        held.sort();
        held
    }
}

/// The executors a task computing partition `split` of `rdd` should prefer: holders of the
/// nearest cached partition on its narrow lineage (empty when none is known), and that
/// partition (which a task placed elsewhere reads from one of them).
pub(crate) fn preferred(
    rdd: &Arc<dyn RddBase>,
    split: usize,
    locations: &BlockLocations,
) -> (Vec<Arc<str>>, Option<(RddId, usize)>) {
    match walk_cached(rdd, split, locations, |_| None).0 {
        Cached::Held(id, holders) => (holders, Some((id, split))),
        Cached::Coming(..) | Cached::Nothing => (Vec::new(), None),
    }
}

/// What a pre-scheduled task reads from the cache, found up its narrow lineage.
pub(crate) enum Cached {
    /// A cached partition (of the RDD with this id) and its holders (never empty).
    Held(RddId, Vec<Arc<str>>),
    /// A partition an earlier task of the group will cache, and on which executor.
    Coming(RddId, Arc<str>),
    /// Nothing cached or coming.
    Nothing,
}

/// The nearest persisted RDD on the narrow lineage of partition `split` of `rdd` (same
/// partition counts all the way) that is cached somewhere or will be (`coming` says where a
/// partition is being computed), and every persisted RDD passed on the way: computing the
/// partition caches them.
pub(crate) fn walk_cached(
    rdd: &Arc<dyn RddBase>,
    split: usize,
    locations: &BlockLocations,
    coming: impl Fn(RddId) -> Option<Arc<str>>,
) -> (Cached, Vec<RddId>) {
    let mut frontier = vec![rdd.clone()];
    let mut seen = HashSet::new();
    let mut passed = Vec::new();
    let mut steps = 0;
    while let Some(node) = frontier.pop() {
        steps += 1;
        if steps > MAX_STEPS || !seen.insert(node.id()) {
            continue;
        }
        if node.storage_level() != StorageLevel::None {
            let holders = locations.locations(node.id(), split);
            if !holders.is_empty() {
                return (Cached::Held(node.id(), holders), passed);
            }
            if let Some(exec) = coming(node.id()) {
                return (Cached::Coming(node.id(), exec), passed);
            }
            passed.push(node.id());
        }
        for dep in node.dependencies().into_iter().rev() {
            if let Dependency::Narrow(parent) = dep {
                if parent.num_partitions() == node.num_partitions() {
                    frontier.push(parent);
                }
            }
        }
    }
    (Cached::Nothing, passed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_follow_reports_and_losses() {
        let l = BlockLocations::default();
        let (a, b): (Arc<str>, Arc<str>) = (Arc::from("a"), Arc::from("b"));
        l.added(&a, RddId(1), 0);
        l.added(&b, RddId(1), 0);
        l.added(&a, RddId(1), 0);
        l.added(&b, RddId(2), 3);
        assert_eq!(l.locations(RddId(1), 0), vec![a.clone(), b.clone()]);
        l.removed("a", RddId(1), 0);
        assert_eq!(l.locations(RddId(1), 0), vec![b.clone()]);
        l.executor_lost("b");
        assert!(l.locations(RddId(1), 0).is_empty());
        assert!(l.locations(RddId(2), 3).is_empty());
        assert!(l.held_by("b").is_empty());
    }
}
