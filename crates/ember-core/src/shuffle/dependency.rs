//! The shuffle dependency: a stage boundary, and the map task that writes its output.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use serde::{Deserialize, Serialize};

use crate::data::{Data, Key};
use crate::env::Env;
use crate::error::{Error, Result};
use crate::rdd::{Rdd, RddBase};
use crate::ship::Ship;
use crate::task::{BoxIter, TaskBody, TaskContext, TaskOutput};

use super::*;

static NEXT_SHUFFLE_ID: AtomicU64 = AtomicU64::new(0);

/// Deletes a shuffle's files when the driver's last handle on its dependency goes away.
struct ShuffleCleanup {
    id: ShuffleId,
    env: Weak<Env>,
}

impl Drop for ShuffleCleanup {
    fn drop(&mut self) {
        if let Some(env) = self.env.upgrade() {
            env.map_outputs.remove_shuffle(self.id);
            env.shuffle.remove_shuffle(self.id);
        }
    }
}

/// A shuffle dependency: the parent's (K, V) records are partitioned by `partitioner`,
/// optionally combined on the map side into C, and read by the child's reduce tasks.
#[derive(Serialize, Deserialize)]
#[serde(bound = "K: Data, V: Data, C: Data")]
pub struct ShuffleDependency<K, V, C> {
    /// The shuffle's id.
    pub shuffle_id: ShuffleId,
    pub(crate) partitioner: Ship<dyn Partitioner<K>>,
    pub(crate) aggregator: Option<Ship<dyn Aggregator<V, C>>>,
    pub(crate) map_side_combine: bool,
    pub(crate) num_maps: usize,
    #[serde(skip)]
    parent: Option<Rdd<(K, V)>>,
    #[serde(skip)]
    _cleanup: Option<Arc<ShuffleCleanup>>,
}

impl<K: Key, V: Data, C: Data> ShuffleDependency<K, V, C> {
    pub(crate) fn new(
        parent: Rdd<(K, V)>,
        partitioner: Ship<dyn Partitioner<K>>,
        aggregator: Option<Ship<dyn Aggregator<V, C>>>,
        map_side_combine: bool,
    ) -> Self {
        let shuffle_id = ShuffleId(NEXT_SHUFFLE_ID.fetch_add(1, Ordering::Relaxed));
        let cleanup = parent
            .context()
            .ok()
            .map(|ctx| Arc::new(ShuffleCleanup { id: shuffle_id, env: Arc::downgrade(ctx.env()) }));
        ShuffleDependency {
            shuffle_id,
            partitioner,
            aggregator,
            map_side_combine,
            num_maps: parent.num_partitions(),
            _cleanup: cleanup,
            parent: Some(parent),
        }
    }

    /// The number of reduce partitions.
    pub fn num_partitions(&self) -> usize {
        self.partitioner.num_partitions()
    }

    /// Reads reduce partition `reduce`: the (K, W) records of every map output's segment.
    pub(crate) fn read<'a, W: Data>(&self, reduce: usize, tc: &'a TaskContext) -> BoxIter<'a, (K, W)> {
        match self.reader::<W>(reduce, tc) {
            Ok(reader) => Box::new(reader),
            Err(e) => {
                tc.fail(e);
                Box::new(std::iter::empty())
            }
        }
    }

    /// The reader of reduce partition `reduce` itself, for a consumer in this crate that takes
    /// every record at once: its loop calls the reader directly rather than through a box.
    pub(crate) fn reader<'a, W: Data>(&self, reduce: usize, tc: &'a TaskContext) -> Result<ShuffleReader<'a, (K, W)>> {
        ShuffleReader::<(K, W)>::new(self.shuffle_id, self.num_maps, reduce, tc)
    }
}

impl<K: Key, V: Data> ShuffleDependency<K, V, V> {
    /// A plain shuffle of `parent`'s records by `partitioner` (no aggregation), for libraries
    /// that build their own reduce-side nodes: an RDD node returns it, wrapped in
    /// [`Dependency::Shuffle`](crate::rdd::Dependency::Shuffle), from `dependencies`, and reads
    /// it in `compute` with [`ShuffleDependency::read_partition`].
    pub fn plain<P>(parent: &Rdd<(K, V)>, partitioner: P) -> Self
    where
        P: Partitioner<K> + Serialize + serde::de::DeserializeOwned,
    {
        ShuffleDependency::new(parent.clone(), Ship::new(partitioner), None, false)
    }

    /// The records of reduce partition `reduce` from every map output, in map order. A failed
    /// fetch is recorded in `tc` (so the scheduler recomputes the lost map output) and ends the
    /// iterator.
    pub fn read_partition<'a>(&self, reduce: usize, tc: &'a TaskContext) -> BoxIter<'a, (K, V)> {
        self.read::<V>(reduce, tc)
    }

    /// The number of map tasks (partitions of the parent).
    pub fn maps(&self) -> usize {
        self.num_maps
    }
}

/// Untyped view of a shuffle dependency, for the scheduler.
pub trait ShuffleDepBase: Send + Sync {
    /// The shuffle's id.
    fn shuffle_id(&self) -> ShuffleId;
    /// Map tasks (parent partitions).
    fn num_maps(&self) -> usize;
    /// The parent RDD (driver side only).
    fn parent(&self) -> Option<Arc<dyn RddBase>>;
    /// The body of this shuffle's map tasks.
    fn map_task(&self) -> Result<Ship<dyn TaskBody>>;
}

impl<K: Key, V: Data, C: Data> ShuffleDepBase for ShuffleDependency<K, V, C> {
    fn shuffle_id(&self) -> ShuffleId {
        self.shuffle_id
    }
    fn num_maps(&self) -> usize {
        self.num_maps
    }
    fn parent(&self) -> Option<Arc<dyn RddBase>> {
        self.parent.as_ref().map(|p| p.as_base())
    }
    fn map_task(&self) -> Result<Ship<dyn TaskBody>> {
        let rdd = self.parent.clone().ok_or(Error::NoContext)?;
        Ok(Ship::new(ShuffleMapTask {
            rdd,
            dep: ShuffleDependency {
                shuffle_id: self.shuffle_id,
                partitioner: self.partitioner.clone(),
                aggregator: self.aggregator.clone(),
                map_side_combine: self.map_side_combine,
                num_maps: self.num_maps,
                parent: None,
                _cleanup: None,
            },
        }))
    }
}

/// The body of a shuffle map task: computes a parent partition and writes its shuffle output.
#[derive(Serialize, Deserialize)]
#[serde(bound = "K: Key, V: Data, C: Data")]
pub(crate) struct ShuffleMapTask<K, V, C> {
    rdd: Rdd<(K, V)>,
    dep: ShuffleDependency<K, V, C>,
}

impl<K: Key, V: Data, C: Data> TaskBody for ShuffleMapTask<K, V, C> {
    fn run(&self, partition: usize, tc: &TaskContext) -> Result<TaskOutput> {
        let records = self.rdd.iterator(partition, tc);
        let status = write_map_output(&self.dep, partition, records, tc)?;
        Ok(TaskOutput::Map(status))
    }
    fn encode_value(&self, _value: Box<dyn std::any::Any + Send>) -> Result<Vec<u8>> {
        Err(Error::Internal("shuffle map tasks return map statuses, not values".into()))
    }
}
