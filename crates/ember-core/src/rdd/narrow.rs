//! Narrow transformations: per-partition operators pipelined into one stage (`map`, `filter`,
//! `flat_map`, `map_partitions`, `sample`, ...) and multi-parent narrow RDDs (`union`, `zip`,
//! `coalesce`, `cartesian`).

use std::marker::PhantomData;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::{Dependency, Rdd, RddImpl};
use crate::collections::{write_spill, SpillFile};
use crate::data::{Data, SizeSampler};
use crate::error::Error;
use crate::ship::{Fun, Marker};
use crate::storage::MemoryConsumer;
use crate::stream::ChunkDecoder;
use crate::task::{BoxIter, TaskContext};

/// A per-partition operator from `T` records to `U` records.
pub(crate) trait Op<T, U>: Send + Sync + 'static {
    /// The operation's name.
    fn name(&self) -> &'static str;
    /// Transforms the records of partition `split`.
    fn apply<'a>(&'a self, split: usize, input: BoxIter<'a, T>, tc: &'a TaskContext) -> BoxIter<'a, U>;
}

/// An RDD computed by applying an [`Op`] to each partition of its parent.
#[derive(Serialize, Deserialize)]
#[serde(bound = "T: Data, O: Serialize + DeserializeOwned")]
pub(crate) struct PipeRdd<T, U, O> {
    parent: Rdd<T>,
    op: O,
    _u: Marker<U>,
}

impl<T: Data, U: Data, O: Op<T, U> + Serialize + DeserializeOwned> PipeRdd<T, U, O> {
    pub(crate) fn new(parent: &Rdd<T>, op: O) -> Self {
        PipeRdd { parent: parent.clone(), op, _u: PhantomData }
    }
}

impl<T: Data, U: Data, O: Op<T, U>> RddImpl<U> for PipeRdd<T, U, O> {
    fn name(&self) -> &'static str {
        self.op.name()
    }
    fn num_partitions(&self) -> usize {
        self.parent.num_partitions()
    }
    fn dependencies(&self) -> Vec<Dependency> {
        vec![Dependency::Narrow(self.parent.as_base())]
    }
    fn compute<'a>(&'a self, split: usize, tc: &'a TaskContext) -> BoxIter<'a, U> {
        self.op.apply(split, self.parent.iterator(split, tc), tc)
    }
}

/// `map`.
#[derive(Serialize, Deserialize)]
#[serde(bound = "F: 'static")]
pub(crate) struct MapOp<F>(pub(crate) Fun<F>);

impl<T: Data, U: Data, F: Fn(T) -> U + Send + Sync + 'static> Op<T, U> for MapOp<F> {
    fn name(&self) -> &'static str {
        "map"
    }
    fn apply<'a>(&'a self, _: usize, input: BoxIter<'a, T>, _: &'a TaskContext) -> BoxIter<'a, U> {
        Box::new(input.map(self.0.get1()))
    }
}

/// `filter`.
#[derive(Serialize, Deserialize)]
#[serde(bound = "F: 'static")]
pub(crate) struct FilterOp<F>(pub(crate) Fun<F>);

impl<T: Data, F: Fn(&T) -> bool + Send + Sync + 'static> Op<T, T> for FilterOp<F> {
    fn name(&self) -> &'static str {
        "filter"
    }
    fn apply<'a>(&'a self, _: usize, input: BoxIter<'a, T>, _: &'a TaskContext) -> BoxIter<'a, T> {
        Box::new(input.filter(self.0.get1()))
    }
}

/// `flat_map`.
#[derive(Serialize, Deserialize)]
#[serde(bound = "F: 'static")]
pub(crate) struct FlatMapOp<F, I>(pub(crate) Fun<F>, pub(crate) Marker<I>);

impl<T: Data, U: Data, I, F> Op<T, U> for FlatMapOp<F, I>
where
    I: IntoIterator<Item = U> + 'static,
    F: Fn(T) -> I + Send + Sync + 'static,
{
    fn name(&self) -> &'static str {
        "flat_map"
    }
    fn apply<'a>(&'a self, _: usize, input: BoxIter<'a, T>, _: &'a TaskContext) -> BoxIter<'a, U> {
        Box::new(input.flat_map(self.0.get1()))
    }
}

