//! Spillable collections: an external hash aggregation map and an external sorter. Both keep
//! records in memory under the task's execution memory grant and spill sorted runs to disk when
//! the grant is refused, then merge the runs when iterated.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;
use std::fs::File;
use std::hash::Hash;
use std::io::{BufReader, BufWriter};
use std::path::{Path, PathBuf};

use hashbrown::hash_map::Entry;
use hashbrown::HashMap;
use rustc_hash::FxBuildHasher;

use crate::data::{stable_hash, Data, SizeSampler};
use crate::error::{Error, Result};
use crate::storage::MemoryConsumer;
use crate::stream::{ChunkDecoder, StreamWriter};
use crate::task::{Interruptible, TaskContext};

/// How often (in inserts) memory use and cancellation are checked.
const CHECK_EVERY: u64 = 64;

/// Fails with `Error::Cancelled` once the task was killed, so loops that fill, sort or spill a
/// collection stop even when their input is not an interruptible iterator.
#[inline]
fn check_killed(tc: &TaskContext) -> Result<()> {
    if tc.is_killed() {
        return Err(Error::Cancelled("the task was killed".into()));
    }
    Ok(())
}

/// A record at least this large has its memory checked at once rather than at the next
/// periodic check.
const BIG_RECORD: u64 = 64 << 10;

/// An iterator over a collection's in-memory data that keeps the collection's memory grant
/// until it is dropped: the data stays in memory while it is iterated.
struct Held<'a, I> {
    inner: I,
    _mem: MemoryConsumer<'a>,
}

impl<I: Iterator> Iterator for Held<'_, I> {
    type Item = I::Item;
    #[inline]
    fn next(&mut self) -> Option<I::Item> {
        self.inner.next()
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        self.inner.size_hint()
    }
}

/// A spill file, deleted when dropped.
pub(crate) struct SpillFile {
    pub(crate) path: PathBuf,
}

impl Drop for SpillFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A new spill file path for this task.
pub(crate) fn spill_path(tc: &TaskContext, kind: &str) -> Result<PathBuf> {
    let dir = tc.env().local_dir.join("spill");
    let n = tc.env().next_file_id();
    Ok(dir.join(format!("{kind}-{}-{n}.spill", tc.task_attempt_id)))
}

/// Writes records to a new spill file; returns it and its size in bytes.
pub(crate) fn write_spill<'r, R: serde::Serialize + 'r>(
    tc: &TaskContext,
    kind: &str,
    records: impl Iterator<Item = R>,
) -> Result<(SpillFile, u64)> {
    let path = spill_path(tc, kind)?;
    let file = File::create(&path).map_err(|e| Error::io(&path, e))?;
    let spill = SpillFile { path: path.clone() };
    let mut w = StreamWriter::new(BufWriter::with_capacity(1 << 16, file), tc.env().codec, &path);
    for r in records {
        check_killed(tc)?;
        w.write(&r)?;
    }
    let n = w.position();
    let n = n.max(w.end_segment()?);
    w.finish()?;
    Ok((spill, n))
}

fn open_run<T: serde::de::DeserializeOwned>(path: &Path) -> Result<ChunkDecoder<BufReader<File>, T>> {
    let f = File::open(path).map_err(|e| Error::io(path, e))?;
    Ok(ChunkDecoder::new(BufReader::with_capacity(1 << 16, f), path))
}

/// An external hash aggregation map (Spark's `ExternalAppendOnlyMap`): combines values by key in
/// memory and spills runs sorted by key hash when memory is refused. Iterating merges the runs,
/// combining entries whose keys are equal.
pub(crate) struct SpillableMap<'a, K, C> {
    map: HashMap<K, C, FxBuildHasher>,
    sampler: SizeSampler,
    /// Bytes by which inserted values larger than the per-entry estimate exceed it: such a
    /// value counts at its real size.
    oversized: u64,
    ops: u64,
    mem: MemoryConsumer<'a>,
    tc: &'a TaskContext,
    spills: Vec<SpillFile>,
}

