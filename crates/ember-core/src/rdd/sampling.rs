//! Samplers beyond `sample`: `random_split`, `take_sample` and `sample_by_key` (stratified
//! sampling with a fraction per key).

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::narrow::{Op, PipeRdd, SplitMix};
use super::Rdd;
use crate::data::{Data, Key};
use crate::error::{Error, Result};
use crate::task::{BoxIter, TaskContext};

/// The generator of partition `split` for `seed`: the same sequence for every split of a
/// `random_split`, so each record draws the same number in all of them.
fn partition_rng(seed: u64, split: usize) -> SplitMix {
    SplitMix::new(seed ^ (split as u64).wrapping_mul(0x2545_f491_4f6c_dd1d))
}

/// One split of `random_split`: the records whose draw falls in `[lb, ub)`.
#[derive(Serialize, Deserialize)]
struct RangeSampleOp {
    lb: f64,
    ub: f64,
    seed: u64,
}

impl<T: Data> Op<T, T> for RangeSampleOp {
    fn name(&self) -> &'static str {
        "random_split"
    }
    fn apply<'a>(&'a self, split: usize, input: BoxIter<'a, T>, _: &'a TaskContext) -> BoxIter<'a, T> {
        let mut rng = partition_rng(self.seed, split);
        let (lb, ub) = (self.lb, self.ub);
        Box::new(input.filter(move |_| {
            let u = rng.next_f64();
            lb <= u && u < ub
        }))
    }
}

/// `sample_by_key`: Bernoulli (or Poisson) sampling with the fraction of each record's key.
#[derive(Serialize, Deserialize)]
#[serde(bound = "K: Key")]
struct SampleByKeyOp<K> {
    fractions: HashMap<K, f64>,
    with_replacement: bool,
    seed: u64,
}

impl<K: Key, V: Data> Op<(K, V), (K, V)> for SampleByKeyOp<K> {
    fn name(&self) -> &'static str {
        "sample_by_key"
    }
    fn apply<'a>(&'a self, split: usize, input: BoxIter<'a, (K, V)>, tc: &'a TaskContext) -> BoxIter<'a, (K, V)> {
        let mut rng = partition_rng(self.seed, split);
        let mut input = input;
        let mut pending: Option<((K, V), u32)> = None;
        Box::new(std::iter::from_fn(move || loop {
            if let Some((kv, left)) = pending.take() {
                if left > 1 {
                    pending = Some((kv.clone(), left - 1));
                }
                return Some(kv);
            }
            let kv = input.next()?;
            let Some(&fraction) = self.fractions.get(&kv.0) else {
                tc.fail(Error::InvalidArgument(
                    "sample_by_key: a key of the RDD has no sampling fraction; give one for every key".into(),
                ));
                return None;
            };
            let copies =
                if self.with_replacement { rng.poisson(fraction) } else { u32::from(rng.next_f64() < fraction) };
            if copies > 0 {
                pending = Some((kv, copies));
            }
        }))
    }
}

fn check_fraction(fraction: f64, with_replacement: bool, what: &str) -> Result<()> {
    if !fraction.is_finite() || fraction < 0.0 || (!with_replacement && fraction > 1.0) {
        return Err(Error::InvalidArgument(format!(
            "{what} must be in [0, 1] without replacement and >= 0 with it, got {fraction}"
        )));
    }
    Ok(())
}

/// Spark's `SamplingUtils.computeFractionForSampleSize`: a fraction that yields at least
/// `num` of `total` records with probability 0.9999.
fn fraction_for_sample_size(num: u64, total: u64, with_replacement: bool) -> f64 {
    let (s, n) = (num as f64, total as f64);
    if with_replacement {
        let std_devs = if num < 6 {
            12.0
        } else if num < 16 {
            9.0
        } else {
            6.0
        };
        (s + std_devs * s.sqrt()).max(1e-10) / n
    } else {
        let fraction = s / n;
        let gamma = -(1e-4f64).ln() / n;
        (fraction + gamma + (gamma * gamma + 2.0 * gamma * fraction).sqrt()).min(1.0)
    }
}

fn shuffle<T>(v: &mut [T], rng: &mut SplitMix) {
    for i in (1..v.len()).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        v.swap(i, j);
    }
}

/// How many sampling rounds `take_sample` tries before falling back to collecting everything.
const SAMPLE_ROUNDS: usize = 8;

