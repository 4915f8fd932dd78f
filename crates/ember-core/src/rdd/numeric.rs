//! Actions on numeric RDDs beyond `stats`: `histogram`, the variance family, and ordering of
//! `f64` records (which are not `Ord`) through [`OrderedF64`].

use std::cmp::Ordering;
use std::marker::PhantomData;

use serde::{Deserialize, Serialize};

use super::actions::{PartitionFn, StatCounter, ToF64};
use super::Rdd;
use crate::error::{Error, Result};
use crate::ship::{Marker, Ship};
use crate::task::{BoxIter, TaskContext};

impl StatCounter {
    /// Sample standard deviation (from the variance that divides by n - 1; NaN for fewer than
    /// two values).
    pub fn sample_stdev(&self) -> f64 {
        self.sample_variance().sqrt()
    }
}

/// An `f64` ordered as Spark orders doubles (Java's `Double.compare`): `-0.0 < 0.0`, and every
/// NaN equal to every other NaN and greater than `+inf`. This makes `f64` keys usable where `Ord`
/// is needed, e.g. `rdd.max_by(|r| OrderedF64(r.score))`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct OrderedF64(pub f64);

impl Ord for OrderedF64 {
    fn cmp(&self, other: &Self) -> Ordering {
        match (self.0.is_nan(), other.0.is_nan()) {
            (true, true) => Ordering::Equal,
            (true, false) => Ordering::Greater,
            (false, true) => Ordering::Less,
            (false, false) => self.0.total_cmp(&other.0),
        }
    }
}

impl PartialOrd for OrderedF64 {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for OrderedF64 {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for OrderedF64 {}

fn ordered(x: &f64) -> OrderedF64 {
    OrderedF64(*x)
}

impl Rdd<f64> {
    /// The largest record, ordered by [`OrderedF64`]: a NaN record is the maximum; `0.0`
    /// beats `-0.0`. `None` when empty.
    pub fn max_f64(&self) -> Result<Option<f64>> {
        self.max_by(ordered)
    }

    /// The smallest record, ordered by [`OrderedF64`]: NaN is returned only when every record
    /// is NaN; `-0.0` beats `0.0`. `None` when empty.
    pub fn min_f64(&self) -> Result<Option<f64>> {
        self.min_by(ordered)
    }

    /// The `n` largest records, descending by [`OrderedF64`] (NaNs first).
    pub fn top_f64(&self, n: usize) -> Result<Vec<f64>> {
        self.top_by(n, ordered)
    }

    /// The `n` smallest records, ascending by [`OrderedF64`] (NaNs last).
    pub fn take_ordered_f64(&self, n: usize) -> Result<Vec<f64>> {
        self.take_ordered_by(n, ordered)
    }
}

/// The smallest and largest non-NaN value of a partition, and how many there are.
#[derive(Serialize, Deserialize)]
#[serde(bound = "")]
struct MinMaxFn<T>(Marker<T>);

impl<T: ToF64> PartitionFn<T, (f64, f64, u64)> for MinMaxFn<T> {
    fn call(&self, _: &TaskContext, _: usize, it: BoxIter<'_, T>) -> Result<(f64, f64, u64)> {
        let mut acc = (f64::INFINITY, f64::NEG_INFINITY, 0);
        for x in it {
            let x = x.to_f64();
            if !x.is_nan() {
                acc = (acc.0.min(x), acc.1.max(x), acc.2 + 1);
            }
        }
        Ok(acc)
    }
}

/// Counts a partition's values per bucket.
#[derive(Serialize, Deserialize)]
#[serde(bound = "")]
struct HistogramFn<T> {
    buckets: Vec<f64>,
    _t: Marker<T>,
}

/// The bucket of `x`: bucket `i` is `[b[i], b[i+1])`, the last one closed; `None` outside (and
/// for NaN).
fn bucket_of(buckets: &[f64], x: f64) -> Option<usize> {
    let (first, last) = (*buckets.first()?, *buckets.last()?);
    if x.is_nan() || x < first || x > last {
        return None;
    }
    let above = buckets.partition_point(|b| *b <= x);
    Some((above - 1).min(buckets.len() - 2))
}

impl<T: ToF64> PartitionFn<T, Vec<u64>> for HistogramFn<T> {
    fn call(&self, _: &TaskContext, _: usize, it: BoxIter<'_, T>) -> Result<Vec<u64>> {
        let mut counts = vec![0u64; self.buckets.len().saturating_sub(1)];
        for x in it {
            if let Some(i) = bucket_of(&self.buckets, x.to_f64()) {
                counts[i] += 1;
            }
        }
        Ok(counts)
    }
}

impl<T: ToF64> Rdd<T> {
    /// Population variance (NaN when empty).
    pub fn variance(&self) -> Result<f64> {
        Ok(self.stats()?.variance())
    }

    /// Population standard deviation (NaN when empty).
    pub fn stdev(&self) -> Result<f64> {
        Ok(self.stats()?.stdev())
    }

    /// Sample variance, dividing by n - 1 (NaN for fewer than two records).
    pub fn sample_variance(&self) -> Result<f64> {
        Ok(self.stats()?.sample_variance())
    }