/// `map_partitions`.
#[derive(Serialize, Deserialize)]
#[serde(bound = "F: 'static")]
pub(crate) struct MapPartitionsOp<F>(pub(crate) Fun<F>);

impl<T: Data, U: Data, F> Op<T, U> for MapPartitionsOp<F>
where
    F: for<'a> Fn(BoxIter<'a, T>) -> BoxIter<'a, U> + Send + Sync + 'static,
{
    fn name(&self) -> &'static str {
        "map_partitions"
    }
    fn apply<'a>(&'a self, _: usize, input: BoxIter<'a, T>, _: &'a TaskContext) -> BoxIter<'a, U> {
        (self.0.get1())(input)
    }
}

/// `map_partitions_with_index`.
#[derive(Serialize, Deserialize)]
#[serde(bound = "F: 'static")]
pub(crate) struct MapPartitionsIndexOp<F>(pub(crate) Fun<F>);

impl<T: Data, U: Data, F> Op<T, U> for MapPartitionsIndexOp<F>
where
    F: for<'a> Fn(usize, BoxIter<'a, T>) -> BoxIter<'a, U> + Send + Sync + 'static,
{
    fn name(&self) -> &'static str {
        "map_partitions_with_index"
    }
    fn apply<'a>(&'a self, split: usize, input: BoxIter<'a, T>, _: &'a TaskContext) -> BoxIter<'a, U> {
        (self.0.get2())(split, input)
    }
}

/// `map_with`: a map whose function also sees a serializable environment value.
#[derive(Serialize, Deserialize)]
#[serde(bound = "E: Data, F: 'static")]
pub(crate) struct MapWithOp<E, F>(pub(crate) E, pub(crate) Fun<F>);

impl<T: Data, U: Data, E: Data, F: Fn(&E, T) -> U + Send + Sync + 'static> Op<T, U> for MapWithOp<E, F> {
    fn name(&self) -> &'static str {
        "map_with"
    }
    fn apply<'a>(&'a self, _: usize, input: BoxIter<'a, T>, _: &'a TaskContext) -> BoxIter<'a, U> {
        let (env, f) = (&self.0, self.1.get2());
        Box::new(input.map(move |x| f(env, x)))
    }
}

/// `filter_with`.
#[derive(Serialize, Deserialize)]
#[serde(bound = "E: Data, F: 'static")]
pub(crate) struct FilterWithOp<E, F>(pub(crate) E, pub(crate) Fun<F>);

impl<T: Data, E: Data, F: Fn(&E, &T) -> bool + Send + Sync + 'static> Op<T, T> for FilterWithOp<E, F> {
    fn name(&self) -> &'static str {
        "filter_with"
    }
    fn apply<'a>(&'a self, _: usize, input: BoxIter<'a, T>, _: &'a TaskContext) -> BoxIter<'a, T> {
        let (env, f) = (&self.0, self.1.get2());
        Box::new(input.filter(move |x| f(env, x)))
    }
}

/// `flat_map_with`.
#[derive(Serialize, Deserialize)]
#[serde(bound = "E: Data, F: 'static")]
pub(crate) struct FlatMapWithOp<E, F, I>(pub(crate) E, pub(crate) Fun<F>, pub(crate) Marker<I>);

impl<T: Data, U: Data, E: Data, I, F> Op<T, U> for FlatMapWithOp<E, F, I>
where
    I: IntoIterator<Item = U> + 'static,
    F: Fn(&E, T) -> I + Send + Sync + 'static,
{
    fn name(&self) -> &'static str {
        "flat_map_with"
    }
    fn apply<'a>(&'a self, _: usize, input: BoxIter<'a, T>, _: &'a TaskContext) -> BoxIter<'a, U> {
        let (env, f) = (&self.0, self.1.get2());
        Box::new(input.flat_map(move |x| f(env, x)))
    }
}

