//! Sort-based shuffle: partitioners, aggregators, the shuffle dependency, the map-side writer
//! (one data file plus an index per map task, with map-side combine and spilling) and the
//! reduce-side reader.
//!
//! ```text
//!  map task m ──► SpillableMap / per-partition chunk buffers ──► shuffle_S_m.data + .index
//!                        │ (spill runs when memory is refused)        │ segment r = [idx[r], idx[r+1])
//!  reduce task r ◄── segment r of every map output ◄──────────────────┘
//! ```

use std::collections::HashMap;
use std::fs::File;
use std::hash::Hash;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use serde::{Deserialize, Serialize};

use crate::collections::SpillFile;
use crate::data::{stable_hash, Data, Key};
use crate::env::Env;
use crate::error::{Error, Result};
use crate::rdd::{Rdd, RddBase};
use crate::ship::{Fun, Marker, Ship, Upcast};
use crate::storage::MemoryConsumer;
use crate::stream::{ChunkDecoder, ChunkEncoder, StreamWriter};
use crate::task::{BoxIter, TaskBody, TaskContext, TaskOutput};

/// Identifies a shuffle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ShuffleId(pub u64);

// ---- partitioners ----------------------------------------------------------------------------

/// Assigns keys to partitions. Implementations must be deterministic across processes.
pub trait Partitioner<K>: Send + Sync + 'static {
    /// The number of partitions.
    fn num_partitions(&self) -> usize;
    /// The partition of `key`, in `0..num_partitions()`.
    fn partition(&self, key: &K) -> usize;
}

impl<K: 'static, R: Partitioner<K>> Upcast<dyn Partitioner<K>> for R {
    fn upcast(this: Arc<Self>) -> Arc<dyn Partitioner<K>> {
        this
    }
}

/// Partitions by a deterministic hash of the key.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(bound = "")]
pub struct HashPartitioner<K> {
    partitions: usize,
    _k: Marker<K>,
}

impl<K> HashPartitioner<K> {
    /// A hash partitioner over `partitions` partitions (at least 1).
    pub fn new(partitions: usize) -> Self {
        HashPartitioner { partitions: partitions.max(1), _k: PhantomData }
    }
}

impl<K: Hash + 'static> Partitioner<K> for HashPartitioner<K> {
    fn num_partitions(&self) -> usize {
        self.partitions
    }
    #[inline]
    fn partition(&self, key: &K) -> usize {
        (stable_hash(key) % self.partitions as u64) as usize
    }
}

/// Partitions integer keys by value: key `k` goes to partition `k % n` (what Spark's
/// `HashPartitioner` does with integer keys). Useful when keys are partition indexes.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct IndexPartitioner(usize);

impl IndexPartitioner {
    /// An index partitioner over `partitions` partitions (at least 1).
    pub fn new(partitions: usize) -> Self {
        IndexPartitioner(partitions.max(1))
    }
}

macro_rules! index_partitioner {
    ($($t:ty),*) => {$(
        impl Partitioner<$t> for IndexPartitioner {
            fn num_partitions(&self) -> usize {
                self.0
            }
            #[inline]
            fn partition(&self, key: &$t) -> usize {
                (*key as u64 % self.0 as u64) as usize
            }
        }
    )*};
}
index_partitioner!(u8, u16, u32, u64, usize);

/// Partitions ordered keys into ranges split at sorted bounds (computed by sampling).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(bound = "K: Data")]
pub struct RangePartitioner<K> {
    bounds: Vec<K>,
    ascending: bool,
}

impl<K: Ord> RangePartitioner<K> {
    /// A range partitioner with `bounds.len() + 1` partitions. `bounds` must be sorted
    /// ascending and free of duplicates.
    pub fn new(bounds: Vec<K>, ascending: bool) -> Self {
        RangePartitioner { bounds, ascending }
    }

