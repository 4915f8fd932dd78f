//! Grouping operations beyond `pair.rs`: `group_by` a key function, `cogroup` of three and four
//! RDDs (`group_with*`), `repartition_and_sort_within_partitions` and `reduce_by_key_locally`.

use std::collections::HashMap;
use std::marker::PhantomData;

use serde::{Deserialize, Serialize};

use super::actions::PartitionFn;
use super::Rdd;
use crate::data::{Data, Key};
use crate::error::Result;
use crate::ship::{Fun, Marker, Ship};
use crate::shuffle::Partitioner;
use crate::task::{BoxIter, TaskContext};

/// One input of a cogroup of up to four RDDs.
#[derive(Clone, Serialize, Deserialize)]
enum Tagged<A, B, C, D> {
    A(A),
    B(B),
    C(C),
    D(D),
}

fn split4<A, B, C, D>(items: Vec<Tagged<A, B, C, D>>) -> (Vec<A>, Vec<B>, Vec<C>, Vec<D>) {
    let (mut a, mut b, mut c, mut d) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for t in items {
        match t {
            Tagged::A(x) => a.push(x),
            Tagged::B(x) => b.push(x),
            Tagged::C(x) => c.push(x),
            Tagged::D(x) => d.push(x),
        }
    }
    (a, b, c, d)
}

fn split3<A, B, C>(items: Vec<Tagged<A, B, C, ()>>) -> (Vec<A>, Vec<B>, Vec<C>) {
    let (a, b, c, _) = split4(items);
    (a, b, c)
}

impl<T: Data> Rdd<T> {
    /// Groups records by the key `f` gives them (Spark's `groupBy`): each key with all its
    /// records, through a shuffle into `num_partitions` partitions (by default as many as this
    /// RDD has, or `ember.shuffle.partitions`).
    pub fn group_by<K: Key, F>(&self, f: F, num_partitions: Option<usize>) -> Rdd<(K, Vec<T>)>
    where
        F: Fn(&T) -> K + Send + Sync + 'static,
    {
        self.key_by(f).group_by_key(num_partitions)
    }
}

impl<K: Key, V: Data> Rdd<(K, V)> {
    /// For each key of any of the three RDDs, its values in this RDD, `b` and `c` (Spark's
    /// `cogroup(other1, other2)`; the suffix counts the other RDDs, as `cogroup` takes one).
    /// Shuffles into `num_partitions` partitions, by default the largest input partition count.
    pub fn cogroup2<W1: Data, W2: Data>(
        &self,
        b: &Rdd<(K, W1)>,
        c: &Rdd<(K, W2)>,
        num_partitions: Option<usize>,
    ) -> Rdd<(K, (Vec<V>, Vec<W1>, Vec<W2>))> {
        let n = self.shuffle_partitions(num_partitions, &[b.num_partitions(), c.num_partitions()]);
        let all = self
            .map_values(Tagged::<V, W1, W2, ()>::A)
            .union(&b.map_values(Tagged::<V, W1, W2, ()>::B))
            .union(&c.map_values(Tagged::<V, W1, W2, ()>::C));
        all.group_by_key(Some(n)).map_values(split3::<V, W1, W2>)
    }

    /// For each key of any of the four RDDs, its values in this RDD, `b`, `c` and `d` (Spark's
    /// `cogroup(other1, other2, other3)`).
    pub fn cogroup3<W1: Data, W2: Data, W3: Data>(
        &self,
        b: &Rdd<(K, W1)>,
        c: &Rdd<(K, W2)>,
        d: &Rdd<(K, W3)>,
        num_partitions: Option<usize>,
    ) -> Rdd<(K, (Vec<V>, Vec<W1>, Vec<W2>, Vec<W3>))> {
        let others = [b.num_partitions(), c.num_partitions(), d.num_partitions()];
        let n = self.shuffle_partitions(num_partitions, &others);
        let all = self
            .map_values(Tagged::<V, W1, W2, W3>::A)
            .union(&b.map_values(Tagged::<V, W1, W2, W3>::B))
            .union(&c.map_values(Tagged::<V, W1, W2, W3>::C))
            .union(&d.map_values(Tagged::<V, W1, W2, W3>::D));
        all.group_by_key(Some(n)).map_values(split4::<V, W1, W2, W3>)
    }

