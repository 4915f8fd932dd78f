//! Actions: the operations that run a job and bring results to the driver, and the
//! per-partition functions they ship to tasks.

use std::collections::{BinaryHeap, HashMap};
use std::fmt::Display;
use std::hash::Hash;
use std::marker::PhantomData;
use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::narrow::{GlomOp, PipeRdd};
use super::output::TextCodec;
use super::Rdd;
use crate::data::{Data, Key};
use crate::error::Result;
use crate::ship::{Fun, Marker, Ship, Upcast};
use crate::task::{BoxIter, TaskContext};

/// A function from the records of one partition to a result sent back to the driver.
pub trait PartitionFn<T, U>: Send + Sync + 'static {
    /// Consumes partition `split`'s records.
    fn call(&self, tc: &TaskContext, split: usize, it: BoxIter<'_, T>) -> Result<U>;
}

impl<T: 'static, U: 'static, R: PartitionFn<T, U>> Upcast<dyn PartitionFn<T, U>> for R {
    fn upcast(this: Arc<Self>) -> Arc<dyn PartitionFn<T, U>> {
        this
    }
}

/// The per-partition function of `collect`: all records of a partition. Useful with
/// [`crate::Context::run_jobs`].
#[derive(Serialize, Deserialize)]
#[serde(bound = "")]
pub struct CollectPartition<T>(Marker<T>);

impl<T> Default for CollectPartition<T> {
    fn default() -> Self {
        CollectPartition(PhantomData)
    }
}

impl<T: Data> PartitionFn<T, Vec<T>> for CollectPartition<T> {
    fn call(&self, _: &TaskContext, _: usize, it: BoxIter<'_, T>) -> Result<Vec<T>> {
        Ok(it.collect())
    }
}

#[derive(Serialize, Deserialize)]
#[serde(bound = "")]
pub(crate) struct CountFn<T>(Marker<T>);

impl<T> Default for CountFn<T> {
    fn default() -> Self {
        CountFn(PhantomData)
    }
}
impl<T: Data> PartitionFn<T, u64> for CountFn<T> {
    fn call(&self, _: &TaskContext, _: usize, it: BoxIter<'_, T>) -> Result<u64> {
        Ok(it.count() as u64)
    }
}

#[derive(Serialize, Deserialize)]
#[serde(bound = "")]
struct TakeFn<T>(usize, Marker<T>);
impl<T: Data> PartitionFn<T, Vec<T>> for TakeFn<T> {
    fn call(&self, _: &TaskContext, _: usize, it: BoxIter<'_, T>) -> Result<Vec<T>> {
        Ok(it.take(self.0).collect())
    }
}

/// Keeps the `n` smallest (or largest) records of a partition.
#[derive(Serialize, Deserialize)]
#[serde(bound = "")]
struct TopFn<T> {
    n: usize,
    largest: bool,
    _t: Marker<T>,
}

fn keep_top<T: Ord>(it: impl Iterator<Item = T>, n: usize, largest: bool) -> Vec<T> {
    if n == 0 {
        return Vec::new();
    }
    let mut out: Vec<T> = if largest {
        let mut heap: BinaryHeap<std::cmp::Reverse<T>> = BinaryHeap::with_capacity(n + 1);
        for x in it {
            heap.push(std::cmp::Reverse(x));
            if heap.len() > n {
                heap.pop();
            }
        }
        heap.into_iter().map(|r| r.0).collect()
    } else {
        let mut heap: BinaryHeap<T> = BinaryHeap::with_capacity(n + 1);
        for x in it {
            heap.push(x);
            if heap.len() > n {
                heap.pop();
            }
        }
        heap.into_vec()
    };
    if largest {
        out.sort_by(|a, b| b.cmp(a));
    } else {
        out.sort();
    }
    out
}