/// `map_partitions_with`: a partition function that also sees an environment value and the
/// partition index.
#[derive(Serialize, Deserialize)]
#[serde(bound = "E: Data, F: 'static")]
pub(crate) struct MapPartitionsWithOp<E, F>(pub(crate) E, pub(crate) Fun<F>);

impl<T: Data, U: Data, E: Data, F> Op<T, U> for MapPartitionsWithOp<E, F>
where
    F: for<'a> Fn(&'a E, usize, BoxIter<'a, T>) -> BoxIter<'a, U> + Send + Sync + 'static,
{
    fn name(&self) -> &'static str {
        "map_partitions_with"
    }
    fn apply<'a>(&'a self, split: usize, input: BoxIter<'a, T>, _: &'a TaskContext) -> BoxIter<'a, U> {
        (self.1.get3())(&self.0, split, input)
    }
}

/// `glom`: a partition as one vector.
#[derive(Serialize, Deserialize)]
pub(crate) struct GlomOp;

impl<T: Data> Op<T, Vec<T>> for GlomOp {
    fn name(&self) -> &'static str {
        "glom"
    }
    fn apply<'a>(&'a self, _: usize, input: BoxIter<'a, T>, _: &'a TaskContext) -> BoxIter<'a, Vec<T>> {
        Box::new(std::iter::once(input.collect()))
    }
}

/// `zip_with_index`: the global index of each record, from per-partition start offsets.
#[derive(Serialize, Deserialize)]
pub(crate) struct ZipWithIndexOp {
    pub(crate) offsets: Vec<u64>,
}

impl<T: Data> Op<T, (T, u64)> for ZipWithIndexOp {
    fn name(&self) -> &'static str {
        "zip_with_index"
    }
    fn apply<'a>(&'a self, split: usize, input: BoxIter<'a, T>, _: &'a TaskContext) -> BoxIter<'a, (T, u64)> {
        let start = self.offsets.get(split).copied().unwrap_or(0);
        Box::new(input.zip(start..))
    }
}

/// A small deterministic random number generator (SplitMix64) for sampling. Seeded per
/// partition so a recomputed partition samples the same records.
pub(crate) struct SplitMix(u64);

impl SplitMix {
    pub(crate) fn new(seed: u64) -> Self {
        SplitMix(seed)
    }
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub(crate) fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// A Poisson(lambda) draw (Knuth's method, in pieces of at most 30 for large lambda).
    pub(crate) fn poisson(&mut self, mut lambda: f64) -> u32 {
        let mut total = 0;
        while lambda > 0.0 {
            let l = lambda.min(30.0);
            lambda -= l;
            let limit = (-l).exp();
            let mut p = 1.0;
            let mut k = 0;
            loop {
                p *= self.next_f64();
                if p <= limit {
                    break;
                }
                k += 1;
            }
            total += k;
        }
        total
    }
}

/// `sample`: Bernoulli sampling without replacement, Poisson with replacement.
#[derive(Serialize, Deserialize)]
pub(crate) struct SampleOp {
    pub(crate) with_replacement: bool,
    pub(crate) fraction: f64,
    pub(crate) seed: u64,
}

impl<T: Data> Op<T, T> for SampleOp {
    fn name(&self) -> &'static str {
        "sample"
    }
    fn apply<'a>(&'a self, split: usize, input: BoxIter<'a, T>, _: &'a TaskContext) -> BoxIter<'a, T> {
        let mut rng = SplitMix::new(self.seed ^ (split as u64).wrapping_mul(0x2545_f491_4f6c_dd1d));
        let fraction = self.fraction;
        if self.with_replacement {
            Box::new(input.flat_map(move |x| {
                let n = rng.poisson(fraction) as usize;
                std::iter::repeat_n(x, n)
            }))
        } else {
            Box::new(input.filter(move |_| rng.next_f64() < fraction))
        }
    }
}

// ---- multi-parent narrow RDDs ----------------------------------------------------------------

