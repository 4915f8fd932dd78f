//! The driver's map output tracker: which executor holds each map output, with epochs so that
//! outputs of lost executors and superseded attempts never come back.
//!
//! A reduce task asks for its own column only ([`MapOutputLocations::reduce_blocks`]): one block
//! per map task, with the segment's offset precomputed at registration, so serving a reducer
//! costs O(maps), not O(maps x reducers).

use std::collections::HashMap;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::error::{Error, Result};
use crate::shuffle::{
    MapLocation, MapLocations, MapOutputLocations, MapStatus, ReduceBlock, SegmentOffsets, ShuffleId,
};

/// A registered map output. Its segment boundaries are kept beside its status, as the writer
/// built them (in 16 bits when the output is under 64 KiB, 32 under 4 GiB: the tracker holds 2 or
/// 4 bytes per block).
///
/// What every reducer reads comes first and the rest sits behind a box, so that a reducer's scan
/// of a shuffle's outputs reads 64 bytes per map rather than the whole status.
struct Registered {
    /// The attempt that wrote it (`status.attempt`).
    attempt: u64,
    status: Box<MapStatus>,
    offsets: Arc<SegmentOffsets>,
    /// The index of `status.location` in the executor table.
    executor: u32,
    /// The data file, shared by every reducer's column.
    data: Option<Arc<std::path::Path>>,
}

#[derive(Default)]
struct State {
    shuffles: HashMap<ShuffleId, Vec<Option<Registered>>>,
    /// Each complete shuffle's table of locations, built when a reducer first asks and dropped
    /// whenever one of its outputs changes.
    locations: HashMap<ShuffleId, Arc<MapLocations>>,
    /// Bumped whenever outputs are unregistered; tasks carry the epoch they were launched in.
    epoch: u64,
    /// Executors declared lost, with the epoch at which they were.
    lost: HashMap<Arc<str>, u64>,
    /// Executor names, numbered in order of first registration.
    executors: Vec<Arc<str>>,
    executor_index: HashMap<Arc<str>, u32>,
}

impl State {
    /// The number of executor `name` in the executor table (given one when first seen).
    fn executor_number(&mut self, name: &Arc<str>) -> u32 {
        if let Some(&i) = self.executor_index.get(name) {
            return i;
        }
        let i = u32::try_from(self.executors.len()).unwrap_or(u32::MAX);
        self.executors.push(name.clone());
        self.executor_index.insert(name.clone(), i);
        i
    }
}

/// Why a map output was not registered.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// Its executor was lost after the task was launched: the output may be gone.
    ExecutorLost,
    /// The map index is out of range for the shuffle.
    UnknownMap,
    /// Its segment boundaries do not start at 0 and go forward: no writer produces that, and
    /// running the task again would not help.
    Malformed,
}

/// The driver's record of map outputs, by shuffle and map partition.
#[derive(Default)]
pub struct MapOutputTracker {
    /// Reducers read their columns at once; registrations and removals write.
    state: RwLock<State>,
}

impl MapOutputTracker {
    /// An empty tracker.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    fn read(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The current epoch.
    pub fn epoch(&self) -> u64 {
        self.read().epoch
    }

    /// Registers the output of a map task launched at `launched_epoch`. Returns the output it
    /// replaced (an earlier attempt's, to delete), or why it was refused (the caller deletes the
    /// refused output).
    #[allow(clippy::result_large_err)]
    pub fn register(
        &self,
        mut status: MapStatus,
        maps: usize,
        launched_epoch: u64,
    ) -> std::result::Result<Option<MapStatus>, (MapStatus, Refused)> {
        let mut st = self.lock();
        if st.lost.get(&status.location).is_some_and(|&lost_at| lost_at > launched_epoch) {
            return Err((status, Refused::ExecutorLost));
        }
        if status.map >= maps {
            return Err((status, Refused::UnknownMap));
        }
        if !status.segments.is_well_formed() {
            return Err((status, Refused::Malformed));
        }
        let offsets = std::mem::take(&mut status.segments);
        let data = status.data.as_deref().map(Arc::from);
        let executor = st.executor_number(&status.location);
        let slots = st.shuffles.entry(status.shuffle).or_insert_with(|| (0..maps).map(|_| None).collect());
        let Some(slot) = slots.get_mut(status.map) else {
            return Err((status, Refused::UnknownMap));
        };
        let attempt = status.attempt;
        let shuffle = status.shuffle;
        let old = slot.replace(Registered { attempt, status: Box::new(status), offsets, executor, data });
        let replaced = old.map(|r| *r.status).filter(|o| Some(o) != slot.as_ref().map(|r| &*r.status));
        st.locations.remove(&shuffle);
        Ok(replaced)
    }

