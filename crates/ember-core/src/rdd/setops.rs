//! Set operations on whole records: `intersection` and `subtract`.

use super::Rdd;
use crate::data::Key;

/// Which sides hold a record: bit 0 this RDD, bit 1 the other.
fn tag_left<T>(x: T) -> (T, u8) {
    (x, 1)
}
fn tag_right<T>(x: T) -> (T, u8) {
    (x, 2)
}
fn either(a: u8, b: u8) -> u8 {
    a | b
}
fn in_both<T>(r: &(T, u8)) -> bool {
    r.1 == 3
}
fn unit<T>(x: T) -> (T, ()) {
    (x, ())
}
fn record<T, V>(r: (T, V)) -> T {
    r.0
}

impl<T: Key> Rdd<T> {
    /// The distinct records present in both this RDD and `other` (Spark's `intersection`;
    /// the output has no duplicates even if the inputs do). Shuffles into `num_partitions`
    /// partitions, by default the larger partition count of the two (or
    /// `ember.shuffle.partitions` when set).
    pub fn intersection(&self, other: &Rdd<T>, num_partitions: Option<usize>) -> Rdd<T> {
        let left = self.map(tag_left::<T>);
        let n = left.shuffle_partitions(num_partitions, &[other.num_partitions()]);
        // Combined on the map side: each partition sends each distinct record once.
        left.union(&other.map(tag_right::<T>)).reduce_by_key(either, Some(n)).filter(in_both::<T>).map(record::<T, u8>)
    }

    /// The records of this RDD that do not occur in `other`, duplicates kept (Spark's
    /// `subtract`). Shuffles into `num_partitions` partitions, by default as many as this RDD
    /// has (or `ember.shuffle.partitions` when set).
    pub fn subtract(&self, other: &Rdd<T>, num_partitions: Option<usize>) -> Rdd<T> {
        let left = self.map(unit::<T>);
        let n = left.shuffle_partitions(num_partitions, &[]);
        left.subtract_by_key(&other.map(unit::<T>), Some(n)).map(record::<T, ()>)
    }
}
