//! The bounds every record type satisfies, deterministic hashing, and record size estimates.

use std::hash::{Hash, Hasher};

use serde::de::DeserializeOwned;
use serde::Serialize;

/// A value that can live in an RDD: cloneable, thread-safe and serializable, so that it can be
/// cached, spilled, shuffled and shipped to another process.
pub trait Data: Clone + Send + Sync + Serialize + DeserializeOwned + 'static {}

impl<T: Clone + Send + Sync + Serialize + DeserializeOwned + 'static> Data for T {}

/// A key of a pair RDD: [`Data`] that can be hashed and compared for equality.
pub trait Key: Data + Hash + Eq {}

impl<T: Data + Hash + Eq> Key for T {}

/// Hashes a value deterministically: the same value gives the same hash in every process running
/// the same binary (no random seed), which partitioning across executors needs.
pub fn stable_hash<T: Hash + ?Sized>(value: &T) -> u64 {
    let mut h = rustc_hash::FxHasher::default();
    value.hash(&mut h);
    // FxHash's low bits are weak for small integers; finish with a 64-bit mixer (SplitMix64).
    let mut z = h.finish().wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Estimates the in-memory size of records by sampling: the serialized size of a sample record
/// plus its inline size stands for its heap footprint. Like Spark's `SizeEstimator` sampling,
/// this is an estimate for memory accounting, not an exact count.
#[derive(Debug, Clone)]
pub(crate) struct SizeSampler {
    seen: u64,
    sampled: u64,
    sampled_bytes: u64,
}

impl SizeSampler {
    pub(crate) fn new() -> Self {
        SizeSampler { seen: 0, sampled: 0, sampled_bytes: 0 }
    }

    /// Accounts one record and returns the estimated bytes it adds.
    pub(crate) fn add<T: Serialize>(&mut self, record: &T) -> u64 {
        self.seen += 1;
        // Sample the first 16 records, then one in 64.
        if self.sampled < 16 || self.seen % 64 == 0 {
            let heap = postcard::experimental::serialized_size(record).unwrap_or(0) as u64;
            self.sampled += 1;
            self.sampled_bytes += heap + std::mem::size_of::<T>() as u64 + 8;
        }
        self.per_record()
    }

    /// The current estimate for one record.
    pub(crate) fn per_record(&self) -> u64 {
        self.sampled_bytes.checked_div(self.sampled).unwrap_or(16)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_hash_is_deterministic_and_spreads_small_ints() {
        assert_eq!(stable_hash(&42u64), stable_hash(&42u64));
        assert_eq!(stable_hash("word"), stable_hash(&"word".to_string()));
        let mut buckets = [0usize; 8];
        for i in 0..8000u64 {
            buckets[(stable_hash(&i) % 8) as usize] += 1;
        }
        assert!(buckets.iter().all(|&b| b > 800), "poor spread: {buckets:?}");
    }

    #[test]
    fn sampler_grows_with_record_size() {
        let mut s = SizeSampler::new();
        let small = s.add(&1u8);
        let mut s2 = SizeSampler::new();
        let big = s2.add(&"x".repeat(1000));
        assert!(big > small + 900);
    }
}
