//! The transformations of every RDD: lazy operations that build a new RDD from this one.

use std::marker::PhantomData;

use super::narrow::*;
use super::Rdd;
use crate::data::{Data, Key};
use crate::error::{Error, Result};
use crate::ship::Fun;
use crate::shuffle::IndexPartitioner;
use crate::task::BoxIter;

fn first<A, B>(p: (A, B)) -> A {
    p.0
}
fn second<A, B>(p: (A, B)) -> B {
    p.1
}
fn unit_pair<T>(x: T) -> (T, ())
where
    T: Data,
{
    (x, ())
}
fn keep_left<T>(a: T, _b: T) -> T {
    a
}

impl<T: Data> Rdd<T> {
    /// Applies `f` to every record.
    pub fn map<U: Data, F>(&self, f: F) -> Rdd<U>
    where
        F: Fn(T) -> U + Send + Sync + 'static,
    {
        self.derive(PipeRdd::new(self, MapOp(Fun::new(f))))
    }

    /// Applies `f` to every record with an environment value `env` (serialized into the task).
    pub fn map_with<E: Data, U: Data, F>(&self, env: E, f: F) -> Rdd<U>
    where
        F: Fn(&E, T) -> U + Send + Sync + 'static,
    {
        self.derive(PipeRdd::new(self, MapWithOp(env, Fun::new(f))))
    }

    /// Keeps the records for which `f` is true.
    pub fn filter<F>(&self, f: F) -> Rdd<T>
    where
        F: Fn(&T) -> bool + Send + Sync + 'static,
    {
        self.derive(PipeRdd::new(self, FilterOp(Fun::new(f))))
    }

    /// Keeps the records for which `f(env, record)` is true.
    pub fn filter_with<E: Data, F>(&self, env: E, f: F) -> Rdd<T>
    where
        F: Fn(&E, &T) -> bool + Send + Sync + 'static,
    {
        self.derive(PipeRdd::new(self, FilterWithOp(env, Fun::new(f))))
    }

    /// Maps every record to zero or more records.
    pub fn flat_map<U: Data, I, F>(&self, f: F) -> Rdd<U>
    where
        I: IntoIterator<Item = U> + 'static,
        F: Fn(T) -> I + Send + Sync + 'static,
    {
        self.derive(PipeRdd::new(self, FlatMapOp(Fun::new(f), PhantomData)))
    }

    /// Maps every record to zero or more records, with an environment value.
    pub fn flat_map_with<E: Data, U: Data, I, F>(&self, env: E, f: F) -> Rdd<U>
    where
        I: IntoIterator<Item = U> + 'static,
        F: Fn(&E, T) -> I + Send + Sync + 'static,
    {
        self.derive(PipeRdd::new(self, FlatMapWithOp(env, Fun::new(f), PhantomData)))
    }

