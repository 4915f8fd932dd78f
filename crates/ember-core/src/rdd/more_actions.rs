//! Actions ordering records by a key function (`max_by`, `min_by`, `top_by`,
//! `take_ordered_by`), `to_local_iterator`, and `zip_with_unique_id`.

use std::marker::PhantomData;

use serde::{Deserialize, Serialize};

use super::actions::{CollectPartition, PartitionFn};
use super::narrow::{Op, PipeRdd};
use super::Rdd;
use crate::data::Data;
use crate::error::Result;
use crate::ship::{Fun, Marker, Ship};
use crate::task::{BoxIter, TaskContext};

/// The record with the largest (or smallest) key; on ties the first one seen wins.
fn extreme<T, K: Ord>(it: impl Iterator<Item = T>, key: &impl Fn(&T) -> K, largest: bool) -> Option<T> {
    let mut best: Option<(K, T)> = None;
    for x in it {
        let k = key(&x);
        let better = match &best {
            None => true,
            Some((bk, _)) => {
                if largest {
                    k > *bk
                } else {
                    k < *bk
                }
            }
        };
        if better {
            best = Some((k, x));
        }
    }
    best.map(|b| b.1)
}

/// The `n` records first in key order (descending for `largest`), ties broken by position, in
/// that order. Keeps at most `2n` candidates at a time.
fn best_n<T, K: Ord>(it: impl Iterator<Item = T>, n: usize, key: &impl Fn(&T) -> K, largest: bool) -> Vec<T> {
    if n == 0 {
        return Vec::new();
    }
    let order = |a: &(K, usize, T), b: &(K, usize, T)| {
        let by_key = if largest { b.0.cmp(&a.0) } else { a.0.cmp(&b.0) };
        by_key.then(a.1.cmp(&b.1))
    };
    let limit = n.saturating_mul(2).max(16);
    let mut buf: Vec<(K, usize, T)> = Vec::new();
    for (i, x) in it.enumerate() {
        buf.push((key(&x), i, x));
        if buf.len() >= limit {
            buf.select_nth_unstable_by(n - 1, order);
            buf.truncate(n);
        }
    }
    buf.sort_by(order);
    buf.truncate(n);
    buf.into_iter().map(|e| e.2).collect()
}

#[derive(Serialize, Deserialize)]
#[serde(bound = "F: 'static")]
struct ExtremeFn<T, K, F> {
    f: Fun<F>,
    largest: bool,
    _tk: Marker<(T, K)>,
}

impl<T: Data, K: Ord + 'static, F: Fn(&T) -> K + Send + Sync + 'static> PartitionFn<T, Option<T>>
    for ExtremeFn<T, K, F>
{
    fn call(&self, _: &TaskContext, _: usize, it: BoxIter<'_, T>) -> Result<Option<T>> {
        Ok(extreme(it, self.f.get1(), self.largest))
    }
}

#[derive(Serialize, Deserialize)]
#[serde(bound = "F: 'static")]
struct BestNFn<T, K, F> {
    n: usize,
    f: Fun<F>,
    largest: bool,
    _tk: Marker<(T, K)>,
}

impl<T: Data, K: Ord + 'static, F: Fn(&T) -> K + Send + Sync + 'static> PartitionFn<T, Vec<T>> for BestNFn<T, K, F> {
    fn call(&self, _: &TaskContext, _: usize, it: BoxIter<'_, T>) -> Result<Vec<T>> {
        Ok(best_n(it, self.n, self.f.get1(), self.largest))
    }
}

/// `zip_with_unique_id`: record `i` of partition `k` of `n` gets `i * n + k`.
#[derive(Serialize, Deserialize)]
struct ZipWithUniqueIdOp {
    partitions: u64,
}

impl<T: Data> Op<T, (T, u64)> for ZipWithUniqueIdOp {
    fn name(&self) -> &'static str {
        "zip_with_unique_id"
    }
    fn apply<'a>(&'a self, split: usize, input: BoxIter<'a, T>, _: &'a TaskContext) -> BoxIter<'a, (T, u64)> {
        let (n, k) = (self.partitions, split as u64);
        Box::new(input.zip(0u64..).map(move |(x, i)| (x, i.wrapping_mul(n).wrapping_add(k))))
    }
}

/// The records of an RDD fetched one partition (one job) at a time: see
/// [`Rdd::to_local_iterator`].
pub struct LocalIterator<T> {
    rdd: Rdd<T>,
    next_split: usize,
    current: std::vec::IntoIter<T>,
    done: bool,
}