impl<T: Data + Ord> PartitionFn<T, Vec<T>> for TopFn<T> {
    fn call(&self, _: &TaskContext, _: usize, it: BoxIter<'_, T>) -> Result<Vec<T>> {
        Ok(keep_top(it, self.n, self.largest))
    }
}

#[derive(Serialize, Deserialize)]
#[serde(bound = "F: 'static")]
struct ReduceFn<T, F>(Fun<F>, Marker<T>);
impl<T: Data, F: Fn(T, T) -> T + Send + Sync + 'static> PartitionFn<T, Option<T>> for ReduceFn<T, F> {
    fn call(&self, _: &TaskContext, _: usize, it: BoxIter<'_, T>) -> Result<Option<T>> {
        Ok(it.reduce(self.0.get2()))
    }
}

#[derive(Serialize, Deserialize)]
#[serde(bound = "U: Data, S: 'static")]
struct AggregateFn<T, U, S> {
    zero: U,
    seq: Fun<S>,
    _t: Marker<T>,
}
impl<T: Data, U: Data, S: Fn(U, T) -> U + Send + Sync + 'static> PartitionFn<T, U> for AggregateFn<T, U, S> {
    fn call(&self, _: &TaskContext, _: usize, it: BoxIter<'_, T>) -> Result<U> {
        Ok(it.fold(self.zero.clone(), self.seq.get2()))
    }
}

#[derive(Serialize, Deserialize)]
#[serde(bound = "E: Data, F: 'static")]
struct ForeachFn<T, E, F> {
    env: E,
    f: Fun<F>,
    _t: Marker<T>,
}
impl<T: Data, E: Data, F: Fn(&E, T) + Send + Sync + 'static> PartitionFn<T, ()> for ForeachFn<T, E, F> {
    fn call(&self, _: &TaskContext, _: usize, it: BoxIter<'_, T>) -> Result<()> {
        let f = self.f.get2();
        for x in it {
            f(&self.env, x);
        }
        Ok(())
    }
}

#[derive(Serialize, Deserialize)]
#[serde(bound = "E: Data, F: 'static")]
struct ForeachPartitionFn<T, E, F> {
    env: E,
    f: Fun<F>,
    _t: Marker<T>,
}
impl<T: Data, E: Data, F> PartitionFn<T, ()> for ForeachPartitionFn<T, E, F>
where
    F: for<'a> Fn(&E, BoxIter<'a, T>) + Send + Sync + 'static,
{
    fn call(&self, _: &TaskContext, _: usize, it: BoxIter<'_, T>) -> Result<()> {
        (self.f.get2())(&self.env, it);
        Ok(())
    }
}

/// Numbers that `sum`, `mean` and `stats` work on.
pub trait ToF64: Data {
    /// The value as `f64`.
    fn to_f64(&self) -> f64;
}

macro_rules! to_f64 {
    ($($t:ty),*) => {$(
        impl ToF64 for $t {
            #[inline]
            fn to_f64(&self) -> f64 {
                *self as f64
            }
        }
    )*};
}
to_f64!(i8, i16, i32, i64, u8, u16, u32, u64, usize, isize, f32, f64);

/// Count, mean, variance, min and max of numbers, mergeable across partitions (Spark's
/// `StatCounter`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct StatCounter {
    /// Number of values.
    pub count: u64,
    /// Their mean.
    pub mean: f64,
    m2: f64,
    /// Smallest value (`+inf` when empty).
    pub min: f64,
    /// Largest value (`-inf` when empty).
    pub max: f64,
    /// Their sum.
    pub sum: f64,
}

impl Default for StatCounter {
    fn default() -> Self {
        StatCounter { count: 0, mean: 0.0, m2: 0.0, min: f64::INFINITY, max: f64::NEG_INFINITY, sum: 0.0 }
    }
}

