//! Partitioners: assign keys to reduce partitions deterministically across processes.

use std::hash::Hash;
use std::marker::PhantomData;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::data::{stable_hash, Data};
use crate::ship::{Marker, Upcast};

/// Assigns keys to partitions. Implementations must be deterministic across processes.
pub trait Partitioner<K>: Send + Sync + 'static {
    /// The number of partitions.
    fn num_partitions(&self) -> usize;
    /// The partition of `key`, in `0..num_partitions()`.
    fn partition(&self, key: &K) -> usize;
}

impl<K: 'static, R: Partitioner<K>> Upcast<dyn Partitioner<K>> for R {
    fn upcast(this: Arc<Self>) -> Arc<dyn Partitioner<K>> {
        this
    }
}

/// Partitions by a deterministic hash of the key.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(bound = "")]
pub struct HashPartitioner<K> {
    partitions: usize,
    _k: Marker<K>,
}

impl<K> HashPartitioner<K> {
    /// A hash partitioner over `partitions` partitions (at least 1).
    pub fn new(partitions: usize) -> Self {
        HashPartitioner { partitions: partitions.max(1), _k: PhantomData }
    }
}

impl<K: Hash + 'static> Partitioner<K> for HashPartitioner<K> {
    fn num_partitions(&self) -> usize {
        self.partitions
    }
    #[inline]
    fn partition(&self, key: &K) -> usize {
        (stable_hash(key) % self.partitions as u64) as usize
    }
}

/// Partitions integer keys by value: key `k` goes to partition `k % n` (what Spark's
/// `HashPartitioner` does with integer keys). Useful when keys are partition indexes.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct IndexPartitioner(usize);

impl IndexPartitioner {
    /// An index partitioner over `partitions` partitions (at least 1).
    pub fn new(partitions: usize) -> Self {
        IndexPartitioner(partitions.max(1))
    }
}

macro_rules! index_partitioner {
    ($($t:ty),*) => {$(
        impl Partitioner<$t> for IndexPartitioner {
            fn num_partitions(&self) -> usize {
                self.0
            }
            #[inline]
            fn partition(&self, key: &$t) -> usize {
                // Keys are usually indexes already in range: no division for them.
                let (k, n) = (*key as u64, self.0 as u64);
                (if k < n { k } else { k % n }) as usize
            }
        }
    )*};
}
index_partitioner!(u8, u16, u32, u64, usize);

/// Partitions ordered keys into ranges split at sorted bounds (computed by sampling).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(bound = "K: Data")]
pub struct RangePartitioner<K> {
    bounds: Vec<K>,
    ascending: bool,
}

impl<K: Ord> RangePartitioner<K> {
    /// A range partitioner with `bounds.len() + 1` partitions. `bounds` must be sorted
    /// ascending and free of duplicates.
    pub fn new(bounds: Vec<K>, ascending: bool) -> Self {
        RangePartitioner { bounds, ascending }
    }

    /// Picks up to `partitions - 1` bounds from a sample of keys so that partitions hold about
    /// the same number of sampled keys.
    pub fn from_sample(mut sample: Vec<K>, partitions: usize, ascending: bool) -> Self {
        sample.sort();
        sample.dedup();
        let mut bounds = Vec::new();
        let p = partitions.max(1);
        if !sample.is_empty() {
            for i in 1..p {
                let idx = i * sample.len() / p;
                if idx < sample.len() {
                    bounds.push(idx);
                }
            }
        }
        bounds.dedup();
        let mut keys: Vec<Option<K>> = sample.into_iter().map(Some).collect();
        let bounds: Vec<K> = bounds.into_iter().filter_map(|i| keys[i].take()).collect();
        RangePartitioner { bounds, ascending }
    }
}

impl<K: Data + Ord> Partitioner<K> for RangePartitioner<K> {
    fn num_partitions(&self) -> usize {
        self.bounds.len() + 1
    }
    #[inline]
    fn partition(&self, key: &K) -> usize {
        let p = self.bounds.partition_point(|b| b < key);
        if self.ascending {
            p
        } else {
            self.bounds.len() - p
        }
    }
}