impl<T: Data> Iterator for LocalIterator<T> {
    type Item = Result<T>;

    fn next(&mut self) -> Option<Result<T>> {
        loop {
            if let Some(x) = self.current.next() {
                return Some(Ok(x));
            }
            if self.done || self.next_split >= self.rdd.num_partitions() {
                return None;
            }
            let split = self.next_split;
            self.next_split += 1;
            let fetched = self
                .rdd
                .context()
                .and_then(|ctx| ctx.run_job(&self.rdd, Ship::new(CollectPartition::<T>::default()), Some(vec![split])));
            match fetched {
                Ok(parts) => self.current = parts.into_iter().flatten().collect::<Vec<T>>().into_iter(),
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            }
        }
    }
}

impl<T: Data> Rdd<T> {
    fn extreme_by<K: Ord + 'static, F>(&self, f: F, largest: bool) -> Result<Option<T>>
    where
        F: Fn(&T) -> K + Send + Sync + 'static,
    {
        let f = Fun::new(f);
        let job = ExtremeFn::<T, K, F> { f, largest, _tk: PhantomData };
        let parts = self.context()?.run_job(self, Ship::new(job), None)?;
        Ok(extreme(parts.into_iter().flatten(), f.get1(), largest))
    }

    fn best_n_by<K: Ord + 'static, F>(&self, n: usize, f: F, largest: bool) -> Result<Vec<T>>
    where
        F: Fn(&T) -> K + Send + Sync + 'static,
    {
        let f = Fun::new(f);
        let job = BestNFn::<T, K, F> { n, f, largest, _tk: PhantomData };
        let parts = self.context()?.run_job(self, Ship::new(job), None)?;
        // Partition results in partition order: ties keep their order in the RDD.
        Ok(best_n(parts.into_iter().flatten(), n, f.get1(), largest))
    }

    /// The record with the largest key `f` gives it (PySpark's `max(key=f)`); on ties, the
    /// first such record in RDD order. `None` when empty. Unlike `Iterator::max_by`, `f` is a
    /// key function, not a comparator; for `f64` keys use [`crate::OrderedF64`].
    pub fn max_by<K: Ord + 'static, F>(&self, f: F) -> Result<Option<T>>
    where
        F: Fn(&T) -> K + Send + Sync + 'static,
    {
        self.extreme_by(f, true)
    }

    /// The record with the smallest key `f` gives it (PySpark's `min(key=f)`); on ties, the
    /// first such record in RDD order. `None` when empty.
    pub fn min_by<K: Ord + 'static, F>(&self, f: F) -> Result<Option<T>>
    where
        F: Fn(&T) -> K + Send + Sync + 'static,
    {
        self.extreme_by(f, false)
    }

    /// The `n` records with the largest keys, in descending key order (PySpark's
    /// `top(n, key=f)`); records with equal keys keep their RDD order.
    pub fn top_by<K: Ord + 'static, F>(&self, n: usize, f: F) -> Result<Vec<T>>
    where
        F: Fn(&T) -> K + Send + Sync + 'static,
    {
        self.best_n_by(n, f, true)
    }

    /// The `n` records with the smallest keys, in ascending key order (PySpark's
    /// `takeOrdered(n, key=f)`); records with equal keys keep their RDD order.
    pub fn take_ordered_by<K: Ord + 'static, F>(&self, n: usize, f: F) -> Result<Vec<T>>
    where
        F: Fn(&T) -> K + Send + Sync + 'static,
    {
        self.best_n_by(n, f, false)
    }

    /// Pairs each record with a unique id without running a job (Spark's
    /// `zipWithUniqueId`): with `n` partitions, the records of partition `k` get ids `k`,
    /// `n + k`, `2n + k`, ... Ids are unique but not consecutive; see
    /// [`Rdd::zip_with_index`] for consecutive ones.
    pub fn zip_with_unique_id(&self) -> Rdd<(T, u64)> {
        self.derive(PipeRdd::new(self, ZipWithUniqueIdOp { partitions: self.num_partitions() as u64 }))
    }

    /// An iterator over all records that runs one job per partition, as the iterator reaches
    /// it (Spark's `toLocalIterator`): the driver holds one partition at a time rather than the
    /// whole RDD. A failed job is yielded as an `Err`, after which the iterator ends.
    pub fn to_local_iterator(&self) -> LocalIterator<T> {
        LocalIterator { rdd: self.clone(), next_split: 0, current: Vec::new().into_iter(), done: false }
    }
}