    /// Replaces everything known of `shuffle` (of `maps` map tasks) with `statuses`, at once:
    /// a reader sees the old table or the new one, never a mix (an executor's copy of the
    /// driver's table is refreshed this way). When any status is refused nothing changes, and
    /// the refused ones are returned with why.
    #[allow(clippy::type_complexity)]
    pub fn replace_shuffle(
        &self,
        shuffle: ShuffleId,
        maps: usize,
        statuses: Vec<MapStatus>,
    ) -> Vec<(MapStatus, Refused)> {
        let staging = MapOutputTracker::new();
        // Executor numbers stay this tracker's: the staging table is read back by name.
        let mut refused = Vec::new();
        for s in statuses {
            if s.shuffle != shuffle || s.map >= maps {
                refused.push((s, Refused::UnknownMap));
                continue;
            }
            if let Err(r) = staging.register(s, maps, u64::MAX) {
                refused.push(r);
            }
        }
        // All or nothing: readers never see a table the caller is about to reject.
        if !refused.is_empty() {
            return refused;
        }
        let staged = staging.statuses(shuffle);
        let mut st = self.lock();
        let mut slots: Vec<Option<Registered>> = (0..maps).map(|_| None).collect();
        for (slot, status) in slots.iter_mut().zip(staged) {
            let Some(mut status) = status else { continue };
            let offsets = std::mem::take(&mut status.segments);
            let data = status.data.as_deref().map(Arc::from);
            let executor = st.executor_number(&status.location);
            *slot = Some(Registered { attempt: status.attempt, status: Box::new(status), offsets, executor, data });
        }
        st.shuffles.insert(shuffle, slots);
        st.locations.remove(&shuffle);
        refused
    }

    /// Forgets a map output (it was lost or found corrupt); the map task must run again. Returns
    /// the status that was registered.
    pub fn unregister(&self, shuffle: ShuffleId, map: usize) -> Option<MapStatus> {
        let mut st = self.lock();
        let old = st.shuffles.get_mut(&shuffle).and_then(|v| v.get_mut(map)).and_then(Option::take);
        if old.is_some() {
            st.epoch += 1;
            st.locations.remove(&shuffle);
        }
        old.map(|r| *r.status)
    }

    /// Forgets every output held by a lost executor at once, and refuses outputs of tasks that
    /// were launched before the loss. Returns the forgotten statuses.
    pub fn executor_lost(&self, executor: &str) -> Vec<MapStatus> {
        let mut st = self.lock();
        st.epoch += 1;
        let epoch = st.epoch;
        st.lost.insert(Arc::from(executor), epoch);
        st.locations.clear();
        let mut gone = Vec::new();
        for slots in st.shuffles.values_mut() {
            for slot in slots.iter_mut() {
                if slot.as_ref().is_some_and(|r| &*r.status.location == executor) {
                    gone.extend(slot.take().map(|r| *r.status));
                }
            }
        }
        gone
    }

    /// The executor holding the registered output of map `map` of `shuffle`.
    pub fn location_of(&self, shuffle: ShuffleId, map: usize) -> Option<Arc<str>> {
        self.read()
            .shuffles
            .get(&shuffle)
            .and_then(|v| v.get(map))
            .and_then(|s| s.as_ref())
            .map(|r| r.status.location.clone())
    }

    /// How many map tasks a known shuffle has (0 for an unknown one).
    pub fn map_count(&self, shuffle: ShuffleId) -> usize {
        self.read().shuffles.get(&shuffle).map_or(0, |v| v.len())
    }

    /// Map partitions of a shuffle with `maps` map tasks whose output is missing.
    pub fn missing(&self, shuffle: ShuffleId, maps: usize) -> Vec<usize> {
        match self.read().shuffles.get(&shuffle) {
            Some(v) => v.iter().enumerate().filter(|(_, s)| s.is_none()).map(|(i, _)| i).collect(),
            None => (0..maps).collect(),
        }
    }