impl<'a, K: Data + Hash + Eq, C: Data> SpillableMap<'a, K, C> {
    pub(crate) fn new(tc: &'a TaskContext) -> Self {
        SpillableMap {
            map: HashMap::with_hasher(FxBuildHasher),
            sampler: SizeSampler::new(),
            oversized: 0,
            ops: 0,
            mem: MemoryConsumer::new(tc),
            tc,
            spills: Vec::new(),
        }
    }

    /// Inserts `x` under `k`: `create(x)` for a new key, `merge(c, x)` for an existing one.
    #[inline]
    pub(crate) fn insert<X: serde::Serialize>(
        &mut self,
        k: K,
        x: X,
        create: impl FnOnce(X) -> C,
        merge: impl FnOnce(C, X) -> C,
    ) -> Result<()> {
        self.ops += 1;
        let sample = self.ops % CHECK_EVERY == 0 || self.ops < 16;
        let x_bytes = SizeSampler::heap_bytes(&x);
        let estimate = self.sampler.per_record();
        let big = x_bytes > estimate;
        if big {
            self.oversized += x_bytes - estimate;
        }
        match self.map.entry(k) {
            Entry::Occupied(e) => {
                let e = e.replace_entry_with(|_, c| Some(merge(c, x)));
                if sample {
                    if let Entry::Occupied(e) = e {
                        self.sampler.add(&(e.key(), e.get()));
                    }
                }
            }
            Entry::Vacant(v) => {
                let c = create(x);
                if sample {
                    self.sampler.add(&(v.key(), &c));
                }
                v.insert(c);
            }
        }
        if self.ops % CHECK_EVERY == 0 || (big && x_bytes >= BIG_RECORD) {
            check_killed(self.tc)?;
            self.maybe_spill()?;
        }
        Ok(())
    }

    fn estimated_bytes(&self) -> u64 {
        // Entries plus the table's own slots, plus what oversized values add.
        self.map.len() as u64 * (self.sampler.per_record() + 16) + self.oversized
    }

    fn maybe_spill(&mut self) -> Result<()> {
        let used = self.estimated_bytes();
        if self.mem.ensure(used) {
            return Ok(());
        }
        self.spill(used)
    }

    fn sorted_entries(&mut self) -> Vec<(u64, K, C)> {
        let mut v: Vec<(u64, K, C)> = self.map.drain().map(|(k, c)| (stable_hash(&k), k, c)).collect();
        v.sort_unstable_by_key(|e| e.0);
        v
    }

    fn spill(&mut self, used: u64) -> Result<()> {
        if self.map.is_empty() {
            return Ok(());
        }
        let entries = self.sorted_entries();
        let (file, bytes) = write_spill(self.tc, "agg", entries.iter().map(|(_, k, c)| (k, c)))?;
        drop(entries);
        self.map = HashMap::with_hasher(FxBuildHasher);
        self.oversized = 0;
        self.spills.push(file);
        self.tc.add_spill(used, bytes);
        self.mem.release_all();
        Ok(())
    }