impl<T: Data> Rdd<T> {
    /// Splits this RDD randomly into one RDD per weight, with sizes proportional to the
    /// weights (Spark's `randomSplit`). The splits are disjoint and together hold every record;
    /// the same seed gives the same splits. Each split recomputes this RDD, so the parent must
    /// give the same records in the same order every time (cache it otherwise).
    ///
    /// Weights must be finite and non-negative, with a positive sum; they are normalized.
    pub fn random_split(&self, weights: &[f64], seed: u64) -> Result<Vec<Rdd<T>>> {
        if weights.is_empty() || weights.iter().any(|w| !w.is_finite() || *w < 0.0) {
            return Err(Error::InvalidArgument(format!(
                "random_split weights must be finite and non-negative, got {weights:?}"
            )));
        }
        let total: f64 = weights.iter().sum();
        if total <= 0.0 || !total.is_finite() {
            return Err(Error::InvalidArgument(format!(
                "random_split weights must have a positive sum, got {weights:?}"
            )));
        }
        let mut bounds = Vec::with_capacity(weights.len() + 1);
        let mut acc = 0.0;
        bounds.push(0.0);
        for w in weights {
            acc += w;
            bounds.push(acc / total);
        }
        // Every draw is below 1: the last split takes the rest, whatever the rounding.
        if let Some(last) = bounds.last_mut() {
            *last = 1.0;
        }
        Ok(bounds
            .windows(2)
            .map(|b| self.derive(PipeRdd::new(self, RangeSampleOp { lb: b[0], ub: b[1], seed })))
            .collect())
    }

    /// A random sample of exactly `num` records (Spark's `takeSample`), returned to the driver
    /// in random order. Without replacement, each record appears at most once and the sample
    /// holds `min(num, count)` records; with replacement, records may repeat and the sample
    /// holds `num` records (none if the RDD is empty). The same seed gives the same sample.
    ///
    /// Runs a job to count the records, then samples with a fraction large enough to get
    /// `num` records with high probability (rarely, another round), and trims the surplus.
    pub fn take_sample(&self, with_replacement: bool, num: usize, seed: u64) -> Result<Vec<T>> {
        // Spark's bound: the sampling fraction must leave room for 10 standard deviations.
        let limit = i32::MAX as usize - (10.0 * (i32::MAX as f64).sqrt()) as usize;
        if num > limit {
            return Err(Error::InvalidArgument(format!("take_sample: cannot take {num} records; at most {limit}")));
        }
        if num == 0 {
            return Ok(Vec::new());
        }
        let count = self.count()?;
        if count == 0 {
            return Ok(Vec::new());
        }
        let mut rng = SplitMix::new(seed);
        if !with_replacement && num as u64 >= count {
            let mut all = self.collect()?;
            shuffle(&mut all, &mut rng);
            return Ok(all);
        }
        let fraction = fraction_for_sample_size(num as u64, count, with_replacement);
        for _ in 0..SAMPLE_ROUNDS {
            let mut sample = self.sample(with_replacement, fraction, rng.next_u64())?.collect()?;
            if sample.len() >= num {
                shuffle(&mut sample, &mut rng);
                sample.truncate(num);
                return Ok(sample);
            }
        }
        // Very unlikely: draw from everything instead.
        let mut all = self.collect()?;
        if with_replacement {
            let len = all.len() as u64;
            if len == 0 {
                return Ok(Vec::new());
            }
            return Ok((0..num).map(|_| all[(rng.next_u64() % len) as usize].clone()).collect());
        }
        shuffle(&mut all, &mut rng);
        all.truncate(num);
        Ok(all)
    }
}

impl<K: Key, V: Data> Rdd<(K, V)> {
    /// A sample with a different fraction for each key (Spark's `sampleByKey`, stratified
    /// sampling): a record of key `k` is kept with probability `fractions[k]` without
    /// replacement, or appears a Poisson(`fractions[k]`) number of times with it. Every key of
    /// the RDD needs a fraction (a missing one fails the job). The same seed gives the same
    /// sample.
    pub fn sample_by_key(&self, with_replacement: bool, fractions: HashMap<K, f64>, seed: u64) -> Result<Rdd<(K, V)>> {
        for f in fractions.values() {
            check_fraction(*f, with_replacement, "sample_by_key fractions")?;
        }
        Ok(self.derive(PipeRdd::new(self, SampleByKeyOp { fractions, with_replacement, seed })))
    }
}