    /// Picks up to `partitions - 1` bounds from a sample of keys so that partitions hold about
    /// the same number of sampled keys.
    pub fn from_sample(mut sample: Vec<K>, partitions: usize, ascending: bool) -> Self {
        sample.sort();
        sample.dedup();
        let mut bounds = Vec::new();
        let p = partitions.max(1);
        if !sample.is_empty() {
            for i in 1..p {
                let idx = i * sample.len() / p;
                if idx < sample.len() {
                    bounds.push(idx);
                }
            }
        }
        bounds.dedup();
        let mut keys: Vec<Option<K>> = sample.into_iter().map(Some).collect();
        let bounds: Vec<K> = bounds.into_iter().filter_map(|i| keys[i].take()).collect();
        RangePartitioner { bounds, ascending }
    }
}

impl<K: Data + Ord> Partitioner<K> for RangePartitioner<K> {
    fn num_partitions(&self) -> usize {
        self.bounds.len() + 1
    }
    #[inline]
    fn partition(&self, key: &K) -> usize {
        let p = self.bounds.partition_point(|b| b < key);
        if self.ascending {
            p
        } else {
            self.bounds.len() - p
        }
    }
}

// ---- aggregators ------------------------------------------------------------------------------

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
#[serde(bound = "")]
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
#[serde(bound = "C: Data")]
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
#[serde(bound = "")]
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

// ---- map outputs -----------------------------------------------------------------------------

/// Where a map task's shuffle output lives and how big each reduce segment is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapStatus {
    /// The shuffle.
    pub shuffle: ShuffleId,
    /// The map partition.
    pub map: usize,
    /// The executor holding the files.
    pub location: String,
    /// The data file (the index file has the same stem with extension `index`), or `None` when
    /// the output is small enough to be held in the executor's memory.
    pub data: Option<PathBuf>,
    /// Compressed bytes of each reduce segment.
    pub sizes: Vec<u64>,
}

/// Shuffle files and map output locations of one executor (and, in local mode, the driver's map
/// output tracker).
pub struct ShuffleManager {
    dir: PathBuf,
    outputs: Mutex<HashMap<ShuffleId, Vec<Option<MapStatus>>>>,
    memory: Mutex<HashMap<(ShuffleId, usize), Arc<Vec<u8>>>>,
    memory_used: AtomicU64,
    memory_cap: u64,
    /// Map outputs up to this size are kept in memory instead of files (creating and deleting
    /// small files dominates the cost of tiny jobs); larger ones stream to disk. 0: always files.
    memory_output_limit: usize,
}

impl ShuffleManager {
    /// `memory_cap` bounds the bytes of map outputs held in memory; outputs larger than
    /// `memory_output_limit` always go to files.
    pub(crate) fn new(dir: PathBuf, memory_cap: u64, memory_output_limit: usize) -> Self {
        ShuffleManager {
            dir,
            outputs: Mutex::new(HashMap::new()),
            memory: Mutex::new(HashMap::new()),
            memory_used: AtomicU64::new(0),
            memory_cap,
            memory_output_limit,
        }
    }

    fn memory(&self) -> MutexGuard<'_, HashMap<(ShuffleId, usize), Arc<Vec<u8>>>> {
        self.memory.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Keeps a map output in memory if the cap allows; gives the bytes back otherwise.
    fn try_keep_in_memory(&self, id: ShuffleId, map: usize, bytes: Vec<u8>) -> std::result::Result<(), Vec<u8>> {
        let n = bytes.len() as u64;
        let mut used = self.memory_used.load(Ordering::Relaxed);
        loop {
            if used + n > self.memory_cap {
                return Err(bytes);
            }
            match self.memory_used.compare_exchange(used, used + n, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => break,
                Err(u) => used = u,
            }
        }
        if let Some(old) = self.memory().insert((id, map), Arc::new(bytes)) {
            self.memory_used.fetch_sub(old.len() as u64, Ordering::AcqRel);
        }
        Ok(())
    }

    fn memory_output(&self, id: ShuffleId, map: usize) -> Option<Arc<Vec<u8>>> {
        self.memory().get(&(id, map)).cloned()
    }

    fn delete_output(&self, s: &MapStatus) {
        match &s.data {
            Some(p) => {
                let _ = std::fs::remove_file(p);
                let _ = std::fs::remove_file(p.with_extension("index"));
            }
            None => {
                if let Some(b) = self.memory().remove(&(s.shuffle, s.map)) {
                    self.memory_used.fetch_sub(b.len() as u64, Ordering::AcqRel);
                }
            }
        }
    }