    /// Iterates all (key, combiner) entries, in no particular order, combining across spills
    /// with `merge`. The iterator keeps the map's memory grant until it is dropped; merging a
    /// key's combiners from several spills is accounted too, and fails with
    /// [`Error::ResourcesExhausted`] when one key's merged combiner cannot fit.
    pub(crate) fn into_iter(mut self, merge: impl Fn(C, C) -> C + 'a) -> Result<Box<dyn Iterator<Item = (K, C)> + 'a>> {
        check_killed(self.tc)?;
        let mem = std::mem::replace(&mut self.mem, MemoryConsumer::new(self.tc));
        if self.spills.is_empty() {
            let inner = Interruptible::new(std::mem::take(&mut self.map).into_iter(), self.tc);
            return Ok(Box::new(Held { inner, _mem: mem }));
        }
        let base = self.estimated_bytes();
        let entries = self.sorted_entries();
        let mut runs: Vec<Run<'a, K, C>> = Vec::new();
        for s in &self.spills {
            runs.push(Run::File(open_run(&s.path)?));
        }
        runs.push(Run::Mem(Box::new(entries.into_iter().map(|(_, k, c)| (k, c)))));
        let spills = std::mem::take(&mut self.spills);
        let mut merger = HashMerge {
            runs,
            heads: Vec::new(),
            heap: BinaryHeap::new(),
            merge: Box::new(merge),
            pending: Vec::new(),
            tc: self.tc,
            mem,
            base,
            _spills: spills,
        };
        merger.prime();
        Ok(Box::new(merger))
    }
}

enum Run<'a, K, C> {
    File(ChunkDecoder<BufReader<File>, (K, C)>),
    Mem(Box<dyn Iterator<Item = (K, C)> + 'a>),
}

impl<K: Data, C: Data> Run<'_, K, C> {
    fn next(&mut self) -> Result<Option<(K, C)>> {
        match self {
            Run::File(d) => d.next_record(),
            Run::Mem(it) => Ok(it.next()),
        }
    }
}

struct HashMerge<'a, K, C> {
    runs: Vec<Run<'a, K, C>>,
    heads: Vec<Option<(K, C)>>,
    heap: BinaryHeap<Reverse<(u64, usize)>>,
    merge: Box<dyn Fn(C, C) -> C + 'a>,
    pending: Vec<(K, C)>,
    tc: &'a TaskContext,
    /// The grant covering the in-memory run (`base` bytes) and the group being merged.
    mem: MemoryConsumer<'a>,
    base: u64,
    _spills: Vec<SpillFile>,
}

impl<K: Data + Hash + Eq, C: Data> HashMerge<'_, K, C> {
    fn advance(&mut self, run: usize) {
        match self.runs[run].next() {
            Ok(Some(kc)) => {
                let o = stable_hash(&kc.0);
                self.heads[run] = Some(kc);
                self.heap.push(Reverse((o, run)));
            }
            Ok(None) => self.heads[run] = None,
            Err(e) => {
                self.heads[run] = None;
                self.tc.fail(e);
            }
        }
    }

    fn prime(&mut self) {
        self.heads = (0..self.runs.len()).map(|_| None).collect();
        for r in 0..self.runs.len() {
            self.advance(r);
        }
    }
}

impl<K: Data + Hash + Eq, C: Data> Iterator for HashMerge<'_, K, C> {
    type Item = (K, C);
    fn next(&mut self) -> Option<(K, C)> {
        loop {
            if let Some(x) = self.pending.pop() {
                return Some(x);
            }
            if self.tc.should_stop() {
                return None;
            }
            let Reverse((order, run)) = self.heap.pop()?;
            let mut group: Vec<(K, C)> = Vec::with_capacity(2);
            // Bytes of the combiners merged from more than one run: a key's merged combiner
            // (a join's or a cogroup's values) must fit in the task's memory.
            let mut merged = (0u64, 0u64);
            let take = |this: &mut Self, run: usize, group: &mut Vec<(K, C)>, merged: &mut (u64, u64)| {
                if let Some((k, c)) = this.heads[run].take() {
                    match group.iter().position(|(g, _)| *g == k) {
                        Some(i) => {
                            let (gk, gc) = group.swap_remove(i);
                            if merged.0 == 0 {
                                *merged = (1, SizeSampler::heap_bytes(&gc));
                            }
                            *merged = (merged.0 + 1, merged.1 + SizeSampler::heap_bytes(&c));
                            group.push((gk, (this.merge)(gc, c)));
                        }
                        None => group.push((k, c)),
                    }
                }
                this.advance(run);
            };
            take(self, run, &mut group, &mut merged);
            while let Some(Reverse((o, r))) = self.heap.peek().copied() {
                if o != order {
                    break;
                }
                self.heap.pop();
                take(self, r, &mut group, &mut merged);
            }
            if merged.0 > 0 && !self.mem.ensure(self.base + merged.1) {
                self.tc.fail(Error::ResourcesExhausted(format!(
                    "the values of one key, merged from {} spilled parts, need about {} bytes: more than \
                     this task's share of the memory budget ({} bytes); raise ember.memory.size or \
                     spread the key's records",
                    merged.0,
                    merged.1,
                    self.tc.env().blocks.task_share()
                )));
                return None;
            }
            self.pending.extend(group);
        }
    }
}