impl StatCounter {
    /// Adds a value.
    pub fn add(&mut self, x: f64) {
        self.count += 1;
        let d = x - self.mean;
        self.mean += d / self.count as f64;
        self.m2 += d * (x - self.mean);
        self.min = self.min.min(x);
        self.max = self.max.max(x);
        self.sum += x;
    }
    /// Merges another counter (Chan et al.'s parallel variance).
    pub fn merge(&mut self, o: &StatCounter) {
        if o.count == 0 {
            return;
        }
        if self.count == 0 {
            *self = *o;
            return;
        }
        let n = (self.count + o.count) as f64;
        let d = o.mean - self.mean;
        self.m2 += o.m2 + d * d * self.count as f64 * o.count as f64 / n;
        self.mean = (self.sum + o.sum) / n;
        self.count += o.count;
        self.min = self.min.min(o.min);
        self.max = self.max.max(o.max);
        self.sum += o.sum;
    }
    /// Population variance.
    pub fn variance(&self) -> f64 {
        if self.count == 0 {
            f64::NAN
        } else {
            self.m2 / self.count as f64
        }
    }
    /// Sample variance (divides by n - 1).
    pub fn sample_variance(&self) -> f64 {
        if self.count <= 1 {
            f64::NAN
        } else {
            self.m2 / (self.count - 1) as f64
        }
    }
    /// Population standard deviation.
    pub fn stdev(&self) -> f64 {
        self.variance().sqrt()
    }
}

#[derive(Serialize, Deserialize)]
#[serde(bound = "")]
struct StatsFn<T>(Marker<T>);
impl<T: ToF64> PartitionFn<T, StatCounter> for StatsFn<T> {
    fn call(&self, _: &TaskContext, _: usize, it: BoxIter<'_, T>) -> Result<StatCounter> {
        let mut s = StatCounter::default();
        for x in it {
            s.add(x.to_f64());
        }
        Ok(s)
    }
}

fn min_fn<T: Ord>(a: T, b: T) -> T {
    std::cmp::min(a, b)
}
fn max_fn<T: Ord>(a: T, b: T) -> T {
    std::cmp::max(a, b)
}

impl<T: Data> Rdd<T> {
    fn run<U: Data, R>(&self, f: R, partitions: Option<Vec<usize>>) -> Result<Vec<U>>
    where
        R: PartitionFn<T, U> + Serialize + serde::de::DeserializeOwned,
    {
        self.context()?.run_job(self, Ship::new(f), partitions)
    }

    /// All records, in partition order.
    pub fn collect(&self) -> Result<Vec<T>> {
        Ok(self.run(CollectPartition::<T>::default(), None)?.into_iter().flatten().collect())
    }

    /// The number of records.
    pub fn count(&self) -> Result<u64> {
        Ok(self.run(CountFn::<T>(PhantomData), None)?.into_iter().sum())
    }

    /// The first `n` records, scanning as few partitions as possible (one, then four times as
    /// many each round, like Spark).
    pub fn take(&self, n: usize) -> Result<Vec<T>> {
        let total = self.num_partitions();
        let mut out = Vec::new();
        let mut scanned = 0;
        while out.len() < n && scanned < total {
            let try_parts = if scanned == 0 {
                1
            } else if out.is_empty() {
                scanned * 4
            } else {
                let want = (1.5 * n as f64 * scanned as f64 / out.len() as f64).ceil() as usize;
                want.saturating_sub(scanned).clamp(1, scanned * 4)
            };
            let end = (scanned + try_parts).min(total);
            let left = n - out.len();
            for part in self.run(TakeFn::<T>(left, PhantomData), Some((scanned..end).collect()))? {
                let room = n - out.len();
                out.extend(part.into_iter().take(room));
            }
            scanned = end;
        }
        Ok(out)
    }

    /// The first record, or `None` when the RDD is empty.
    pub fn first(&self) -> Result<Option<T>> {
        Ok(self.take(1)?.into_iter().next())
    }

