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

/// Samples are taken at least this often (in records) once the spacing has grown.
const MAX_SAMPLE_GAP: u64 = 64;

/// Estimates the in-memory size of records by sampling: the serialized size of a sample record
/// plus its inline size stands for its heap footprint. Like Spark's `SizeTracker`, samples are
/// spaced exponentially (the next one after another tenth of the records seen, but at least
/// every [`MAX_SAMPLE_GAP`] records), and the estimate follows recent samples (a moving average),
/// so records that grow within a partition raise it. This is an estimate for memory accounting,
/// not an exact count; callers that must account a record far larger than the others at its
/// real size measure it with [`SizeSampler::heap_bytes`].
#[derive(Debug, Clone)]
pub(crate) struct SizeSampler {
    seen: u64,
    next_sample: u64,
    samples: u64,
    average: u64,
    largest: u64,
}

impl SizeSampler {
    pub(crate) fn new() -> Self {
        SizeSampler { seen: 0, next_sample: 1, samples: 0, average: 0, largest: 0 }
    }

    /// The estimated heap footprint of one record, measured.
    pub(crate) fn heap_bytes<T: Serialize>(record: &T) -> u64 {
        postcard::experimental::serialized_size(record).unwrap_or(0) as u64 + std::mem::size_of::<T>() as u64 + 8
    }

    /// Accounts one record (measuring it when a sample is due) and returns the current
    /// estimate for one record.
    pub(crate) fn add<T: Serialize>(&mut self, record: &T) -> u64 {
        self.seen += 1;
        if self.seen >= self.next_sample {
            self.record_sample(Self::heap_bytes(record));
            self.next_sample = self.seen + (self.seen / 10).clamp(1, MAX_SAMPLE_GAP);
        }
        self.per_record()
    }

    fn record_sample(&mut self, bytes: u64) {
        self.samples += 1;
        self.largest = self.largest.max(bytes);
        self.average = if self.samples <= 16 {
            // A plain mean of the first samples, then a moving average weighting recent ones.
            (self.average * (self.samples - 1) + bytes) / self.samples
        } else {
            self.average - self.average / 4 + bytes / 4
        };
    }

    /// The current estimate for one record.
    pub(crate) fn per_record(&self) -> u64 {
        if self.samples == 0 {
            16
        } else {
            self.average
        }
    }
}

/// A postcard output that appends to a borrowed buffer, so that serializing a record into a
/// long-lived buffer moves no `Vec` in and out of it.
struct AppendTo<'a>(&'a mut Vec<u8>);

impl postcard::ser_flavors::Flavor for AppendTo<'_> {
    type Output = ();

    #[inline]
    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        self.0.push(data);
        Ok(())
    }

    #[inline]
    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        // Most pieces are a varint of a few bytes, just written byte by byte: copied byte by
        // byte too (a word load of them would wait for those stores, and a call to `memcpy`
        // costs more than such a copy), into room reserved once.
        let n = data.len();
        if n > 16 {
            self.0.extend_from_slice(data);
            return Ok(());
        }
        self.0.reserve(n);
        for (o, &b) in self.0.spare_capacity_mut()[..n].iter_mut().zip(data) {
            o.write(b);
        }
        let len = self.0.len() + n;
        // SAFETY: the `n` bytes after the old length were written just above, within the
        // capacity `reserve` made.
        unsafe { self.0.set_len(len) };
        Ok(())
    }

    #[inline]
    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

/// Appends `value`'s postcard encoding to `out`.
#[inline]
pub(crate) fn encode_into<T: serde::Serialize + ?Sized>(value: &T, out: &mut Vec<u8>) -> postcard::Result<()> {
    let start = out.len();
    let r = postcard::serialize_with_flavor(value, AppendTo(out));
    if r.is_err() {
        // No partial record is left behind.
        out.truncate(start);
    }
    r
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

    #[test]
    fn sampler_follows_records_that_grow_within_a_partition() {
        let mut s = SizeSampler::new();
        let mut last = 0;
        for i in 0..100_000usize {
            let r = "x".repeat(i / 10);
            s.add(&r);
            last = SizeSampler::heap_bytes(&r);
        }
        // An average over all samples would sit near half the current size.
        assert!(s.per_record() * 10 >= last * 8, "estimate {} for records of {last} bytes", s.per_record());
    }
}