/// An external sorter for key/value records (Spark's `ExternalSorter` with an ordering): sorts
/// in memory, spilling sorted runs when memory is refused, and merges runs when iterated.
pub(crate) struct ExternalSorter<'a, K, V> {
    buf: Vec<(K, V)>,
    /// Measured heap bytes of the buffered records (beyond their inline size).
    heap: u64,
    mem: MemoryConsumer<'a>,
    tc: &'a TaskContext,
    spills: Vec<SpillFile>,
    ascending: bool,
}

fn cmp_keys<K: Ord>(a: &K, b: &K, ascending: bool) -> Ordering {
    if ascending {
        a.cmp(b)
    } else {
        b.cmp(a)
    }
}

impl<'a, K: Data + Ord, V: Data> ExternalSorter<'a, K, V> {
    pub(crate) fn new(tc: &'a TaskContext, ascending: bool) -> Self {
        ExternalSorter { buf: Vec::new(), heap: 0, mem: MemoryConsumer::new(tc), tc, spills: Vec::new(), ascending }
    }

    pub(crate) fn insert(&mut self, kv: (K, V)) -> Result<()> {
        let n = self.buf.len() as u64;
        // Every record is measured, so a huge one among small ones counts at its real size.
        let bytes = SizeSampler::heap_bytes(&kv).saturating_sub(std::mem::size_of::<(K, V)>() as u64);
        self.heap += bytes;
        self.buf.push(kv);
        if n % CHECK_EVERY == 0 || bytes >= BIG_RECORD {
            check_killed(self.tc)?;
            let used = self.buf.capacity() as u64 * std::mem::size_of::<(K, V)>() as u64 + self.heap;
            if !self.mem.ensure(used) {
                self.spill(used)?;
            }
        }
        Ok(())
    }

    fn sort_buf(&mut self) {
        let asc = self.ascending;
        // Prefix sort indexes records with `u32`s.
        if self.buf.len() > 64 && self.buf.len() <= u32::MAX as usize && sort_prefix(&self.buf[0].0).is_some() {
            // Sort compact (prefix, index) pairs: most comparisons stay in cache instead of
            // chasing each key's heap data; equal prefixes fall back to the full comparison.
            let buf = &self.buf;
            let mut order: Vec<(u64, u32)> =
                buf.iter().enumerate().map(|(i, (k, _))| (sort_prefix(k).unwrap_or(0), i as u32)).collect();
            order.sort_unstable_by(|a, b| {
                let c = if asc { a.0.cmp(&b.0) } else { b.0.cmp(&a.0) };
                c.then_with(|| cmp_keys(&buf[a.1 as usize].0, &buf[b.1 as usize].0, asc))
            });
            apply_permutation(&mut self.buf, order.into_iter().map(|(_, i)| i as usize).collect());
        } else {
            self.buf.sort_unstable_by(|a, b| cmp_keys(&a.0, &b.0, asc));
        }
    }

    fn spill(&mut self, used: u64) -> Result<()> {
        check_killed(self.tc)?;
        self.sort_buf();
        let buf = std::mem::take(&mut self.buf);
        self.heap = 0;
        let (file, bytes) = write_spill(self.tc, "sort", buf.iter())?;
        drop(buf);
        self.spills.push(file);
        self.tc.add_spill(used, bytes);
        self.mem.release_all();
        Ok(())
    }

