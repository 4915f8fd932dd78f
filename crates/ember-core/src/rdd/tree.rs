//! Multi-level aggregation: `tree_aggregate` and `tree_reduce` combine partition results in
//! shuffle stages of decreasing width before the driver merges the last few, as Spark does.

use std::marker::PhantomData;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::actions::PartitionFn;
use super::Rdd;
use crate::data::Data;
use crate::error::{Error, Result};
use crate::ship::{Fun, Marker, Ship};
use crate::shuffle::{Aggregator, IndexPartitioner};
use crate::task::{BoxIter, TaskContext};

/// How partial results merge: a zero and an associative merge.
trait Merge<U>: Data {
    fn zero(&self) -> U;
    fn merge(&self, a: U, b: U) -> U;
}

/// `tree_aggregate`'s combine function with its zero.
#[derive(Serialize, Deserialize)]
#[serde(bound = "U: Data, C: 'static")]
struct FoldMerge<U, C> {
    zero: U,
    comb: Fun<C>,
}

impl<U: Clone, C> Clone for FoldMerge<U, C> {
    fn clone(&self) -> Self {
        FoldMerge { zero: self.zero.clone(), comb: self.comb }
    }
}

impl<U: Data, C: Fn(U, U) -> U + Send + Sync + 'static> Merge<U> for FoldMerge<U, C> {
    fn zero(&self) -> U {
        self.zero.clone()
    }
    fn merge(&self, a: U, b: U) -> U {
        (self.comb.get2())(a, b)
    }
}

/// `tree_reduce`'s function lifted to partial results that may be empty.
#[derive(Serialize, Deserialize)]
#[serde(bound = "F: 'static")]
struct OptionMerge<T, F>(Fun<F>, Marker<T>);

impl<T, F> Clone for OptionMerge<T, F> {
    fn clone(&self) -> Self {
        OptionMerge(self.0, PhantomData)
    }
}

impl<T: Data, F: Fn(T, T) -> T + Send + Sync + 'static> Merge<Option<T>> for OptionMerge<T, F> {
    fn zero(&self) -> Option<T> {
        None
    }
    fn merge(&self, a: Option<T>, b: Option<T>) -> Option<T> {
        match (a, b) {
            (Some(a), Some(b)) => Some((self.0.get2())(a, b)),
            (a, None) => a,
            (None, b) => b,
        }
    }
}

/// A tree level's reduce side: Spark's `foldByKey(zero)(comb)` over the partials of a group.
#[derive(Serialize, Deserialize)]
#[serde(bound = "M: Data")]
struct MergeAgg<U, M>(M, Marker<U>);

impl<U: Data, M: Merge<U>> Aggregator<U, U> for MergeAgg<U, M> {
    fn create(&self, v: U) -> U {
        self.0.merge(self.0.zero(), v)
    }
    fn merge_value(&self, c: U, v: U) -> U {
        self.0.merge(c, v)
    }
    fn merge_combiners(&self, a: U, b: U) -> U {
        self.0.merge(a, b)
    }
}

/// The last level: each partition's partials folded from the zero.
#[derive(Serialize, Deserialize)]
#[serde(bound = "M: Data")]
struct FoldPartitionFn<U, M>(M, Marker<U>);

impl<U: Data, M: Merge<U>> PartitionFn<U, U> for FoldPartitionFn<U, M> {
    fn call(&self, _: &TaskContext, _: usize, it: BoxIter<'_, U>) -> Result<U> {
        Ok(it.fold(self.0.zero(), |a, b| self.0.merge(a, b)))
    }
}

fn check_depth(depth: usize) -> Result<()> {
    if depth < 1 {
        return Err(Error::InvalidArgument(format!("tree depth must be at least 1, got {depth}")));
    }
    Ok(())
}

/// Sends the partial in partition `i` to group `i % groups`.
fn to_group<'a, U: Data>(groups: &'a usize, split: usize, it: BoxIter<'a, U>) -> BoxIter<'a, (u64, U)> {
    let key = (split % *groups) as u64;
    Box::new(it.map(move |u| (key, u)))
}

fn value<U>(kv: (u64, U)) -> U {
    kv.1
}

/// Merges one partial per partition of `partials` in levels, as Spark's `treeAggregate`: while
/// an extra level pays off, partition `i` goes to group `i % (n / scale)` through a shuffle
/// (`scale` = max(2, ceil(n^(1/depth)))) whose reduce side folds each group. The driver folds
/// the last level.
fn tree_merge<U: Data, M: Merge<U> + DeserializeOwned>(partials: Rdd<U>, m: M, depth: usize) -> Result<U> {
    let mut level = partials;
    let mut n = level.num_partitions();
    let scale = ((n as f64).powf(1.0 / depth as f64).ceil() as usize).max(2);
    while n > scale + n.div_ceil(scale) {
        n /= scale;
        let keyed = level.map_partitions_with(n, to_group::<U>);
        let agg = MergeAgg::<U, M>(m.clone(), PhantomData);
        level = keyed.aggregate_into(Ship::new(IndexPartitioner::new(n)), agg, true, "tree_aggregate").map(value::<U>);
    }
    let parts = level.context()?.run_job(&level, Ship::new(FoldPartitionFn::<U, M>(m.clone(), PhantomData)), None)?;
    Ok(parts.into_iter().fold(m.zero(), |a, b| m.merge(a, b)))
}

impl<T: Data> Rdd<T> {
    /// [`Rdd::aggregate`] in a multi-level tree (Spark's `treeAggregate`): partitions are
    /// aggregated with `seq` from `zero`, then the partial results are combined with `comb` in
    /// up to `depth` levels, the intermediate ones as shuffle stages on the executors, so the
    /// driver receives few partials even when there are many partitions. `zero` should be
    /// neutral for `comb`, as for Spark (it starts every partition and every group). Errors
    /// when `depth` is 0; an RDD without partitions gives `zero`.
    pub fn tree_aggregate<U: Data, S, C>(&self, zero: U, seq: S, comb: C, depth: usize) -> Result<U>
    where
        S: Fn(U, T) -> U + Send + Sync + 'static,
        C: Fn(U, U) -> U + Send + Sync + 'static,
    {
        check_depth(depth)?;
        if self.num_partitions() == 0 {
            return Ok(zero);
        }
        let partials = self.map_partitions_with((zero.clone(), Fun::new(seq)), |env: &(U, Fun<S>), _, it| {
            Box::new(std::iter::once(it.fold(env.0.clone(), env.1.get2())))
        });
        tree_merge(partials, FoldMerge { zero, comb: Fun::new(comb) }, depth)
    }

    /// [`Rdd::reduce`] in a multi-level tree (Spark's `treeReduce`): see
    /// [`Rdd::tree_aggregate`]. `None` when the RDD is empty; errors when `depth` is 0.
    pub fn tree_reduce<F>(&self, f: F, depth: usize) -> Result<Option<T>>
    where
        F: Fn(T, T) -> T + Send + Sync + 'static,
    {
        check_depth(depth)?;
        if self.num_partitions() == 0 {
            return Ok(None);
        }
        let f = Fun::new(f);
        let partials = self.map_partitions_with(f, |f: &Fun<F>, _, it| Box::new(std::iter::once(it.reduce(f.get2()))));
        tree_merge(partials, OptionMerge::<T, F>(f, PhantomData), depth)
    }
}
