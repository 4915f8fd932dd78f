//! `count_approx_distinct`: a HyperLogLog sketch per partition, merged on the driver.
//!
//! Each record is hashed to 64 bits with [`stable_hash`]; the top `p` bits pick one of
//! `m = 2^p` registers, which keeps the largest rank (position of the first one bit) of the
//! remaining `64 - p` bits. With 64-bit hashes no large-range correction is needed (as in
//! HyperLogLog++). The estimate uses Ertl's improved estimator ("New cardinality estimation
//! algorithms for HyperLogLog sketches", 2017), which corrects the raw estimate's bias over the
//! whole range without HLL++'s empirical tables and becomes linear counting when few registers
//! are set. Registers are kept sparse (a map) while few are set, so high precisions cost memory
//! only in proportion to the distinct records seen.

use std::hash::Hash;
use std::marker::PhantomData;

use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

use super::actions::PartitionFn;
use super::Rdd;
use crate::data::{stable_hash, Data};
use crate::error::{Error, Result};
use crate::ship::{Marker, Ship};
use crate::task::{BoxIter, TaskContext};

/// The registers of a sketch: sparse while few are set, then dense.
#[derive(Clone, Serialize, Deserialize)]
enum Registers {
    Sparse(FxHashMap<u32, u8>),
    Dense(Vec<u8>),
}

/// A HyperLogLog sketch of precision `p` (`2^p` registers).
#[derive(Clone, Serialize, Deserialize)]
pub(crate) struct Hll {
    p: u32,
    registers: Registers,
}

impl Hll {
    pub(crate) fn new(p: u32) -> Self {
        Hll { p, registers: Registers::Sparse(FxHashMap::default()) }
    }

    fn m(&self) -> u64 {
        1u64 << self.p
    }

    /// Sparse entries cost about 8 bytes, dense registers 1: switch past `m / 8` entries.
    fn densify_if_large(&mut self) {
        if let Registers::Sparse(map) = &self.registers {
            if map.len() as u64 > self.m() / 8 {
                let mut dense = vec![0u8; self.m() as usize];
                for (&i, &r) in map {
                    dense[i as usize] = r;
                }
                self.registers = Registers::Dense(dense);
            }
        }
    }

    fn set_max(&mut self, index: u32, rank: u8) {
        match &mut self.registers {
            Registers::Sparse(map) => {
                let r = map.entry(index).or_insert(0);
                if rank > *r {
                    *r = rank;
                    self.densify_if_large();
                }
            }
            Registers::Dense(v) => {
                if let Some(r) = v.get_mut(index as usize) {
                    *r = (*r).max(rank);
                }
            }
        }
    }

    /// Adds a 64-bit hash.
    pub(crate) fn add_hash(&mut self, h: u64) {
        let q = 64 - self.p;
        let index = (h >> q) as u32;
        let rest = h << self.p;
        // The rank is in 1..=q+1: q + 1 when the remaining q bits are all zero.
        let rank = (rest.leading_zeros().min(q) + 1) as u8;
        self.set_max(index, rank);
    }

    /// Merges a sketch of the same precision.
    pub(crate) fn merge(&mut self, other: &Hll) {
        match &other.registers {
            Registers::Sparse(map) => {
                for (&i, &r) in map {
                    self.set_max(i, r);
                }
            }
            Registers::Dense(v) => {
                for (i, &r) in v.iter().enumerate() {
                    if r > 0 {
                        self.set_max(i as u32, r);
                    }
                }
            }
        }
    }

    /// The estimated number of distinct hashes added.
    pub(crate) fn estimate(&self) -> f64 {
        let q = (64 - self.p) as usize;
        let m = self.m() as f64;
        // counts[k]: how many registers hold k, for k in 0..=q+1.
        let mut counts = vec![0u64; q + 2];
        let set = match &self.registers {
            Registers::Sparse(map) => {
                for &r in map.values() {
                    counts[(r as usize).min(q + 1)] += 1;
                }
                map.values().filter(|r| **r > 0).count() as u64
            }
            Registers::Dense(v) => {
                for &r in v {
                    counts[(r as usize).min(q + 1)] += 1;
                }
                v.iter().filter(|r| **r > 0).count() as u64
            }
        };
        // Sparse maps never hold zeros; dense ones counted theirs above.
        counts[0] = self.m() - set;
        let mut z = m * tau(1.0 - counts[q + 1] as f64 / m);
        for k in (1..=q).rev() {
            z = 0.5 * (z + counts[k] as f64);
        }
        z += m * sigma(counts[0] as f64 / m);
        let alpha_inf = 1.0 / (2.0 * std::f64::consts::LN_2);
        alpha_inf * m * m / z
    }
}

/// Ertl's σ(x) = x + Σ_{k≥1} x^(2^k) 2^(k-1), for the registers still zero.
fn sigma(mut x: f64) -> f64 {
    if x >= 1.0 {
        return f64::INFINITY;
    }
    let mut y = 1.0;
    let mut z = x;
    loop {
        x *= x;
        let before = z;
        z += x * y;
        y += y;
        if z == before {
            return z;
        }
    }
}

