//! Transformations of key/value RDDs that shuffle: aggregation by key, grouping, joins,
//! partitioning and sorting.

use std::marker::PhantomData;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::actions::PartitionFn;
use super::narrow::SplitMix;
use super::{Dependency, Rdd, RddImpl};
use crate::collections::{ExternalSorter, SpillableMap};
use crate::data::{Data, Key};
use crate::error::Result;
use crate::ship::{Fun, Marker, Ship};
use crate::shuffle::{
    Aggregator, CombineAgg, GroupAgg, HashPartitioner, Partitioner, RangePartitioner, ReduceAgg, ShuffleDepBase,
    ShuffleDependency, ZeroAgg,
};
use crate::task::{BoxIter, TaskContext};

fn default_name() -> &'static str {
    "shuffle"
}

/// The reduce side of an aggregating shuffle: combines the values of each key.
#[derive(Serialize, Deserialize)]
#[serde(bound = "K: Key, V: Data, C: Data")]
pub(crate) struct AggregatedRdd<K, V, C> {
    dep: Arc<ShuffleDependency<K, V, C>>,
    #[serde(skip, default = "default_name")]
    name: &'static str,
}

impl<K: Key, V: Data, C: Data> RddImpl<(K, C)> for AggregatedRdd<K, V, C> {
    fn name(&self) -> &'static str {
        self.name
    }
    fn num_partitions(&self) -> usize {
        self.dep.num_partitions()
    }
    fn dependencies(&self) -> Vec<Dependency> {
        vec![Dependency::Shuffle(self.dep.clone() as Arc<dyn ShuffleDepBase>)]
    }
    fn compute<'a>(&'a self, split: usize, tc: &'a TaskContext) -> BoxIter<'a, (K, C)> {
        let Some(agg) = self.dep.aggregator.as_ref() else {
            tc.fail(crate::error::Error::Internal("aggregated shuffle without an aggregator".into()));
            return Box::new(std::iter::empty());
        };
        let agg: &'a dyn Aggregator<V, C> = &**agg.get();
        let mut map = SpillableMap::<K, C>::new(tc);
        // The readers are iterated directly: every record of the partition goes through this loop.
        // `try_for_each` calls the reader's `next`, whose kill and fetch-failure checks every
        // record passes (`ShuffleReader` must not override `try_fold` without them).
        let res = if self.dep.map_side_combine {
            self.dep.reader::<C>(split, tc).and_then(|mut reader| {
                reader.try_for_each(|(k, c)| map.insert(k, c, |c| c, |a, b| agg.merge_combiners(a, b)))
            })
        } else {
            self.dep.reader::<V>(split, tc).and_then(|mut reader| {
                reader.try_for_each(|(k, v)| map.insert(k, v, |v| agg.create(v), |c, v| agg.merge_value(c, v)))
            })
        };
        if let Err(e) = res {
            tc.fail(e);
            return Box::new(std::iter::empty());
        }
        match map.into_iter(move |a, b| agg.merge_combiners(a, b)) {
            Ok(it) => it,
            Err(e) => {
                tc.fail(e);
                Box::new(std::iter::empty())
            }
        }
    }
}

/// The reduce side of a plain shuffle (`partition_by`): records as the map side wrote them.
#[derive(Serialize, Deserialize)]
#[serde(bound = "K: Key, V: Data")]
pub(crate) struct ShuffledRdd<K, V> {
    dep: Arc<ShuffleDependency<K, V, V>>,
}

impl<K: Key, V: Data> RddImpl<(K, V)> for ShuffledRdd<K, V> {
    fn name(&self) -> &'static str {
        "partition_by"
    }
    fn num_partitions(&self) -> usize {
        self.dep.num_partitions()
    }
    fn dependencies(&self) -> Vec<Dependency> {
        vec![Dependency::Shuffle(self.dep.clone() as Arc<dyn ShuffleDepBase>)]
    }
    fn compute<'a>(&'a self, split: usize, tc: &'a TaskContext) -> BoxIter<'a, (K, V)> {
        self.dep.read::<V>(split, tc)
    }
}

/// Sorts each partition by key, spilling when memory runs short.
#[derive(Serialize, Deserialize)]
#[serde(bound = "K: Data, V: Data")]
pub(crate) struct SortedRdd<K, V> {
    parent: Rdd<(K, V)>,
    ascending: bool,
}