/// `union`: the partitions of all parents, one after another.
#[derive(Serialize, Deserialize)]
#[serde(bound = "T: Data")]
pub(crate) struct UnionRdd<T> {
    parents: Vec<Rdd<T>>,
    /// Partition counts of the parents, fixed at construction (asking parents again would cost
    /// time proportional to the lineage on every call).
    counts: Vec<usize>,
}

impl<T: Data> UnionRdd<T> {
    pub(crate) fn new(parents: Vec<Rdd<T>>) -> Self {
        let counts = parents.iter().map(|p| p.num_partitions()).collect();
        UnionRdd { parents, counts }
    }

    fn locate(&self, mut split: usize) -> Option<(&Rdd<T>, usize)> {
        for (p, &n) in self.parents.iter().zip(&self.counts) {
            if split < n {
                return Some((p, split));
            }
            split -= n;
        }
        None
    }
}

impl<T: Data> RddImpl<T> for UnionRdd<T> {
    fn name(&self) -> &'static str {
        "union"
    }
    fn num_partitions(&self) -> usize {
        self.counts.iter().sum()
    }
    fn dependencies(&self) -> Vec<Dependency> {
        self.parents.iter().map(|p| Dependency::Narrow(p.as_base())).collect()
    }
    fn compute<'a>(&'a self, split: usize, tc: &'a TaskContext) -> BoxIter<'a, T> {
        match self.locate(split) {
            Some((p, s)) => p.iterator(s, tc),
            None => {
                tc.fail(Error::Internal(format!("union has no partition {split}")));
                Box::new(std::iter::empty())
            }
        }
    }
}

/// `zip`: pairs the i-th records of two RDDs with the same partitioning.
#[derive(Serialize, Deserialize)]
#[serde(bound = "A: Data, B: Data")]
pub(crate) struct ZipRdd<A, B> {
    pub(crate) a: Rdd<A>,
    pub(crate) b: Rdd<B>,
}

impl<A: Data, B: Data> RddImpl<(A, B)> for ZipRdd<A, B> {
    fn name(&self) -> &'static str {
        "zip"
    }
    fn num_partitions(&self) -> usize {
        self.a.num_partitions()
    }
    fn dependencies(&self) -> Vec<Dependency> {
        vec![Dependency::Narrow(self.a.as_base()), Dependency::Narrow(self.b.as_base())]
    }
    fn compute<'a>(&'a self, split: usize, tc: &'a TaskContext) -> BoxIter<'a, (A, B)> {
        let mut a = self.a.iterator(split, tc);
        let mut b = self.b.iterator(split, tc);
        Box::new(std::iter::from_fn(move || match (a.next(), b.next()) {
            (Some(x), Some(y)) => Some((x, y)),
            (None, None) => None,
            _ => {
                if !tc.should_stop() {
                    tc.fail(Error::InvalidArgument(format!(
                        "zip: partition {split} of the two RDDs holds different numbers of elements"
                    )));
                }
                None
            }
        }))
    }
}

/// `coalesce` without shuffle: each output partition reads a group of parent partitions.
#[derive(Serialize, Deserialize)]
#[serde(bound = "T: Data")]
pub(crate) struct CoalescedRdd<T> {
    pub(crate) parent: Rdd<T>,
    pub(crate) groups: Vec<Vec<usize>>,
}

impl<T: Data> RddImpl<T> for CoalescedRdd<T> {
    fn name(&self) -> &'static str {
        "coalesce"
    }
    fn num_partitions(&self) -> usize {
        self.groups.len()
    }
    fn dependencies(&self) -> Vec<Dependency> {
        vec![Dependency::Narrow(self.parent.as_base())]
    }
    fn compute<'a>(&'a self, split: usize, tc: &'a TaskContext) -> BoxIter<'a, T> {
        let group = self.groups.get(split).map(Vec::as_slice).unwrap_or(&[]);
        Box::new(group.iter().flat_map(move |&p| self.parent.iterator(p, tc)))
    }
}