    /// The registered statuses of a shuffle, by map partition (with their segment sizes).
    pub fn statuses(&self, shuffle: ShuffleId) -> Vec<Option<MapStatus>> {
        self.read()
            .shuffles
            .get(&shuffle)
            .map(|v| {
                v.iter()
                    .map(|s| s.as_ref().map(|r| MapStatus { segments: r.offsets.clone(), ..(*r.status).clone() }))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// The fetch failure of reducer `reduce` for map `map` of `shuffle`.
fn fetch_failed(shuffle: ShuffleId, map: usize, reduce: usize, message: &str) -> Error {
    Error::FetchFailed { shuffle: shuffle.0, map, reduce, message: message.to_string() }
}

impl MapOutputLocations for MapOutputTracker {
    fn reduce_blocks_into(
        &self,
        shuffle: ShuffleId,
        maps: usize,
        reduce: usize,
        column: &mut Vec<ReduceBlock>,
    ) -> Result<()> {
        column.clear();
        if maps == 0 {
            return Ok(());
        }
        let missing = |map: usize, message: &str| fetch_failed(shuffle, map, reduce, message);
        let st = self.read();
        let slots = st.shuffles.get(&shuffle).ok_or_else(|| missing(0, "shuffle is not registered"))?;
        if u32::try_from(slots.len()).is_err() {
            return Err(Error::InvalidArgument(format!("a shuffle of {} map tasks is too large", slots.len())));
        }
        column.reserve(slots.len());
        for (m, slot) in slots.iter().enumerate() {
            let r = slot.as_ref().ok_or_else(|| missing(m, "map output is missing"))?;
            let Some((offset, len)) = r.offsets.segment(reduce) else {
                return Err(missing(
                    m,
                    &format!("map output has {} segments, not {} (or bad boundaries)", r.offsets.len(), reduce + 1),
                ));
            };
            column.push(ReduceBlock {
                // Checked above: map indexes fit.
                map: m as u32,
                attempt: r.attempt,
                executor: r.executor,
                data: r.data.clone(),
                offset,
                len,
            });
        }
        Ok(())
    }

    fn executor(&self, index: u32) -> Option<Arc<str>> {
        self.read().executors.get(index as usize).cloned()
    }

    fn map_locations(&self, shuffle: ShuffleId, maps: usize, reduce: usize) -> Result<Arc<MapLocations>> {
        if maps == 0 {
            return Ok(Arc::new(MapLocations { maps: Vec::new(), all_in_memory: true }));
        }
        if let Some(l) = self.read().locations.get(&shuffle) {
            return Ok(l.clone());
        }
        let missing = |map: usize, message: &str| fetch_failed(shuffle, map, reduce, message);
        let mut st = self.lock();
        if let Some(l) = st.locations.get(&shuffle) {
            return Ok(l.clone());
        }
        let slots = st.shuffles.get(&shuffle).ok_or_else(|| missing(0, "shuffle is not registered"))?;
        let mut table = Vec::with_capacity(slots.len());
        for (m, slot) in slots.iter().enumerate() {
            let r = slot.as_ref().ok_or_else(|| missing(m, "map output is missing"))?;
            table.push(MapLocation { attempt: r.attempt, executor: r.executor, data: r.data.clone() });
        }
        let all_in_memory = table.iter().all(|l| l.data.is_none());
        let locations = Arc::new(MapLocations { maps: table, all_in_memory });
        st.locations.insert(shuffle, locations.clone());
        Ok(locations)
    }

    fn remove_shuffle(&self, shuffle: ShuffleId) {
        let mut st = self.lock();
        st.shuffles.remove(&shuffle);
        st.locations.remove(&shuffle);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(map: usize, attempt: u64, location: &str) -> MapStatus {
        MapStatus {
            shuffle: ShuffleId(1),
            map,
            attempt,
            location: Arc::from(location),
            data: None,
            segments: Arc::new(SegmentOffsets::from_sizes(&[3, 0, 5])),
        }
    }

    #[test]
    fn reducers_get_their_column_with_offsets() {
        let t = MapOutputTracker::new();
        t.register(status(0, 7, "a"), 2, 0).unwrap();
        assert!(matches!(t.reduce_blocks(ShuffleId(1), 2, 0), Err(Error::FetchFailed { map: 1, .. })));
        t.register(status(1, 8, "b"), 2, 0).unwrap();
        let col = t.reduce_blocks(ShuffleId(1), 2, 2).unwrap();
        assert_eq!(
            col.iter().map(|b| (b.map, b.attempt, b.offset, b.len)).collect::<Vec<_>>(),
            [(0, 7, 3, 5), (1, 8, 3, 5)]
        );
        assert!(t.reduce_blocks(ShuffleId(1), 2, 3).is_err());
    }

    #[test]
    fn the_locations_table_follows_every_change_of_its_shuffle() {
        let t = MapOutputTracker::new();
        let s = ShuffleId(1);
        t.register(status(0, 7, "a"), 2, 0).unwrap();
        assert!(matches!(t.map_locations(s, 2, 4), Err(Error::FetchFailed { map: 1, reduce: 4, .. })));
        t.register(status(1, 8, "b"), 2, 0).unwrap();
        let first = t.map_locations(s, 2, 0).unwrap();
        let attempts = |l: &MapLocations| l.maps.iter().map(|m| (m.attempt, m.executor)).collect::<Vec<_>>();
        assert_eq!(attempts(&first), [(7, 0), (8, 1)]);
        assert!(first.all_in_memory);
        assert!(Arc::ptr_eq(&first, &t.map_locations(s, 2, 1).unwrap()), "built once for all reducers");
        // A newer attempt replaces map 1: the table shows it.
        t.register(status(1, 9, "a"), 2, 0).unwrap();
        assert_eq!(attempts(&t.map_locations(s, 2, 0).unwrap()), [(7, 0), (9, 0)]);
        // An output on disk: the table says not all are in memory.
        t.register(MapStatus { data: Some("x.data".into()), ..status(0, 10, "b") }, 2, 0).unwrap();
        let l = t.map_locations(s, 2, 0).unwrap();
        assert!(!l.all_in_memory && l.maps[0].data.is_some() && l.maps[1].data.is_none());
        // Unregistered, lost with its executor, removed: each is seen at once.
        t.unregister(s, 0);
        assert!(matches!(t.map_locations(s, 2, 0), Err(Error::FetchFailed { map: 0, .. })));
        t.register(status(0, 11, "b"), 2, t.epoch()).unwrap();
        assert!(t.map_locations(s, 2, 0).is_ok());
        t.executor_lost("a");
        assert!(matches!(t.map_locations(s, 2, 0), Err(Error::FetchFailed { map: 1, .. })));
        t.register(status(1, 12, "b"), 2, t.epoch()).unwrap();
        assert!(t.map_locations(s, 2, 0).is_ok());
        t.remove_shuffle(s);
        assert!(t.map_locations(s, 2, 0).is_err());
        assert!(t.map_locations(s, 0, 0).unwrap().maps.is_empty(), "a shuffle of no maps has nothing to read");
    }

    #[test]
    fn a_lost_executor_loses_all_its_outputs_and_stale_tasks_cannot_register() {
        let t = MapOutputTracker::new();
        let launched = t.epoch();
        t.register(status(0, 1, "a"), 3, launched).unwrap();
        t.register(status(1, 2, "b"), 3, launched).unwrap();
        t.register(status(2, 3, "a"), 3, launched).unwrap();
        let gone = t.executor_lost("a");
        assert_eq!(gone.len(), 2);
        assert_eq!(t.missing(ShuffleId(1), 3), [0, 2]);
        // A task launched before the loss reports an output on the lost executor: refused.
        assert_eq!(t.register(status(0, 4, "a"), 3, launched).unwrap_err().1, Refused::ExecutorLost);
        // One launched after it is accepted.
        assert!(t.register(status(0, 5, "a"), 3, t.epoch()).is_ok());
    }

    #[test]
    fn malformed_statuses_are_refused() {
        let t = MapOutputTracker::new();
        let bad = |ends: Vec<u64>| MapStatus {
            segments: Arc::new(SegmentOffsets::from_boundaries(ends)),
            ..status(0, 1, "a")
        };
        for ends in [vec![], vec![1, 2], vec![0, 5, 3], vec![0, u64::MAX, 7]] {
            assert_eq!(t.register(bad(ends.clone()), 1, 0).unwrap_err().1, Refused::Malformed, "{ends:?}");
        }
        assert_eq!(t.register(status(3, 1, "a"), 1, 0).unwrap_err().1, Refused::UnknownMap);
        assert!(t.register(bad(vec![0, 0, 4]), 1, 0).is_ok());
        assert!(t.missing(ShuffleId(1), 1).is_empty());
    }

    #[test]
    fn a_newer_attempt_replaces_and_returns_the_older_output() {
        let t = MapOutputTracker::new();
        t.register(status(0, 1, "a"), 1, 0).unwrap();
        let old = t.register(status(0, 2, "a"), 1, 0).unwrap();
        assert_eq!(old.map(|s| s.attempt), Some(1));
        assert_eq!(t.unregister(ShuffleId(1), 0).map(|s| s.attempt), Some(2));
        assert!(t.epoch() > 0);
    }
}