impl<K: Data + Ord, V: Data> RddImpl<(K, V)> for SortedRdd<K, V> {
    fn name(&self) -> &'static str {
        "sort_by_key"
    }
    fn num_partitions(&self) -> usize {
        self.parent.num_partitions()
    }
    fn dependencies(&self) -> Vec<Dependency> {
        vec![Dependency::Narrow(self.parent.as_base())]
    }
    fn compute<'a>(&'a self, split: usize, tc: &'a TaskContext) -> BoxIter<'a, (K, V)> {
        let mut sorter = ExternalSorter::new(tc, self.ascending);
        for kv in self.parent.iterator(split, tc) {
            if let Err(e) = sorter.insert(kv) {
                tc.fail(e);
                return Box::new(std::iter::empty());
            }
        }
        match sorter.into_iter() {
            Ok(it) => it,
            Err(e) => {
                tc.fail(e);
                Box::new(std::iter::empty())
            }
        }
    }
}

/// Reservoir-samples up to `n` keys of a partition (for range partitioning).
#[derive(Serialize, Deserialize)]
#[serde(bound = "")]
struct SampleKeysFn<K, V> {
    n: usize,
    seed: u64,
    _kv: Marker<(K, V)>,
}

impl<K: Data, V: Data> PartitionFn<(K, V), (u64, Vec<K>)> for SampleKeysFn<K, V> {
    fn call(&self, _: &TaskContext, split: usize, it: BoxIter<'_, (K, V)>) -> Result<(u64, Vec<K>)> {
        let mut rng = SplitMix::new(self.seed ^ split as u64);
        let mut sample = Vec::with_capacity(self.n);
        let mut seen = 0u64;
        for (k, _) in it {
            seen += 1;
            if sample.len() < self.n {
                sample.push(k);
            } else {
                let j = rng.next_u64() % seen;
                if (j as usize) < self.n {
                    sample[j as usize] = k;
                }
            }
        }
        Ok((seen, sample))
    }
}

/// One side of a cogroup.
#[derive(Clone, Serialize, Deserialize)]
pub(crate) enum Side<V, W> {
    L(V),
    R(W),
}

fn split_sides<V, W>(items: Vec<Side<V, W>>) -> (Vec<V>, Vec<W>) {
    let mut vs = Vec::new();
    let mut ws = Vec::new();
    for s in items {
        match s {
            Side::L(v) => vs.push(v),
            Side::R(w) => ws.push(w),
        }
    }
    (vs, ws)
}

/// Every pair of a value of `vs` and a value of `ws`, made one at a time.
struct CrossProduct<V, W> {
    vs: Vec<V>,
    ws: Vec<W>,
    i: usize,
    j: usize,
}

impl<V: Clone, W: Clone> Iterator for CrossProduct<V, W> {
    type Item = (V, W);
    fn next(&mut self) -> Option<(V, W)> {
        let v = self.vs.get(self.i)?;
        let w = self.ws.get(self.j)?;
        let pair = (v.clone(), w.clone());
        self.j += 1;
        if self.j == self.ws.len() {
            self.j = 0;
            self.i += 1;
        }
        Some(pair)
    }
}

fn add_u64(a: u64, b: u64) -> u64 {
    a + b
}

impl<K: Key, V: Data> Rdd<(K, V)> {
    pub(super) fn shuffle_partitions(&self, requested: Option<usize>, others: &[usize]) -> usize {
        requested
            .or_else(|| self.context().ok().and_then(|c| c.settings().shuffle_partitions_explicit))
            .unwrap_or_else(|| others.iter().copied().chain([self.num_partitions()]).max().unwrap_or(1))
            .max(1)
    }

    fn aggregate_with<C: Data, A>(
        &self,
        agg: A,
        map_side_combine: bool,
        partitions: usize,
        name: &'static str,
    ) -> Rdd<(K, C)>
    where
        A: Aggregator<V, C> + Serialize + serde::de::DeserializeOwned,
    {
        self.aggregate_into(Ship::new(HashPartitioner::<K>::new(partitions)), agg, map_side_combine, name)
    }

    pub(super) fn aggregate_into<C: Data, A>(
        &self,
        partitioner: Ship<dyn Partitioner<K>>,
        agg: A,
        map_side_combine: bool,
        name: &'static str,
    ) -> Rdd<(K, C)>
    where
        A: Aggregator<V, C> + Serialize + serde::de::DeserializeOwned,
    {
        let dep = ShuffleDependency::new(self.clone(), partitioner, Some(Ship::new(agg)), map_side_combine);
        self.derive(AggregatedRdd { dep: Arc::new(dep), name })
    }

    /// `reduce_by_key` into the partitions of an explicit partitioner.
    pub fn reduce_by_key_with<P, F>(&self, partitioner: P, f: F) -> Rdd<(K, V)>
    where
        P: Partitioner<K> + Serialize + serde::de::DeserializeOwned,
        F: Fn(V, V) -> V + Send + Sync + 'static,
    {
        let agg = ReduceAgg::<V, F> { f: Fun::new(f), _v: PhantomData };
        self.aggregate_into(Ship::new(partitioner), agg, true, "reduce_by_key")
    }