/// Ertl's τ(x) = (1 - x - Σ_{k≥1} (1 - x^(2^-k))² 2^-k) / 3, for the saturated registers.
fn tau(mut x: f64) -> f64 {
    if x <= 0.0 || x >= 1.0 {
        return 0.0;
    }
    let mut y = 1.0;
    let mut z = 1.0 - x;
    loop {
        x = x.sqrt();
        let before = z;
        y *= 0.5;
        z -= (1.0 - x).powi(2) * y;
        if z == before {
            return z / 3.0;
        }
    }
}

/// Spark's precision for a relative standard deviation: `ceil(2 log2(1.054 / relative_sd))`,
/// at least 4; `relative_sd` must exceed 0.000017.
pub(crate) fn precision_for(relative_sd: f64) -> Result<u32> {
    if relative_sd.is_nan() || relative_sd <= 0.000017 {
        return Err(Error::InvalidArgument(format!(
            "count_approx_distinct: relative_sd ({relative_sd}) must be greater than 0.000017"
        )));
    }
    let p = (2.0 * (1.054 / relative_sd).log2()).ceil();
    if p < 4.0 {
        return Err(Error::InvalidArgument(format!(
            "count_approx_distinct: relative_sd ({relative_sd}) is too large: it gives precision {p}, \
             and at least 4 is needed (relative_sd <= 0.37)"
        )));
    }
    Ok(p as u32)
}

/// Sketches a partition.
#[derive(Serialize, Deserialize)]
#[serde(bound = "")]
struct SketchFn<T> {
    p: u32,
    _t: Marker<T>,
}

impl<T: Data + Hash> PartitionFn<T, Hll> for SketchFn<T> {
    fn call(&self, _: &TaskContext, _: usize, it: BoxIter<'_, T>) -> Result<Hll> {
        let mut hll = Hll::new(self.p);
        for x in it {
            hll.add_hash(stable_hash(&x));
        }
        Ok(hll)
    }
}

impl<T: Data + Hash> Rdd<T> {
    /// An estimate of the number of distinct records (Spark's `countApproxDistinct`), with a
    /// HyperLogLog sketch per partition (see the module docs). `relative_sd` is the target
    /// relative accuracy; smaller values use more memory (`2^p` registers with
    /// `p = ceil(2 log2(1.054 / relative_sd))`, as in Spark). It must exceed 0.000017 and be
    /// at most about 0.37 (precision at least 4).
    pub fn count_approx_distinct(&self, relative_sd: f64) -> Result<u64> {
        let p = precision_for(relative_sd)?;
        let sketches = self.context()?.run_job(self, Ship::new(SketchFn::<T> { p, _t: PhantomData }), None)?;
        let mut all = Hll::new(p);
        for s in &sketches {
            all.merge(s);
        }
        Ok(all.estimate().round() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precision_follows_spark() {
        assert_eq!(precision_for(0.05).unwrap(), 9);
        assert_eq!(precision_for(0.01).unwrap(), 14);
        assert!(precision_for(0.000017).is_err());
        assert!(precision_for(0.5).is_err());
        assert!(precision_for(f64::NAN).is_err());
    }

    #[test]
    fn estimates_small_and_large_cardinalities_sparse_and_dense() {
        for p in [4, 9, 14] {
            for n in [0u64, 1, 10, 100, 1000, 50_000] {
                let mut h = Hll::new(p);
                for i in 0..n {
                    h.add_hash(stable_hash(&i));
                    h.add_hash(stable_hash(&i));
                }
                let est = h.estimate();
                let sd = 1.04 / ((1u64 << p) as f64).sqrt();
                let tol = (4.0 * sd * n as f64).max(1.0);
                assert!((est - n as f64).abs() <= tol, "p={p} n={n} est={est}");
            }
        }
    }

    #[test]
    fn merging_equals_sketching_the_union() {
        let (mut a, mut b, mut all) = (Hll::new(10), Hll::new(10), Hll::new(10));
        for i in 0..5000u64 {
            let h = stable_hash(&i);
            if i % 3 == 0 {
                a.add_hash(h)
            } else {
                b.add_hash(h)
            }
            all.add_hash(h);
        }
        a.merge(&b);
        assert_eq!(a.estimate(), all.estimate());
        // Small sketches, still sparse, merge the same way.
        let (mut a, mut b, mut all) = (Hll::new(10), Hll::new(10), Hll::new(10));
        for i in 0..40u64 {
            let h = stable_hash(&i);
            if i < 20 {
                a.add_hash(h)
            } else {
                b.add_hash(h)
            }
            all.add_hash(h);
        }
        a.merge(&b);
        assert_eq!(a.estimate(), all.estimate());
        assert!(a.estimate() > 30.0, "{}", a.estimate());
    }
}
