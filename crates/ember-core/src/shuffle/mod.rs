//! Sort-based shuffle: partitioners, aggregators, the shuffle dependency, the map-side writer
//! (one data file plus an index per map task, with map-side combine and spilling), map outputs
//! and the reduce-side reader.
//!
//! ```text
//!  map task m ──► SpillableMap / per-partition chunk buffers ──► shuffle_S_m.data + .index
//!                        │ (spill runs when memory is refused)        │ segment r = [idx[r], idx[r+1])
//!  reduce task r ◄── segment r of every map output ◄──────────────────┘
//! ```

use serde::{Deserialize, Serialize};

/// How values of a key combine: Spark's `createCombiner`, `mergeValue`, `mergeCombiners`.
mod aggregator;
/// The shuffle dependency and the map task that writes it.
mod dependency;
/// Map statuses, the blocks a reducer reads, and an executor's store of map outputs.
mod outputs;
/// Partitioners: hash, index and range.
mod partitioner;
/// The reduce-side reader.
mod reader;
/// The map-side writer: partition buffers, map-side combine, spills, the output file.
mod writer;

pub use aggregator::Aggregator;
pub(crate) use aggregator::*;
pub use dependency::{ShuffleDepBase, ShuffleDependency};
pub use outputs::{
    MapLocation, MapLocations, MapOutputLocations, MapStatus, MemorySegment, ReduceBlock, RemoteSegments,
    SegmentOffsets, SegmentSource, ShuffleManager,
};
pub use partitioner::{HashPartitioner, IndexPartitioner, Partitioner, RangePartitioner};
use reader::ShuffleReader;
use writer::write_map_output;

/// Scratch vectors a slot thread keeps between tasks (the writer's sort indexes, the reader's
/// column, copy and ranges) are dropped instead when they grew above this many bytes.
const SCRATCH_KEPT_BYTES: usize = 1 << 20;

/// Identifies a shuffle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ShuffleId(pub u64);