    /// Combines the values of each key with Spark's three functions: `create` makes a combiner
    /// from a first value, `merge_value` adds a value, `merge_combiners` merges two combiners.
    /// Values are combined on the map side before the shuffle.
    pub fn combine_by_key<C: Data, Cr, Mv, Mc>(
        &self,
        create: Cr,
        merge_value: Mv,
        merge_combiners: Mc,
        num_partitions: Option<usize>,
    ) -> Rdd<(K, C)>
    where
        Cr: Fn(V) -> C + Send + Sync + 'static,
        Mv: Fn(C, V) -> C + Send + Sync + 'static,
        Mc: Fn(C, C) -> C + Send + Sync + 'static,
    {
        let agg = CombineAgg::<V, C, Cr, Mv, Mc> {
            create: Fun::new(create),
            merge_value: Fun::new(merge_value),
            merge_combiners: Fun::new(merge_combiners),
            _vc: PhantomData,
        };
        let n = self.shuffle_partitions(num_partitions, &[]);
        self.aggregate_with(agg, true, n, "combine_by_key")
    }

    /// Merges the values of each key with an associative, commutative function (combined on the
    /// map side first).
    pub fn reduce_by_key<F>(&self, f: F, num_partitions: Option<usize>) -> Rdd<(K, V)>
    where
        F: Fn(V, V) -> V + Send + Sync + 'static,
    {
        let n = self.shuffle_partitions(num_partitions, &[]);
        self.aggregate_with(ReduceAgg::<V, F> { f: Fun::new(f), _v: PhantomData }, true, n, "reduce_by_key")
    }

    /// Folds the values of each key, starting from `zero` in each partition.
    pub fn fold_by_key<F>(&self, zero: V, f: F, num_partitions: Option<usize>) -> Rdd<(K, V)>
    where
        F: Fn(V, V) -> V + Send + Sync + 'static,
    {
        let n = self.shuffle_partitions(num_partitions, &[]);
        let f = Fun::new(f);
        let agg = ZeroAgg::<V, V, F, F> { zero, seq: f, comb: f, _v: PhantomData };
        self.aggregate_with(agg, true, n, "fold_by_key")
    }

    /// Aggregates the values of each key into `U`: `seq` adds a value, `comb` merges partials.
    pub fn aggregate_by_key<U: Data, S, C>(
        &self,
        zero: U,
        seq: S,
        comb: C,
        num_partitions: Option<usize>,
    ) -> Rdd<(K, U)>
    where
        S: Fn(U, V) -> U + Send + Sync + 'static,
        C: Fn(U, U) -> U + Send + Sync + 'static,
    {
        let n = self.shuffle_partitions(num_partitions, &[]);
        let agg = ZeroAgg::<V, U, S, C> { zero, seq: Fun::new(seq), comb: Fun::new(comb), _v: PhantomData };
        self.aggregate_with(agg, true, n, "aggregate_by_key")
    }

    /// Groups the values of each key (no map-side combine, as in Spark).
    pub fn group_by_key(&self, num_partitions: Option<usize>) -> Rdd<(K, Vec<V>)> {
        let n = self.shuffle_partitions(num_partitions, &[]);
        self.aggregate_with(GroupAgg::<V>(PhantomData), false, n, "group_by_key")
    }

    /// Redistributes records by `partitioner`.
    pub fn partition_by<P>(&self, partitioner: P) -> Rdd<(K, V)>
    where
        P: Partitioner<K> + Serialize + serde::de::DeserializeOwned,
    {
        let dep = ShuffleDependency::<K, V, V>::new(self.clone(), Ship::new(partitioner), None, false);
        self.derive(ShuffledRdd { dep: Arc::new(dep) })
    }

    /// Sorts by key through a range partitioner whose bounds come from a sample of the keys
    /// (one sampling job); each output partition is sorted, and partitions are in key order.
    pub fn sort_by_key(&self, ascending: bool, num_partitions: Option<usize>) -> Result<Rdd<(K, V)>>
    where
        K: Ord,
    {
        let n = num_partitions.unwrap_or_else(|| self.num_partitions()).max(1);
        let bounds = if n > 1 && self.num_partitions() > 0 {
            let per_part = (20 * n).div_ceil(self.num_partitions()).clamp(20, 100_000) * 3;
            let sample: Vec<K> = self
                .context()?
                .run_job(self, Ship::new(SampleKeysFn::<K, V> { n: per_part, seed: 0x5eed, _kv: PhantomData }), None)?
                .into_iter()
                .flat_map(|(_, s)| s)
                .collect();
            RangePartitioner::from_sample(sample, n, ascending)
        } else {
            RangePartitioner::new(Vec::new(), ascending)
        };
        let shuffled = self.partition_by(bounds);
        Ok(shuffled.derive(SortedRdd { parent: shuffled.clone(), ascending }))
    }

