//! Aggregators: how the values of one key combine, on the map side and the reduce side.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::data::Data;
use crate::ship::{Fun, Marker, Upcast};

/// How values of a key are combined: Spark's `createCombiner`, `mergeValue`, `mergeCombiners`.
pub trait Aggregator<V, C>: Send + Sync + 'static {
    /// The combiner for a key's first value.
    fn create(&self, v: V) -> C;
    /// Adds a value to a combiner.
    fn merge_value(&self, c: C, v: V) -> C;
    /// Merges two combiners of the same key.
    fn merge_combiners(&self, a: C, b: C) -> C;
}

impl<V: 'static, C: 'static, R: Aggregator<V, C>> Upcast<dyn Aggregator<V, C>> for R {
    fn upcast(this: Arc<Self>) -> Arc<dyn Aggregator<V, C>> {
        this
    }
}

/// `reduce_by_key`: one associative function.
#[derive(Serialize, Deserialize)]
#[serde(bound = "F: 'static")]
pub(crate) struct ReduceAgg<V, F> {
    pub(crate) f: Fun<F>,
    pub(crate) _v: Marker<V>,
}

impl<V: Data, F: Fn(V, V) -> V + Send + Sync + 'static> Aggregator<V, V> for ReduceAgg<V, F> {
    fn create(&self, v: V) -> V {
        v
    }
    #[inline]
    fn merge_value(&self, c: V, v: V) -> V {
        (self.f.get2())(c, v)
    }
    #[inline]
    fn merge_combiners(&self, a: V, b: V) -> V {
        (self.f.get2())(a, b)
    }
}

/// `aggregate_by_key` / `fold_by_key`: a zero value, a sequence and a combine function.
#[derive(Serialize, Deserialize)]
#[serde(bound = "C: Data, S: 'static, M: 'static")]
pub(crate) struct ZeroAgg<V, C, S, M> {
    pub(crate) zero: C,
    pub(crate) seq: Fun<S>,
    pub(crate) comb: Fun<M>,
    pub(crate) _v: Marker<V>,
}

impl<V, C, S, M> Aggregator<V, C> for ZeroAgg<V, C, S, M>
where
    V: Data,
    C: Data,
    S: Fn(C, V) -> C + Send + Sync + 'static,
    M: Fn(C, C) -> C + Send + Sync + 'static,
{
    fn create(&self, v: V) -> C {
        (self.seq.get2())(self.zero.clone(), v)
    }
    fn merge_value(&self, c: C, v: V) -> C {
        (self.seq.get2())(c, v)
    }
    fn merge_combiners(&self, a: C, b: C) -> C {
        (self.comb.get2())(a, b)
    }
}

/// `combine_by_key`: three user functions.
#[derive(Serialize, Deserialize)]
#[serde(bound = "Cr: 'static, Mv: 'static, Mc: 'static")]
pub(crate) struct CombineAgg<V, C, Cr, Mv, Mc> {
    pub(crate) create: Fun<Cr>,
    pub(crate) merge_value: Fun<Mv>,
    pub(crate) merge_combiners: Fun<Mc>,
    pub(crate) _vc: Marker<(V, C)>,
}

impl<V, C, Cr, Mv, Mc> Aggregator<V, C> for CombineAgg<V, C, Cr, Mv, Mc>
where
    V: Data,
    C: Data,
    Cr: Fn(V) -> C + Send + Sync + 'static,
    Mv: Fn(C, V) -> C + Send + Sync + 'static,
    Mc: Fn(C, C) -> C + Send + Sync + 'static,
{
    fn create(&self, v: V) -> C {
        (self.create.get1())(v)
    }
    fn merge_value(&self, c: C, v: V) -> C {
        (self.merge_value.get2())(c, v)
    }
    fn merge_combiners(&self, a: C, b: C) -> C {
        (self.merge_combiners.get2())(a, b)
    }
}

/// `group_by_key`: collects values into a vector.
#[derive(Serialize, Deserialize)]
#[serde(bound = "")]
pub(crate) struct GroupAgg<V>(pub(crate) Marker<V>);

impl<V: Data> Aggregator<V, Vec<V>> for GroupAgg<V> {
    fn create(&self, v: V) -> Vec<V> {
        vec![v]
    }
    fn merge_value(&self, mut c: Vec<V>, v: V) -> Vec<V> {
        c.push(v);
        c
    }
    fn merge_combiners(&self, mut a: Vec<V>, mut b: Vec<V>) -> Vec<V> {
        if a.len() < b.len() {
            std::mem::swap(&mut a, &mut b);
        }
        a.extend(b);
        a
    }
}