    /// Fault injection: destroys a map output's data (file or memory) while its status stays
    /// registered, as when an executor's disk is lost. Readers then hit a fetch failure and the
    /// scheduler recomputes the output. Returns whether there was such an output.
    pub fn lose_map_output(&self, id: ShuffleId, map: usize) -> bool {
        let status = self.lock().get(&id).and_then(|v| v.get(map).cloned().flatten());
        match status {
            Some(s) => {
                self.delete_output(&s);
                true
            }
            None => false,
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<ShuffleId, Vec<Option<MapStatus>>>> {
        self.outputs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records where a map task's output is. `maps` is the shuffle's number of map tasks.
    pub(crate) fn register_map_output(&self, status: MapStatus, maps: usize) {
        let mut o = self.lock();
        let v = o.entry(status.shuffle).or_insert_with(|| vec![None; maps]);
        if let Some(slot) = v.get_mut(status.map) {
            if let Some(old) = slot.replace(status) {
                // A newer attempt replaced this output: delete the older file. (A memory output
                // was already replaced under the same key.)
                if old.data.is_some() && Some(&old.data) != slot.as_ref().map(|s| &s.data) {
                    self.delete_output(&old);
                }
            }
        }
    }

    /// Forgets a map output (its files were lost); the map task must run again.
    pub fn unregister_map_output(&self, id: ShuffleId, map: usize) {
        if let Some(slot) = self.lock().get_mut(&id).and_then(|v| v.get_mut(map)) {
            *slot = None;
        }
    }

    /// Map partitions whose output is missing.
    pub(crate) fn missing(&self, id: ShuffleId, maps: usize) -> Vec<usize> {
        match self.lock().get(&id) {
            Some(v) => v.iter().enumerate().filter(|(_, s)| s.is_none()).map(|(i, _)| i).collect(),
            None => (0..maps).collect(),
        }
    }

    /// The map statuses of a shuffle with `maps` map tasks, or the first missing one as a fetch
    /// failure.
    pub(crate) fn statuses(&self, id: ShuffleId, maps: usize, reduce: usize) -> Result<Vec<MapStatus>> {
        if maps == 0 {
            return Ok(Vec::new());
        }
        let o = self.lock();
        let v = o.get(&id).ok_or_else(|| Error::FetchFailed {
            shuffle: id.0,
            map: 0,
            reduce,
            message: "shuffle is not registered".into(),
        })?;
        v.iter()
            .enumerate()
            .map(|(m, s)| {
                s.clone().ok_or_else(|| Error::FetchFailed {
                    shuffle: id.0,
                    map: m,
                    reduce,
                    message: "map output is missing".into(),
                })
            })
            .collect()
    }

    /// The map statuses registered for a shuffle (for tests and fault injection).
    pub fn map_statuses(&self, id: ShuffleId) -> Vec<Option<MapStatus>> {
        self.lock().get(&id).cloned().unwrap_or_default()
    }

    /// Forgets a shuffle and deletes its files.
    pub(crate) fn remove_shuffle(&self, id: ShuffleId) {
        let removed = self.lock().remove(&id);
        for s in removed.into_iter().flatten().flatten() {
            self.delete_output(&s);
        }
    }

    fn data_path(&self, id: ShuffleId, map: usize, attempt: u64) -> PathBuf {
        self.dir.join(format!("shuffle_{}_{}_{}.data", id.0, map, attempt))
    }
}

static NEXT_SHUFFLE_ID: AtomicU64 = AtomicU64::new(0);

// ---- the dependency --------------------------------------------------------------------------

/// Deletes a shuffle's files when the driver's last handle on its dependency goes away.
struct ShuffleCleanup {
    id: ShuffleId,
    env: Weak<Env>,
}

impl Drop for ShuffleCleanup {
    fn drop(&mut self) {
        if let Some(env) = self.env.upgrade() {
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
        let statuses = match tc.env().shuffle.statuses(self.shuffle_id, self.num_maps, reduce) {
            Ok(s) => s,
            Err(e) => {
                tc.fail(e);
                return Box::new(std::iter::empty());
            }
        };
        Box::new(ShuffleReader::<(K, W)> { statuses, next_map: 0, current: None, reduce, tc, records: 0, bytes: 0 })
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

// ---- writer ----------------------------------------------------------------------------------

/// Output of one map task being assembled: an encoded stream with segment boundaries.
/// Where map output bytes go: memory until they pass the limit, then a temporary file.
enum Sink {
    Memory(Vec<u8>),
    File(BufWriter<File>),
}

struct OutputSink {
    sink: Sink,
    tmp: PathBuf,
    limit: usize,
}

impl Write for OutputSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Sink::Memory(v) = &mut self.sink {
            if v.len() + buf.len() <= self.limit {
                v.extend_from_slice(buf);
                return Ok(buf.len());
            }
            let mut f = BufWriter::with_capacity(1 << 16, File::create(&self.tmp)?);
            f.write_all(v)?;
            self.sink = Sink::File(f);
        }
        match &mut self.sink {
            Sink::File(f) => f.write(buf),
            Sink::Memory(_) => Ok(0),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match &mut self.sink {
            Sink::File(f) => f.flush(),
            Sink::Memory(_) => Ok(()),
        }
    }
}

struct MapOutputFile {
    w: StreamWriter<OutputSink>,
    tmp: PathBuf,
    offsets: Vec<u64>,
}

impl MapOutputFile {
    fn create(tmp: PathBuf, codec: crate::conf::Codec, limit: usize) -> Result<Self> {
        let sink = OutputSink { sink: Sink::Memory(Vec::new()), tmp: tmp.clone(), limit };
        Ok(MapOutputFile { w: StreamWriter::new(sink, codec, &tmp), tmp, offsets: vec![0] })
    }

    /// Ends segments up to (not including) partition `p`.
    fn close_until(&mut self, p: usize) -> Result<()> {
        while self.offsets.len() <= p {
            let end = self.w.end_segment()?;
            self.offsets.push(end);
        }
        Ok(())
    }

    /// Finishes every segment. A small output stays in memory (`None`); a large one gets its
    /// index written and both files moved into place.
    fn commit(
        mut self,
        partitions: usize,
        data: &Path,
        shuffle: &ShuffleManager,
        id: ShuffleId,
        map: usize,
    ) -> Result<(Option<PathBuf>, Vec<u64>)> {
        self.close_until(partitions)?;
        let sizes: Vec<u64> = self.offsets.windows(2).map(|w| w[1] - w[0]).collect();
        let mut file = match self.w.finish()?.sink {
            Sink::Memory(bytes) => match shuffle.try_keep_in_memory(id, map, bytes) {
                Ok(()) => return Ok((None, sizes)),
                Err(bytes) => {
                    std::fs::write(&self.tmp, &bytes).map_err(|e| Error::io(&self.tmp, e))?;
                    File::options().append(true).open(&self.tmp).map_err(|e| Error::io(&self.tmp, e))?
                }
            },
            Sink::File(f) => f.into_inner().map_err(|e| Error::io(&self.tmp, e.into_error()))?,
        };
        file.flush().map_err(|e| Error::io(&self.tmp, e))?;
        let index_tmp = self.tmp.with_extension("index.tmp");
        let mut idx = Vec::with_capacity(self.offsets.len() * 8);
        for o in &self.offsets {
            idx.extend_from_slice(&o.to_le_bytes());
        }
        std::fs::write(&index_tmp, &idx).map_err(|e| Error::io(&index_tmp, e))?;
        let index = data.with_extension("index");
        std::fs::rename(&index_tmp, &index).map_err(|e| Error::io(&index, e))?;
        std::fs::rename(&self.tmp, data).map_err(|e| Error::io(data, e))?;
        Ok((Some(data.to_path_buf()), sizes))
    }
}

fn bad_partition(p: usize, parts: usize) -> Error {
    Error::InvalidArgument(format!("the partitioner returned partition {p}, but it has {parts} partitions"))
}

fn write_map_output<K: Key, V: Data, C: Data>(
    dep: &ShuffleDependency<K, V, C>,
    map: usize,
    records: BoxIter<'_, (K, V)>,
    tc: &TaskContext,
) -> Result<MapStatus> {
    let env = tc.env();
    let parts = dep.partitioner.num_partitions();
    let data = env.shuffle.data_path(dep.shuffle_id, map, tc.task_attempt_id);
    let tmp = data.with_extension(format!("tmp{}", env.next_file_id()));
    let part: &dyn Partitioner<K> = &**dep.partitioner.get();
    let mut out = PartitionBuffers::new(tc, parts);
    match (&dep.aggregator, dep.map_side_combine) {
        (Some(agg), true) => combine_into(records, &**agg.get(), part, &mut out)?,
        _ => {
            for (k, v) in records {
                out.push(part.partition(&k), &(k, v))?;
            }
        }
    }
    if let Some(e) = tc.take_error() {
        return Err(e);
    }
    let written = out.records;
    let (data, sizes) = out.commit(tmp, &data, (dep.shuffle_id, map))?;
    if let Some(e) = tc.take_error() {
        if let Some(d) = &data {
            let _ = std::fs::remove_file(d);
        }
        return Err(e);
    }
    let bytes: u64 = sizes.iter().sum();
    tc.add_shuffle_write(written, bytes);
    Ok(MapStatus { shuffle: dep.shuffle_id, map, location: env.executor_id.clone(), data, sizes })
}

/// Map-side combine keeps at most this many keys in its hash map: a map this size stays in the
/// processor caches, where lookups are several times faster than in a map of every key of the
/// partition. When it fills, its partial combiners go to the output and it starts again; reducers
/// merge combiners anyway, so this only trades some shuffle volume for much cheaper lookups
/// (partial aggregation, as in Presto or Flink's mini-batches, rather than Spark's full map).
const PARTIAL_AGG_KEYS: usize = 1 << 16;

/// Combines values by key on the map side in a bounded hash map whose partial combiners are
/// flushed into `out` when it fills or when memory is refused.
fn combine_into<K: Key, V: Data, C: Data>(
    records: BoxIter<'_, (K, V)>,
    agg: &dyn Aggregator<V, C>,
    part: &dyn Partitioner<K>,
    out: &mut PartitionBuffers<'_>,
) -> Result<()> {
    use hashbrown::hash_map::Entry;
    let mut map: hashbrown::HashMap<K, C, rustc_hash::FxBuildHasher> =
        hashbrown::HashMap::with_hasher(rustc_hash::FxBuildHasher);
    let mut sampler = crate::data::SizeSampler::new();
    let mut ops = 0u64;
    let flush = |map: &mut hashbrown::HashMap<K, C, rustc_hash::FxBuildHasher>, out: &mut PartitionBuffers<'_>| {
        map.drain().try_for_each(|(k, c)| out.push(part.partition(&k), &(k, c)))
    };
    for (k, v) in records {
        ops += 1;
        let sample = ops < 16 || ops % 64 == 0;
        match map.entry(k) {
            Entry::Occupied(e) => {
                let e = e.replace_entry_with(|_, c| Some(agg.merge_value(c, v)));
                if let (true, Entry::Occupied(e)) = (sample, e) {
                    sampler.add(&(e.key(), e.get()));
                }
            }
            Entry::Vacant(e) => {
                let c = agg.create(v);
                if sample {
                    sampler.add(&(e.key(), &c));
                }
                e.insert(c);
            }
        }
        if map.len() >= PARTIAL_AGG_KEYS {
            flush(&mut map, out)?;
        } else if ops % 64 == 0 {
            let map_bytes = map.len() as u64 * (sampler.per_record() + 16);
            if !out.fits(map_bytes) {
                flush(&mut map, out)?;
            }
        }
    }
    flush(&mut map, out)
}

/// A map task's output being assembled: records serialized at once into per-partition chunk
/// buffers (compact, compressed). When memory is refused the buffers spill to a run file whose
/// segments are later copied, still encoded, into the output.
struct PartitionBuffers<'a> {
    bufs: Vec<ChunkEncoder>,
    mem: MemoryConsumer<'a>,
    runs: Vec<(SpillFile, Vec<(u64, u64)>)>,
    records: u64,
    tc: &'a TaskContext,
}

impl<'a> PartitionBuffers<'a> {
    fn new(tc: &'a TaskContext, parts: usize) -> Self {
        let codec = tc.env().codec;
        PartitionBuffers {
            bufs: (0..parts).map(|_| ChunkEncoder::new(codec)).collect(),
            mem: MemoryConsumer::new(tc),
            runs: Vec::new(),
            records: 0,
            tc,
        }
    }

    #[inline]
    fn push<R: Serialize>(&mut self, p: usize, record: &R) -> Result<()> {
        let parts = self.bufs.len();
        self.bufs.get_mut(p).ok_or_else(|| bad_partition(p, parts))?.push(record)?;
        self.records += 1;
        if self.records % 256 == 0 && !self.fits(0) {
            self.spill()?;
        }
        Ok(())
    }

    /// Whether the buffers plus `extra` bytes held elsewhere fit in the task's memory grant.
    /// When they do not, the buffers are spilled (and `false` tells the caller to free its share).
    fn fits(&mut self, extra: u64) -> bool {
        let held: u64 = self.bufs.iter().map(|b| b.held_bytes() as u64).sum::<u64>() + self.bufs.len() as u64 * 64;
        if self.mem.ensure(held + extra) {
            return true;
        }
        if extra == 0 {
            return false;
        }
        if let Err(e) = self.spill() {
            self.tc.fail(e);
        }
        self.mem.ensure(extra)
    }

    fn spill(&mut self) -> Result<()> {
        let held: u64 = self.bufs.iter().map(|b| b.held_bytes() as u64).sum();
        if held > 0 {
            self.runs.push(spill_buffers(&mut self.bufs, self.tc, held)?);
        }
        self.mem.release_all();
        Ok(())
    }

    /// Writes the output: for each partition, its spilled segments then its buffer.
    fn commit(
        mut self,
        tmp: PathBuf,
        data: &Path,
        (id, map): (ShuffleId, usize),
    ) -> Result<(Option<PathBuf>, Vec<u64>)> {
        let env = self.tc.env();
        let parts = self.bufs.len();
        let mut out = MapOutputFile::create(tmp, env.codec, env.shuffle.memory_output_limit)?;
        let mut copy = Vec::new();
        for (p, b) in self.bufs.iter_mut().enumerate() {
            out.close_until(p)?;
            for (file, segs) in &self.runs {
                let (start, len) = segs[p];
                if len > 0 {
                    let mut f = File::open(&file.path).map_err(|e| Error::io(&file.path, e))?;
                    f.seek(SeekFrom::Start(start)).map_err(|e| Error::io(&file.path, e))?;
                    copy.resize(len as usize, 0);
                    f.read_exact(&mut copy).map_err(|e| Error::io(&file.path, e))?;
                    out.w.write_encoded(&copy)?;
                }
            }
            out.w.write_encoded(&b.take_bytes())?;
        }
        out.commit(parts, data, &env.shuffle, id, map)
    }
}

fn spill_buffers(bufs: &mut [ChunkEncoder], tc: &TaskContext, held: u64) -> Result<(SpillFile, Vec<(u64, u64)>)> {
    let mut segs = Vec::with_capacity(bufs.len());
    let mut chunks = Vec::with_capacity(bufs.len());
    let mut pos = 0u64;
    for b in bufs.iter_mut() {
        let bytes = b.take_bytes();
        segs.push((pos, bytes.len() as u64));
        pos += bytes.len() as u64;
        chunks.push(bytes);
    }
    // The run file holds already-encoded chunk bytes, copied later without decoding.
    let path = crate::collections::spill_path(tc, "shuffle")?;
    let spill = SpillFile { path: path.clone() };
    let mut f = BufWriter::new(File::create(&path).map_err(|e| Error::io(&path, e))?);
    for c in &chunks {
        f.write_all(c).map_err(|e| Error::io(&path, e))?;
    }
    f.flush().map_err(|e| Error::io(&path, e))?;
    tc.add_spill(held, pos);
    Ok((spill, segs))
}

// ---- reader ----------------------------------------------------------------------------------

/// A byte range of a shared buffer, read without copying the buffer.
struct SharedSlice {
    bytes: Arc<Vec<u8>>,
    pos: usize,
    end: usize,
}

impl Read for SharedSlice {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf.len().min(self.end - self.pos);
        buf[..n].copy_from_slice(&self.bytes[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

struct ShuffleReader<'a, R> {
    statuses: Vec<MapStatus>,
    next_map: usize,
    current: Option<ChunkDecoder<Box<dyn Read>, R>>,
    reduce: usize,
    tc: &'a TaskContext,
    records: u64,
    bytes: u64,
}

impl<R: serde::de::DeserializeOwned> ShuffleReader<'_, R> {
    fn open(&self, s: &MapStatus) -> Result<ChunkDecoder<Box<dyn Read>, R>> {
        let fetch_failed =
            |message: String| Error::FetchFailed { shuffle: s.shuffle.0, map: s.map, reduce: self.reduce, message };
        // The map status carries the segment sizes, so a local read needs no index lookup; the
        // index file is there for a remote executor's transfer service.
        if self.reduce >= s.sizes.len() {
            return Err(fetch_failed(format!("map output has {} segments, not {}", s.sizes.len(), self.reduce + 1)));
        }
        let start: u64 = s.sizes[..self.reduce].iter().sum();
        let len = s.sizes[self.reduce];
        let Some(path) = &s.data else {
            let bytes = self
                .tc
                .env()
                .shuffle
                .memory_output(s.shuffle, s.map)
                .ok_or_else(|| fetch_failed("in-memory map output is gone".into()))?;
            let end = (start + len) as usize;
            if end > bytes.len() {
                return Err(fetch_failed("in-memory map output is shorter than its status says".into()));
            }
            let origin = PathBuf::from(format!("shuffle_{}_{}(memory)", s.shuffle.0, s.map));
            let src: Box<dyn Read> = Box::new(SharedSlice { bytes, pos: start as usize, end });
            return Ok(ChunkDecoder::new(src, &origin).expecting(len));
        };
        let mut f = File::open(path).map_err(|e| fetch_failed(format!("{}: {e}", path.display())))?;
        f.seek(SeekFrom::Start(start)).map_err(|e| fetch_failed(format!("{}: {e}", path.display())))?;
        let buf = (len as usize).clamp(64, 1 << 16);
        let src: Box<dyn Read> = Box::new(BufReader::with_capacity(buf, f).take(len));
        Ok(ChunkDecoder::new(src, path).expecting(len))
    }
}

impl<R: serde::de::DeserializeOwned> Iterator for ShuffleReader<'_, R> {
    type Item = R;
    fn next(&mut self) -> Option<R> {
        loop {
            if let Some(dec) = &mut self.current {
                match dec.next_record() {
                    Ok(Some(r)) => {
                        self.records += 1;
                        if self.records & 1023 == 0 && self.tc.should_stop() {
                            return None;
                        }
                        return Some(r);
                    }
                    Ok(None) => self.current = None,
                    Err(e) => {
                        let s = &self.statuses[self.next_map - 1];
                        self.tc.fail(Error::FetchFailed {
                            shuffle: s.shuffle.0,
                            map: s.map,
                            reduce: self.reduce,
                            message: e.to_string(),
                        });
                        return None;
                    }
                }
            }
            if self.next_map >= self.statuses.len() {
                return None;
            }
            let s = self.statuses[self.next_map].clone();
            self.next_map += 1;
            if s.sizes.get(self.reduce).copied().unwrap_or(1) == 0 {
                continue;
            }
            self.bytes += s.sizes.get(self.reduce).copied().unwrap_or(0);
            match self.open(&s) {
                Ok(d) => self.current = Some(d),
                Err(e) => {
                    self.tc.fail(e);
                    return None;
                }
            }
        }
    }
}

impl<R> Drop for ShuffleReader<'_, R> {
    fn drop(&mut self) {
        self.tc.add_shuffle_read(self.records, self.bytes);
    }
}