/// `cartesian`: every pair of a record of `a` and a record of `b`.
#[derive(Serialize, Deserialize)]
#[serde(bound = "A: Data, B: Data")]
pub(crate) struct CartesianRdd<A, B> {
    pub(crate) a: Rdd<A>,
    pub(crate) b: Rdd<B>,
}

impl<A: Data, B: Data> RddImpl<(A, B)> for CartesianRdd<A, B> {
    fn name(&self) -> &'static str {
        "cartesian"
    }
    fn num_partitions(&self) -> usize {
        self.a.num_partitions() * self.b.num_partitions()
    }
    fn dependencies(&self) -> Vec<Dependency> {
        vec![Dependency::Narrow(self.a.as_base()), Dependency::Narrow(self.b.as_base())]
    }
    fn compute<'a>(&'a self, split: usize, tc: &'a TaskContext) -> BoxIter<'a, (A, B)> {
        let nb = self.b.num_partitions().max(1);
        let (right, mem) = match materialize_side(self.b.iterator(split % nb, tc), tc) {
            Ok(r) => r,
            Err(e) => {
                tc.fail(e);
                return Box::new(std::iter::empty());
            }
        };
        let right = Arc::new(right);
        Box::new(self.a.iterator(split / nb, tc).flat_map(move |x| {
            // The grant covering the materialized side lives as long as this iterator.
            let _held = &mem;
            side_iter(&right, tc).map(move |y| (x.clone(), y))
        }))
    }
}

/// The materialized side of a `cartesian`: in memory under the task's grant, or, when the
/// budget refuses, in a spill file read once per record of the other side.
enum Side<B> {
    Memory(Vec<B>),
    Disk(SpillFile),
}

/// Collects `it` for repeated iteration, measuring every record against the task's memory
/// grant and moving the records to a spill file when the grant is refused.
fn materialize_side<'a, B: Data>(
    mut it: BoxIter<'a, B>,
    tc: &'a TaskContext,
) -> crate::error::Result<(Side<B>, MemoryConsumer<'a>)> {
    let mut mem = MemoryConsumer::new(tc);
    let mut values = Vec::new();
    let mut used = 0u64;
    while let Some(b) = it.next() {
        let bytes = SizeSampler::heap_bytes(&b);
        used += bytes;
        values.push(b);
        if (values.len() % 64 == 0 || bytes >= 64 << 10) && !mem.ensure(used) {
            let (file, written) = write_spill(tc, "cartesian", values.into_iter().chain(it))?;
            tc.add_spill(used, written);
            mem.release_all();
            return Ok((Side::Disk(file), mem));
        }
    }
    if !mem.ensure(used) {
        let (file, written) = write_spill(tc, "cartesian", values.into_iter())?;
        tc.add_spill(used, written);
        mem.release_all();
        return Ok((Side::Disk(file), mem));
    }
    Ok((Side::Memory(values), mem))
}

/// The records of a materialized side, from the start.
fn side_iter<'a, B: Data>(side: &Arc<Side<B>>, tc: &'a TaskContext) -> BoxIter<'a, B> {
    match &**side {
        Side::Memory(_) => {
            let side = side.clone();
            let mut i = 0;
            Box::new(std::iter::from_fn(move || {
                let Side::Memory(v) = &*side else { return None };
                let x = v.get(i)?.clone();
                i += 1;
                Some(x)
            }))
        }
        Side::Disk(f) => {
            let path = f.path.clone();
            let file = match std::fs::File::open(&path) {
                Ok(file) => file,
                Err(e) => {
                    tc.fail(Error::io(&path, e));
                    return Box::new(std::iter::empty());
                }
            };
            let mut dec = ChunkDecoder::<_, B>::new(std::io::BufReader::with_capacity(1 << 16, file), &path);
            // The file lives as long as the side, which outlives every pass over it.
            let _keep = side.clone();
            Box::new(std::iter::from_fn(move || {
                let _ = &_keep;
                match dec.next_record() {
                    Ok(r) => r,
                    Err(e) => {
                        tc.fail(e);
                        None
                    }
                }
            }))
        }
    }
}