    /// Transforms each partition's iterator.
    pub fn map_partitions<U: Data, F>(&self, f: F) -> Rdd<U>
    where
        F: for<'a> Fn(BoxIter<'a, T>) -> BoxIter<'a, U> + Send + Sync + 'static,
    {
        self.derive(PipeRdd::new(self, MapPartitionsOp(Fun::new(f))))
    }

    /// Transforms each partition's iterator, knowing the partition index.
    pub fn map_partitions_with_index<U: Data, F>(&self, f: F) -> Rdd<U>
    where
        F: for<'a> Fn(usize, BoxIter<'a, T>) -> BoxIter<'a, U> + Send + Sync + 'static,
    {
        self.derive(PipeRdd::new(self, MapPartitionsIndexOp(Fun::new(f))))
    }

    /// Transforms each partition's iterator with an environment value and the partition index.
    pub fn map_partitions_with<E: Data, U: Data, F>(&self, env: E, f: F) -> Rdd<U>
    where
        F: for<'a> Fn(&'a E, usize, BoxIter<'a, T>) -> BoxIter<'a, U> + Send + Sync + 'static,
    {
        self.derive(PipeRdd::new(self, MapPartitionsWithOp(env, Fun::new(f))))
    }

    /// Pairs each record with the key `f` gives it.
    pub fn key_by<K: Data, F>(&self, f: F) -> Rdd<(K, T)>
    where
        F: Fn(&T) -> K + Send + Sync + 'static,
    {
        self.map_with(Fun::new(f), |f: &Fun<F>, x| ((f.get1())(&x), x))
    }

    /// The records of this RDD followed by those of `other` (no deduplication).
    pub fn union(&self, other: &Rdd<T>) -> Rdd<T> {
        self.derive(UnionRdd::new(vec![self.clone(), other.clone()]))
    }

    /// Pairs the i-th record of this RDD with the i-th of `other`. Both must have the same number
    /// of partitions and the same number of records in each partition.
    pub fn zip<U: Data>(&self, other: &Rdd<U>) -> Result<Rdd<(T, U)>> {
        if self.num_partitions() != other.num_partitions() {
            return Err(Error::InvalidArgument(format!(
                "zip needs the same number of partitions, got {} and {}",
                self.num_partitions(),
                other.num_partitions()
            )));
        }
        Ok(self.derive(ZipRdd { a: self.clone(), b: other.clone() }))
    }

    /// A random sample: `fraction` is the probability of keeping each record without
    /// replacement, or the expected number of copies with replacement. The same seed gives the
    /// same sample.
    pub fn sample(&self, with_replacement: bool, fraction: f64, seed: u64) -> Result<Rdd<T>> {
        if !fraction.is_finite() || fraction < 0.0 || (!with_replacement && fraction > 1.0) {
            return Err(Error::InvalidArgument(format!(
                "sample fraction must be in [0, 1] without replacement and >= 0 with it, got {fraction}"
            )));
        }
        Ok(self.derive(PipeRdd::new(self, SampleOp { with_replacement, fraction, seed })))
    }

    /// The distinct records.
    pub fn distinct(&self, num_partitions: Option<usize>) -> Rdd<T>
    where
        T: Key,
    {
        self.map(unit_pair::<T>).reduce_by_key(keep_left::<()>, num_partitions).map(first::<T, ()>)
    }

    /// Fewer partitions without a shuffle: consecutive parent partitions are merged.
    /// With `shuffle`, records are redistributed evenly (and the count may also grow).
    pub fn coalesce(&self, num_partitions: usize, shuffle: bool) -> Rdd<T> {
        let n = num_partitions.max(1);
        if shuffle {
            return self.repartition(n);
        }
        let parent_n = self.num_partitions();
        let out = n.min(parent_n.max(1));
        let groups: Vec<Vec<usize>> =
            (0..out).map(|i| (i * parent_n / out..(i + 1) * parent_n / out).collect()).collect();
        self.derive(CoalescedRdd { parent: self.clone(), groups })
    }

    /// Redistributes records evenly over `num_partitions` partitions through a shuffle.
    pub fn repartition(&self, num_partitions: usize) -> Rdd<T> {
        let n = num_partitions.max(1);
        let keyed = self.map_partitions_with(n, |n: &usize, split, it: BoxIter<'_, T>| {
            // Start each partition at a different target so small partitions spread out.
            let start = (crate::data::stable_hash(&split) % *n as u64) as usize;
            Box::new(it.enumerate().map(move |(i, x)| (start + i, x)))
        });
        keyed.partition_by(IndexPartitioner::new(n)).map(second::<usize, T>)
    }

    /// Every pair of a record of this RDD and a record of `other`.
    ///
    /// It has one partition per pair of partitions; an error when that count overflows.
    pub fn cartesian<U: Data>(&self, other: &Rdd<U>) -> Result<Rdd<(T, U)>> {
        let (a, b) = (self.num_partitions(), other.num_partitions());
        if a.checked_mul(b).is_none_or(|n| n as u64 > crate::conf::MAX_PARTITIONS) {
            return Err(Error::InvalidArgument(format!(
                "cartesian of {a} and {b} partitions has more than {} partitions",
                crate::conf::MAX_PARTITIONS
            )));
        }
        Ok(self.derive(CartesianRdd { a: self.clone(), b: other.clone() }))
    }

    /// Sorts records by the key `f` gives them, through a range-partitioned shuffle.
    pub fn sort_by<K: Key + Ord, F>(&self, f: F, ascending: bool, num_partitions: Option<usize>) -> Result<Rdd<T>>
    where
        F: Fn(&T) -> K + Send + Sync + 'static,
    {
        Ok(self.key_by(f).sort_by_key(ascending, num_partitions)?.map(second::<K, T>))
    }
}

impl<K: Data, V: Data> Rdd<(K, V)> {
    /// The keys.
    pub fn keys(&self) -> Rdd<K> {
        self.map(first::<K, V>)
    }

    /// The values.
    pub fn values(&self) -> Rdd<V> {
        self.map(second::<K, V>)
    }

    /// Applies `f` to every value, keeping keys.
    pub fn map_values<W: Data, F>(&self, f: F) -> Rdd<(K, W)>
    where
        F: Fn(V) -> W + Send + Sync + 'static,
    {
        self.map_with(Fun::new(f), |f: &Fun<F>, (k, v)| (k, (f.get1())(v)))
    }

    /// Maps every value to zero or more values, keeping keys.
    pub fn flat_map_values<W: Data, I, F>(&self, f: F) -> Rdd<(K, W)>
    where
        I: IntoIterator<Item = W> + 'static,
        F: Fn(V) -> I + Send + Sync + 'static,
    {
        self.flat_map_with(Fun::new(f), |f: &Fun<F>, (k, v)| (f.get1())(v).into_iter().map(move |w| (k.clone(), w)))
    }
}