    /// Spark's `groupWith(other)`: [`Rdd::cogroup`] with the default partition count.
    pub fn group_with<W: Data>(&self, other: &Rdd<(K, W)>) -> Rdd<(K, (Vec<V>, Vec<W>))> {
        self.cogroup(other, None)
    }

    /// Spark's `groupWith(other1, other2)`: [`Rdd::cogroup2`] with the default partition count.
    pub fn group_with2<W1: Data, W2: Data>(
        &self,
        b: &Rdd<(K, W1)>,
        c: &Rdd<(K, W2)>,
    ) -> Rdd<(K, (Vec<V>, Vec<W1>, Vec<W2>))> {
        self.cogroup2(b, c, None)
    }

    /// Spark's `groupWith(other1, other2, other3)`: [`Rdd::cogroup3`] with the default
    /// partition count.
    pub fn group_with3<W1: Data, W2: Data, W3: Data>(
        &self,
        b: &Rdd<(K, W1)>,
        c: &Rdd<(K, W2)>,
        d: &Rdd<(K, W3)>,
    ) -> Rdd<(K, (Vec<V>, Vec<W1>, Vec<W2>, Vec<W3>))> {
        self.cogroup3(b, c, d, None)
    }

    /// Redistributes records by `partitioner` and sorts each resulting partition by key, in one
    /// shuffle (Spark's `repartitionAndSortWithinPartitions`); cheaper than `partition_by`
    /// followed by a separate sort pass over a cached result.
    pub fn repartition_and_sort_within_partitions<P>(&self, partitioner: P, ascending: bool) -> Rdd<(K, V)>
    where
        K: Ord,
        P: Partitioner<K> + Serialize + serde::de::DeserializeOwned,
    {
        self.partition_by(partitioner).sort_within_partitions(ascending)
    }

    /// Merges the values of each key with an associative, commutative function and returns the
    /// result to the driver as a map (Spark's `reduceByKeyLocally`): each task reduces its
    /// partition into a map, and the driver merges the maps. No shuffle.
    pub fn reduce_by_key_locally<F>(&self, f: F) -> Result<HashMap<K, V>>
    where
        F: Fn(V, V) -> V + Send + Sync + 'static,
    {
        let f = Fun::new(f);
        let parts =
            self.context()?.run_job(self, Ship::new(ReduceLocallyFn::<K, V, F> { f, _kv: PhantomData }), None)?;
        let mut out: HashMap<K, V> = HashMap::new();
        for part in parts {
            for (k, v) in part {
                merge_into(&mut out, k, v, f.get2());
            }
        }
        Ok(out)
    }
}

fn merge_into<K: Key, V>(map: &mut HashMap<K, V>, k: K, v: V, f: &impl Fn(V, V) -> V) {
    match map.remove(&k) {
        Some(old) => {
            map.insert(k, f(old, v));
        }
        None => {
            map.insert(k, v);
        }
    }
}

/// Reduces a partition's values per key into a map.
#[derive(Serialize, Deserialize)]
#[serde(bound = "F: 'static")]
struct ReduceLocallyFn<K, V, F> {
    f: Fun<F>,
    _kv: Marker<(K, V)>,
}

impl<K: Key, V: Data, F> PartitionFn<(K, V), Vec<(K, V)>> for ReduceLocallyFn<K, V, F>
where
    F: Fn(V, V) -> V + Send + Sync + 'static,
{
    fn call(&self, _: &TaskContext, _: usize, it: BoxIter<'_, (K, V)>) -> Result<Vec<(K, V)>> {
        let mut map = HashMap::new();
        for (k, v) in it {
            merge_into(&mut map, k, v, self.f.get2());
        }
        Ok(map.into_iter().collect())
    }
}