    /// Iterates all records in key order. The iterator keeps the sorter's memory grant (for
    /// the records still in memory) until it is dropped.
    pub(crate) fn into_iter(mut self) -> Result<Box<dyn Iterator<Item = (K, V)> + 'a>> {
        check_killed(self.tc)?;
        self.sort_buf();
        check_killed(self.tc)?;
        let buf = std::mem::take(&mut self.buf);
        let mem = std::mem::replace(&mut self.mem, MemoryConsumer::new(self.tc));
        if self.spills.is_empty() {
            return Ok(Box::new(Held { inner: Interruptible::new(buf.into_iter(), self.tc), _mem: mem }));
        }
        let mut runs: Vec<Run<'a, K, V>> = Vec::new();
        for s in &self.spills {
            runs.push(Run::File(open_run(&s.path)?));
        }
        runs.push(Run::Mem(Box::new(buf.into_iter())));
        let mut m = SortMerge {
            runs,
            heap: BinaryHeap::new(),
            ascending: self.ascending,
            tc: self.tc,
            _mem: mem,
            _spills: std::mem::take(&mut self.spills),
        };
        for r in 0..m.runs.len() {
            m.advance(r);
        }
        Ok(Box::new(m))
    }
}

/// An order-preserving 64-bit prefix of common key types (strings by their first 8 bytes,
/// integers by value), or `None` for other types. Keys with equal prefixes still compare in
/// full, so the prefix only has to agree with `Ord` where it differs.
fn sort_prefix<K: 'static>(k: &K) -> Option<u64> {
    let any = k as &dyn std::any::Any;
    if let Some(s) = any.downcast_ref::<String>() {
        let b = s.as_bytes();
        let mut p = [0u8; 8];
        let n = b.len().min(8);
        p[..n].copy_from_slice(&b[..n]);
        return Some(u64::from_be_bytes(p));
    }
    macro_rules! unsigned {
        ($($t:ty),*) => {$(
            if let Some(x) = any.downcast_ref::<$t>() {
                return Some(*x as u64);
            }
        )*};
    }
    macro_rules! signed {
        ($($t:ty),*) => {$(
            if let Some(x) = any.downcast_ref::<$t>() {
                return Some((*x as i64 as u64) ^ (1 << 63));
            }
        )*};
    }
    unsigned!(u8, u16, u32, u64, usize);
    signed!(i8, i16, i32, i64, isize);
    None
}

/// Reorders `v` so that `v[i]` becomes the element previously at `order[i]`.
fn apply_permutation<T>(v: &mut [T], mut order: Vec<usize>) {
    for i in 0..v.len() {
        // Follow the cycle starting at i, marking visited slots with usize::MAX.
        if order[i] == usize::MAX {
            continue;
        }
        let mut cur = i;
        loop {
            let next = order[cur];
            order[cur] = usize::MAX;
            if next == i {
                break;
            }
            v.swap(cur, next);
            cur = next;
        }
    }
}

struct Head<K, V> {
    k: K,
    v: V,
    run: usize,
    ascending: bool,
}

impl<K: Ord, V> PartialEq for Head<K, V> {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == Ordering::Equal
    }
}
impl<K: Ord, V> Eq for Head<K, V> {}
impl<K: Ord, V> PartialOrd for Head<K, V> {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl<K: Ord, V> Ord for Head<K, V> {
    fn cmp(&self, o: &Self) -> Ordering {
        // BinaryHeap is a max-heap: reverse so the smallest key (in sort order) comes first;
        // ties go to the earlier run, keeping the merge stable.
        cmp_keys(&o.k, &self.k, self.ascending).then(o.run.cmp(&self.run))
    }
}

struct SortMerge<'a, K, V> {
    runs: Vec<Run<'a, K, V>>,
    heap: BinaryHeap<Head<K, V>>,
    ascending: bool,
    tc: &'a TaskContext,
    /// The grant covering the in-memory run.
    _mem: MemoryConsumer<'a>,
    _spills: Vec<SpillFile>,
}