    /// Whether the RDD has no records.
    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.num_partitions() == 0 || self.take(1)?.is_empty())
    }

    /// Reduces all records with an associative, commutative function; `None` when empty.
    pub fn reduce<F>(&self, f: F) -> Result<Option<T>>
    where
        F: Fn(T, T) -> T + Send + Sync + 'static,
    {
        let f = Fun::new(f);
        let parts = self.run(ReduceFn::<T, F>(f, PhantomData), None)?;
        Ok(parts.into_iter().flatten().reduce(f.get2()))
    }

    /// Folds records with `zero` in every partition and once more when merging (Spark's `fold`).
    pub fn fold<F>(&self, zero: T, f: F) -> Result<T>
    where
        F: Fn(T, T) -> T + Send + Sync + 'static,
    {
        let f = Fun::new(f);
        let parts = self.run(AggregateFn::<T, T, F> { zero: zero.clone(), seq: f, _t: PhantomData }, None)?;
        Ok(parts.into_iter().fold(zero, f.get2()))
    }

    /// Aggregates records into `U`: `seq` within partitions, `comb` across them.
    pub fn aggregate<U: Data, S, C>(&self, zero: U, seq: S, comb: C) -> Result<U>
    where
        S: Fn(U, T) -> U + Send + Sync + 'static,
        C: Fn(U, U) -> U + Send + Sync + 'static,
    {
        let comb = Fun::new(comb);
        let parts =
            self.run(AggregateFn::<T, U, S> { zero: zero.clone(), seq: Fun::new(seq), _t: PhantomData }, None)?;
        Ok(parts.into_iter().fold(zero, comb.get2()))
    }

    /// Runs `f` on every record, on the executors.
    pub fn foreach<F>(&self, f: F) -> Result<()>
    where
        F: Fn(T) + Send + Sync + 'static,
    {
        self.foreach_with(Fun::new(f), |f: &Fun<F>, x| (f.get1())(x))
    }

    /// Runs `f` on every record with an environment value (an accumulator, say).
    pub fn foreach_with<E: Data, F>(&self, env: E, f: F) -> Result<()>
    where
        F: Fn(&E, T) + Send + Sync + 'static,
    {
        self.run(ForeachFn::<T, E, F> { env, f: Fun::new(f), _t: PhantomData }, None).map(|_| ())
    }

    /// Runs `f` on every partition's iterator.
    pub fn foreach_partition<F>(&self, f: F) -> Result<()>
    where
        F: for<'a> Fn(BoxIter<'a, T>) + Send + Sync + 'static,
    {
        self.foreach_partition_with(Fun::new(f), |f: &Fun<F>, it| (f.get1())(it))
    }

    /// Runs `f` on every partition's iterator with an environment value.
    pub fn foreach_partition_with<E: Data, F>(&self, env: E, f: F) -> Result<()>
    where
        F: for<'a> Fn(&E, BoxIter<'a, T>) + Send + Sync + 'static,
    {
        self.run(ForeachPartitionFn::<T, E, F> { env, f: Fun::new(f), _t: PhantomData }, None).map(|_| ())
    }

    /// How many times each distinct record occurs.
    pub fn count_by_value(&self) -> Result<HashMap<T, u64>>
    where
        T: Key,
    {
        let pairs = self.map(|x| (x, 1u64)).reduce_by_key(|a, b| a + b, None);
        Ok(pairs.collect()?.into_iter().collect())
    }

    /// Writes records as text lines, one `part-NNNNN` file per partition, into directory `path`,
    /// which must not exist: it is created at once as a claim, so a second writer of the same
    /// path fails with [`Error::OutputExists`] and existing content is never touched.
    ///
    /// Task attempts write under `path/_temporary` and commit by renaming their file; the job
    /// commit moves the files into place, fsyncs them and writes `_SUCCESS` last. Failed or
    /// retried attempts leave nothing behind, and a failed job removes `path` entirely.
    pub fn save_as_text_file(&self, path: impl AsRef<Path>) -> Result<()>
    where
        T: Display,
    {
        super::output::save_text(self, path.as_ref(), TextCodec::None)
    }

    /// Like [`Rdd::save_as_text_file`], compressing each part file with `codec`
    /// (`part-00000.gz` for gzip); [`crate::Context::text_file`] reads them back.
    pub fn save_as_text_file_compressed(&self, path: impl AsRef<Path>, codec: TextCodec) -> Result<()>
    where
        T: Display,
    {
        super::output::save_text(self, path.as_ref(), codec)
    }

    /// Pairs each record with its index in the RDD (partition order). Runs a job to count the
    /// records of all partitions but the last.
    pub fn zip_with_index(&self) -> Result<Rdd<(T, u64)>> {
        let n = self.num_partitions();
        let counts = if n > 1 { self.run(CountFn::<T>(PhantomData), Some((0..n - 1).collect()))? } else { Vec::new() };
        let mut offsets = Vec::with_capacity(n);
        let mut acc = 0;
        offsets.push(0);
        for c in counts {
            acc += c;
            offsets.push(acc);
        }
        Ok(self.derive(PipeRdd::new(self, super::narrow::ZipWithIndexOp { offsets })))
    }

    /// Each partition as one vector.
    pub fn glom(&self) -> Rdd<Vec<T>> {
        self.derive(PipeRdd::new(self, GlomOp))
    }

    /// The `n` smallest records, sorted ascending.
    pub fn take_ordered(&self, n: usize) -> Result<Vec<T>>
    where
        T: Ord,
    {
        let parts = self.run(TopFn::<T> { n, largest: false, _t: PhantomData }, None)?;
        Ok(keep_top(parts.into_iter().flatten(), n, false))
    }

    /// The `n` largest records, sorted descending.
    pub fn top(&self, n: usize) -> Result<Vec<T>>
    where
        T: Ord,
    {
        let parts = self.run(TopFn::<T> { n, largest: true, _t: PhantomData }, None)?;
        Ok(keep_top(parts.into_iter().flatten(), n, true))
    }

    /// The smallest record.
    pub fn min(&self) -> Result<Option<T>>
    where
        T: Ord,
    {
        self.reduce(min_fn::<T>)
    }

    /// The largest record.
    pub fn max(&self) -> Result<Option<T>>
    where
        T: Ord,
    {
        self.reduce(max_fn::<T>)
    }
}