    /// Sample standard deviation (NaN for fewer than two records).
    pub fn sample_stdev(&self) -> Result<f64> {
        Ok(self.stats()?.sample_stdev())
    }

    /// A histogram with `bucket_count` evenly spaced buckets between the smallest and the
    /// largest value (PySpark's `histogram(int)`): returns the `bucket_count + 1` bucket
    /// boundaries and the count of each bucket. Bucket `i` is `[b[i], b[i+1])`, the last one
    /// closed, so the maximum is counted. NaN values are ignored. When every value is the
    /// same (or `bucket_count` is 1) the result is one bucket `[min, max]` holding them all.
    ///
    /// Runs two jobs (min and max, then the counts). Errors when `bucket_count` is 0, when
    /// there is no value other than NaN, or when a value is infinite.
    pub fn histogram(&self, bucket_count: usize) -> Result<(Vec<f64>, Vec<u64>)> {
        if bucket_count == 0 {
            return Err(Error::InvalidArgument("histogram: the number of buckets must be at least 1".into()));
        }
        let (mut min, mut max, mut n) = (f64::INFINITY, f64::NEG_INFINITY, 0u64);
        for (lo, hi, c) in self.context()?.run_job(self, Ship::new(MinMaxFn::<T>(PhantomData)), None)? {
            (min, max, n) = (min.min(lo), max.max(hi), n + c);
        }
        if n == 0 {
            return Err(Error::InvalidArgument(
                "histogram: cannot make buckets for an RDD that is empty or holds only NaN".into(),
            ));
        }
        let span = max - min;
        if !span.is_finite() {
            return Err(Error::InvalidArgument(format!(
                "histogram: cannot make evenly spaced buckets between {min} and {max}"
            )));
        }
        if span == 0.0 || bucket_count == 1 {
            return Ok((vec![min, max], vec![n]));
        }
        let steps = bucket_count as f64;
        let mut buckets: Vec<f64> = (0..bucket_count).map(|s| min + (s as f64 * span) / steps).collect();
        // The last boundary is exactly the maximum, free of rounding.
        buckets.push(max);
        let counts = self.count_buckets(&buckets)?;
        Ok((buckets, counts))
    }

    /// A histogram over explicit bucket boundaries (Spark's `histogram(buckets)`): `buckets`
    /// must hold at least two values, sorted ascending without duplicates or NaN. Bucket `i`
    /// is `[b[i], b[i+1])`, the last one closed (`[1, 10, 20, 50]` means `[1, 10)`,
    /// `[10, 20)`, `[20, 50]`). Values outside the buckets and NaN are ignored. Returns the
    /// count of each bucket.
    pub fn histogram_with_buckets(&self, buckets: &[f64]) -> Result<Vec<u64>> {
        if buckets.len() < 2 {
            return Err(Error::InvalidArgument(format!(
                "histogram: buckets must hold at least two boundaries, got {}",
                buckets.len()
            )));
        }
        if buckets.iter().any(|b| b.is_nan()) {
            return Err(Error::InvalidArgument("histogram: bucket boundaries must not be NaN".into()));
        }
        if buckets.windows(2).any(|w| w[0] >= w[1]) {
            return Err(Error::InvalidArgument(
                "histogram: bucket boundaries must be sorted ascending without duplicates".into(),
            ));
        }
        self.count_buckets(buckets)
    }

    fn count_buckets(&self, buckets: &[f64]) -> Result<Vec<u64>> {
        let f = HistogramFn::<T> { buckets: buckets.to_vec(), _t: PhantomData };
        let mut counts = vec![0u64; buckets.len() - 1];
        for part in self.context()?.run_job(self, Ship::new(f), None)? {
            for (c, p) in counts.iter_mut().zip(part) {
                *c += p;
            }
        }
        Ok(counts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_half_open_but_the_last() {
        let b = [1.0, 10.0, 20.0, 50.0];
        assert_eq!(bucket_of(&b, 1.0), Some(0));
        assert_eq!(bucket_of(&b, 9.99), Some(0));
        assert_eq!(bucket_of(&b, 10.0), Some(1));
        assert_eq!(bucket_of(&b, 50.0), Some(2));
        assert_eq!(bucket_of(&b, 50.5), None);
        assert_eq!(bucket_of(&b, 0.5), None);
        assert_eq!(bucket_of(&b, f64::NAN), None);
    }

    #[test]
    fn ordered_f64_is_total_with_nan_on_top() {
        let mut v = [f64::NAN, 1.0, -0.0, 0.0, f64::INFINITY, f64::NEG_INFINITY, -f64::NAN].map(OrderedF64);
        v.sort();
        let bits: Vec<String> = v.iter().map(|x| format!("{:?}", x.0)).collect();
        assert_eq!(bits, ["-inf", "-0.0", "0.0", "1.0", "inf", "NaN", "NaN"]);
        let (nan, inf) = (OrderedF64(f64::NAN), OrderedF64(f64::INFINITY));
        assert_eq!(nan.cmp(&inf), Ordering::Greater);
        assert_eq!(inf.cmp(&nan), Ordering::Less);
        assert_eq!(nan.cmp(&OrderedF64(-f64::NAN)), Ordering::Equal);
    }
}