    /// Sorts each partition by key, without moving records between partitions.
    pub fn sort_within_partitions(&self, ascending: bool) -> Rdd<(K, V)>
    where
        K: Ord,
    {
        self.derive(SortedRdd { parent: self.clone(), ascending })
    }

    /// For each key, the values in this RDD and in `other`.
    pub fn cogroup<W: Data>(&self, other: &Rdd<(K, W)>, num_partitions: Option<usize>) -> Rdd<(K, (Vec<V>, Vec<W>))> {
        let n = self.shuffle_partitions(num_partitions, &[other.num_partitions()]);
        let left = self.map_values(Side::<V, W>::L);
        let right = other.map_values(Side::<V, W>::R);
        left.union(&right).group_by_key(Some(n)).map_values(split_sides::<V, W>)
    }

    /// Inner join: every pair of values of keys present in both RDDs. A key's values are
    /// grouped (and accounted) by the cogroup; their pairs are made as they are consumed, so
    /// the cross product of a key is never held in memory (nor in the outer joins).
    pub fn join<W: Data>(&self, other: &Rdd<(K, W)>, num_partitions: Option<usize>) -> Rdd<(K, (V, W))> {
        self.cogroup(other, num_partitions).flat_map_values(|(vs, ws): (Vec<V>, Vec<W>)| CrossProduct {
            vs,
            ws,
            i: 0,
            j: 0,
        })
    }

    /// Left outer join: every value of this RDD, with `None` where `other` lacks the key.
    pub fn left_outer_join<W: Data>(
        &self,
        other: &Rdd<(K, W)>,
        num_partitions: Option<usize>,
    ) -> Rdd<(K, (V, Option<W>))> {
        self.cogroup(other, num_partitions).flat_map_values(|(vs, ws): (Vec<V>, Vec<W>)| -> BoxIter<'static, _> {
            if ws.is_empty() {
                Box::new(vs.into_iter().map(|v| (v, None)))
            } else {
                Box::new(CrossProduct { vs, ws, i: 0, j: 0 }.map(|(v, w)| (v, Some(w))))
            }
        })
    }

    /// Right outer join: every value of `other`, with `None` where this RDD lacks the key.
    pub fn right_outer_join<W: Data>(
        &self,
        other: &Rdd<(K, W)>,
        num_partitions: Option<usize>,
    ) -> Rdd<(K, (Option<V>, W))> {
        self.cogroup(other, num_partitions).flat_map_values(|(vs, ws): (Vec<V>, Vec<W>)| -> BoxIter<'static, _> {
            if vs.is_empty() {
                Box::new(ws.into_iter().map(|w| (None, w)))
            } else {
                Box::new(CrossProduct { vs: ws, ws: vs, i: 0, j: 0 }.map(|(w, v)| (Some(v), w)))
            }
        })
    }

    /// Full outer join: every value of both RDDs, with `None` on the side lacking the key.
    pub fn full_outer_join<W: Data>(
        &self,
        other: &Rdd<(K, W)>,
        num_partitions: Option<usize>,
    ) -> Rdd<(K, (Option<V>, Option<W>))> {
        self.cogroup(other, num_partitions).flat_map_values(|(vs, ws): (Vec<V>, Vec<W>)| -> BoxIter<'static, _> {
            if vs.is_empty() {
                Box::new(ws.into_iter().map(|w| (None, Some(w))))
            } else if ws.is_empty() {
                Box::new(vs.into_iter().map(|v| (Some(v), None)))
            } else {
                Box::new(CrossProduct { vs, ws, i: 0, j: 0 }.map(|(v, w)| (Some(v), Some(w))))
            }
        })
    }

    /// The records of this RDD whose key does not occur in `other`.
    pub fn subtract_by_key<W: Data>(&self, other: &Rdd<(K, W)>, num_partitions: Option<usize>) -> Rdd<(K, V)> {
        self.cogroup(other, num_partitions)
            .flat_map_values(|(vs, ws): (Vec<V>, Vec<W>)| if ws.is_empty() { vs } else { Vec::new() })
    }

    /// Counts records per key without bringing them to the driver (an RDD of counts).
    pub fn count_per_key(&self, num_partitions: Option<usize>) -> Rdd<(K, u64)> {
        self.map_values(|_| 1u64).reduce_by_key(add_u64, num_partitions)
    }
}