impl<T: ToF64> Rdd<T> {
    /// Count, mean, variance, min and max in one pass.
    pub fn stats(&self) -> Result<StatCounter> {
        let mut s = StatCounter::default();
        for p in self.run(StatsFn::<T>(PhantomData), None)? {
            s.merge(&p);
        }
        Ok(s)
    }

    /// The sum, as `f64`.
    pub fn sum(&self) -> Result<f64> {
        Ok(self.stats()?.sum)
    }

    /// The mean (NaN when empty).
    pub fn mean(&self) -> Result<f64> {
        let s = self.stats()?;
        Ok(if s.count == 0 { f64::NAN } else { s.mean })
    }
}

impl<K: Key, V: Data> Rdd<(K, V)> {
    /// How many records each key has.
    pub fn count_by_key(&self) -> Result<HashMap<K, u64>> {
        let ones = self.map_values(|_| 1u64).reduce_by_key(|a, b| a + b, None);
        Ok(ones.collect()?.into_iter().collect())
    }

    /// All values of `key`.
    pub fn lookup(&self, key: K) -> Result<Vec<V>> {
        self.filter_with(key, |k, kv| kv.0 == *k).values().collect()
    }

    /// Keys and values as a map (later values win for repeated keys).
    pub fn collect_as_map(&self) -> Result<HashMap<K, V>>
    where
        K: Hash + Eq,
    {
        Ok(self.collect()?.into_iter().collect())
    }
}