impl<K: Data + Ord, V: Data> SortMerge<'_, K, V> {
    fn advance(&mut self, run: usize) {
        match self.runs[run].next() {
            Ok(Some((k, v))) => self.heap.push(Head { k, v, run, ascending: self.ascending }),
            Ok(None) => {}
            Err(e) => self.tc.fail(e),
        }
    }
}

impl<K: Data + Ord, V: Data> Iterator for SortMerge<'_, K, V> {
    type Item = (K, V);
    fn next(&mut self) -> Option<(K, V)> {
        if self.tc.should_stop() {
            return None;
        }
        let h = self.heap.pop()?;
        self.advance(h.run);
        Some((h.k, h.v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering as AtomicOrdering};
    use std::sync::Arc;

    /// A task context in a scratch executor, with its kill flag.
    fn task(dir: &Path) -> (TaskContext, Arc<AtomicBool>) {
        let settings = crate::conf::EmberConf::new().settings().expect("default settings");
        let tracker = Arc::new(crate::scheduler::MapOutputTracker::new());
        let env = Arc::new(crate::env::Env::new(&settings, dir.to_path_buf(), tracker).expect("an executor env"));
        let kill = Arc::new(AtomicBool::new(false));
        (TaskContext::new(crate::task::StageId(0), 0, 0, 1, env, kill.clone()), kill)
    }

    #[test]
    fn a_killed_task_stops_filling_aggregating_and_sorting() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let (tc, kill) = task(dir.path());
        let mut map = SpillableMap::<u64, u64>::new(&tc);
        let mut sorter = ExternalSorter::<u64, u64>::new(&tc, true);
        for i in 0..1000 {
            map.insert(i, i, |x| x, |c, x| c + x).expect("inserts while alive");
            sorter.insert((i, i)).expect("inserts while alive");
        }
        kill.store(true, AtomicOrdering::Relaxed);
        // Inserting stops within one memory check; draining stops at once.
        let refused = (0..CHECK_EVERY).map(|i| map.insert(i, i, |x| x, |c, x| c + x)).find(|r| r.is_err());
        assert!(matches!(refused, Some(Err(Error::Cancelled(_)))), "{refused:?}");
        let refused = (0..CHECK_EVERY).map(|i| sorter.insert((i, i))).find(|r| r.is_err());
        assert!(matches!(refused, Some(Err(Error::Cancelled(_)))), "{refused:?}");
        assert!(matches!(map.into_iter(|a, b| a + b), Err(Error::Cancelled(_))));
        assert!(matches!(sorter.into_iter(), Err(Error::Cancelled(_))));
        // A spill of a killed task stops too.
        let spilled = write_spill(&tc, "test", (0..10u64).map(|i| (i, i)));
        assert!(matches!(spilled, Err(Error::Cancelled(_))), "{:?}", spilled.map(|(_, n)| n));
    }

    #[test]
    fn permutation_and_prefixes() {
        let mut v = vec!['a', 'b', 'c', 'd', 'e'];
        apply_permutation(&mut v, vec![3, 0, 4, 1, 2]);
        assert_eq!(v, vec!['d', 'a', 'e', 'b', 'c']);
        let words = ["", "a", "ab", "abcdefgh", "abcdefgh\0", "abcdefghz", "b", "é"];
        for w in words.windows(2) {
            assert!(sort_prefix(&w[0].to_string()) <= sort_prefix(&w[1].to_string()), "{w:?}");
        }
        assert!(sort_prefix(&-5i32) < sort_prefix(&3i32));
        assert!(sort_prefix(&i64::MIN) < sort_prefix(&i64::MAX));
        assert_eq!(sort_prefix(&(1u8, 2u8)), None);
    }
}
