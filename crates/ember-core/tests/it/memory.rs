//! Memory with no bypass: every byte the engine holds for data (execution memory, cached
//! blocks, partitions being unrolled, map outputs kept in memory) comes out of one budget, and
//! jobs on data ten times the budget stay within it and give exact answers.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use ember_core::storage::BlockManager;
use ember_core::{Context, Error, JobSummary, StorageLevel};

const BUDGET: u64 = 2 << 20;

/// How far the tracked peak may exceed the budget. Every tracked byte is granted out of the
/// budget (execution memory, unroll memory, cached blocks and in-memory map outputs alike), so
/// the tracked peak has no slack at all; the per-task working memory that is not tracked (the
/// record in hand, up to 64 records between two checks, one 64 KiB chunk per open stream) is
/// described in ARCHITECTURE.md ("Memory budget").
const SLACK: u64 = 0;

fn ctx() -> Context {
    super::common::ctx_with_memory(Some("2m"), false)
}

/// Records of the large data set: about 60 bytes each, `N / 2` distinct keys.
const N: u64 = 360_000;

/// Key number `k` (about 50 bytes).
fn key(k: u64) -> String {
    format!("key-{k:08}-{}", "x".repeat(40))
}

/// Record `i` of a data set of `n` records with `n / 2` distinct keys.
fn record(i: u64, n: u64) -> (String, u64) {
    (key((i * 2_654_435_761) % (n / 2)), i)
}

/// The large data set as an RDD generated partition by partition (nothing held on the driver).
fn generated(ctx: &Context, parts: usize) -> ember_core::Rdd<(String, u64)> {
    ctx.range(0, N as i64, 1, parts).expect("valid range").map(|i| record(i as u64, N))
}

/// Asserts the job's tracked peaks stayed within the budget and were tracked at all.
fn assert_within_budget(what: &str, s: &JobSummary) {
    assert!(s.succeeded, "{what}: {s:?}");
    assert!(s.peak_memory <= BUDGET + SLACK, "{what}: peak {} over the budget {BUDGET}", s.peak_memory);
    assert!(s.peak_memory >= s.peak_execution_memory.max(s.peak_storage_memory), "{what}: {s:?}");
    for st in &s.stages {
        assert!(st.peak_memory <= s.peak_memory, "{what}: stage peak above the job's: {st:?}");
    }
}

#[test]
fn jobs_on_ten_times_the_budget_stay_within_it_and_are_exact() {
    let ctx = ctx();
    let n = N;
    let data: Vec<(String, u64)> = (0..n).map(|i| record(i, n)).collect();
    let raw: u64 = data.iter().map(|(k, _)| k.len() as u64 + 8).sum();
    assert!(raw >= 10 * BUDGET, "the data must be at least 10x the budget: {raw}");
    // Many small map tasks: their outputs are small enough to be kept in memory, so the budget
    // must hold them and the reducers' maps at once.
    let input = generated(&ctx, 48);

    let mut sums: HashMap<String, u64> = HashMap::new();
    for (k, v) in &data {
        *sums.entry(k.clone()).or_default() += v;
    }
    let got = input.reduce_by_key(|a, b| a + b, Some(4)).collect_as_map().unwrap();
    assert_eq!(got, sums);
    let s = ctx.last_job_summary().unwrap();
    assert_within_budget("reduce_by_key", &s);
    assert!(s.metrics().spill_count > 0, "reduce_by_key must spill: {s:?}");
    assert!(s.peak_execution_memory > 0 && s.peak_storage_memory > 0, "{s:?}");

    let mut groups: HashMap<String, Vec<u64>> = HashMap::new();
    for (k, v) in &data {
        groups.entry(k.clone()).or_default().push(*v);
    }
    let mut got = input.group_by_key(Some(4)).collect_as_map().unwrap();
    got.values_mut().for_each(|v| v.sort_unstable());
    assert_eq!(got, groups);
    assert_within_budget("group_by_key", &ctx.last_job_summary().unwrap());

    let mut sorted = data.clone();
    sorted.sort();
    let mut got = input.sort_by_key(true, Some(4)).unwrap().collect().unwrap();
    assert!(got.windows(2).all(|w| w[0].0 <= w[1].0), "sort_by_key output out of order");
    got.sort();
    assert_eq!(got, sorted);
    assert_within_budget("sort_by_key", &ctx.last_job_summary().unwrap());

    // Every third key on the other side, with two values each: keys have 2 x 2 pairs.
    let other = ctx.range(0, (n / 2) as i64, 3, 8).unwrap().flat_map(|k| [(key(k as u64), 1u8), (key(k as u64), 2u8)]);
    let right: Vec<(String, u8)> = other.collect().unwrap();
    let mut by_key: HashMap<&str, Vec<u8>> = HashMap::new();
    for (k, w) in &right {
        by_key.entry(k).or_default().push(*w);
    }
    let mut joined: Vec<(String, (u64, u8))> = Vec::new();
    for (k, v) in &data {
        for w in by_key.get(k.as_str()).into_iter().flatten() {
            joined.push((k.clone(), (*v, *w)));
        }
    }
    joined.sort();
    assert!(joined.len() as u64 > n / 2, "the join must have many pairs: {}", joined.len());
    let mut got = input.join(&other, Some(4)).collect().unwrap();
    got.sort();
    assert_eq!(got, joined);
    assert_within_budget("join", &ctx.last_job_summary().unwrap());

    let cached = input.persist(StorageLevel::MemoryAndDisk).unwrap();
    assert_eq!(cached.count().unwrap(), n);
    let s = ctx.last_job_summary().unwrap();
    assert_within_budget("cache", &s);
    assert!(s.peak_storage_memory > 0, "caching must use storage memory: {s:?}");
    let st = ctx.storage_status();
    assert!(st.blocks.iter().any(|b| b.disk_bytes > 0), "partitions that do not fit go to disk: {st:?}");
    assert!(st.storage_used + st.execution_used + st.shuffle_memory_bytes <= BUDGET, "{st:?}");
    let mut got = cached.collect().unwrap();
    got.sort();
    let mut expect = data;
    expect.sort();
    assert_eq!(got, expect);
    assert_within_budget("reading the cache", &ctx.last_job_summary().unwrap());
}

#[test]
fn in_memory_map_outputs_take_memory_from_the_budget() {
    let ctx = ctx();
    let before = ctx.storage_status();
    assert_eq!(before.shuffle_memory_bytes, 0);
    let summed = ctx.parallelize((0..4000u64).map(|i| (i % 100, i)).collect(), 4).reduce_by_key(|a, b| a + b, Some(2));
    assert_eq!(summed.count().unwrap(), 100);
    let st = ctx.storage_status();
    assert!(st.shuffle_memory_bytes > 0, "small map outputs are kept in memory and reported: {st:?}");
    assert!(ctx.last_job_summary().unwrap().peak_storage_memory >= st.shuffle_memory_bytes);
    // Execution memory can only be granted out of what the outputs leave free.
    let granted = ctx.env().blocks.acquire_execution(u64::MAX, BUDGET);
    assert!(granted <= BUDGET - st.shuffle_memory_bytes, "granted {granted} with {st:?}");
    ctx.env().blocks.release_execution(u64::MAX, granted);
    // Deleting the outputs gives their memory back.
    for dep in summed.dependencies() {
        if let ember_core::Dependency::Shuffle(d) = dep {
            for s in ctx.map_output_tracker().statuses(d.shuffle_id()).into_iter().flatten() {
                ctx.env().shuffle.delete_output(&s);
            }
        }
    }
    assert_eq!(ctx.storage_status().shuffle_memory_bytes, 0);
}

static DISK_BLOCKS: OnceLock<PathBuf> = OnceLock::new();
static BYTES_ON_DISK_WHILE_COMPUTING: AtomicU64 = AtomicU64::new(0);

fn dir_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir).map(|rd| rd.flatten().filter_map(|e| e.metadata().ok()).map(|m| m.len()).sum()).unwrap_or(0)
}

#[test]
fn disk_only_streams_records_to_disk_as_they_are_computed() {
    let ctx = ctx();
    DISK_BLOCKS.get_or_init(|| ctx.env().local_dir.join("blocks"));
    const PER_PART: i64 = 40_000;
    let per_part = PER_PART;
    let r = ctx
        .range(0, 2 * per_part, 1, 2)
        .unwrap()
        .map(|i| {
            if i % PER_PART == PER_PART - 1 {
                // The last record of a partition: the records before it are already on disk.
                let on_disk = DISK_BLOCKS.get().map(|d| dir_bytes(d)).unwrap_or(0);
                BYTES_ON_DISK_WHILE_COMPUTING.fetch_max(on_disk, Ordering::SeqCst);
            }
            record(i as u64, 1000)
        })
        .persist(StorageLevel::DiskOnly)
        .unwrap();
    assert_eq!(r.count().unwrap(), 2 * per_part as u64);
    let streamed = BYTES_ON_DISK_WHILE_COMPUTING.load(Ordering::SeqCst);
    assert!(streamed > 256 << 10, "only {streamed} bytes were on disk before the partition ended");
    assert_eq!(r.collect().unwrap(), (0..2 * per_part as u64).map(|i| record(i, 1000)).collect::<Vec<_>>());
}

static UNROLL_BLOCKS: OnceLock<Arc<BlockManager>> = OnceLock::new();
static STORAGE_WHILE_UNROLLING: AtomicU64 = AtomicU64::new(0);

#[test]
fn memory_levels_unroll_under_reserved_memory_and_pass_through_what_does_not_fit() {
    let ctx = ctx();
    UNROLL_BLOCKS.get_or_init(|| ctx.env().blocks.clone());
    let n = 60_000i64;
    let r = ctx
        .range(0, n, 1, 1)
        .unwrap()
        .map(|i| {
            if i == 5_000 {
                let used = UNROLL_BLOCKS.get().map(|b| b.status().storage_used).unwrap_or(0);
                STORAGE_WHILE_UNROLLING.store(used, Ordering::SeqCst);
            }
            record(i as u64, 1000)
        })
        .persist(StorageLevel::MemoryOnly)
        .unwrap();
    // 60,000 records (about 7 MB in memory) cannot be cached in a 2 MB budget: the partition is
    // passed through, exactly, and nothing is cached.
    let got = r.collect().unwrap();
    assert_eq!(got, (0..n as u64).map(|i| record(i, 1000)).collect::<Vec<_>>());
    let unrolled = STORAGE_WHILE_UNROLLING.load(Ordering::SeqCst);
    assert!(unrolled > 5_000 * 60, "unroll memory must grow with the records unrolled: {unrolled}");
    let st = ctx.storage_status();
    assert!(st.blocks.is_empty(), "a partition larger than the budget is not cached: {st:?}");
    assert_eq!(st.storage_used, 0, "unroll memory is given back: {st:?}");
    assert!(ctx.last_job_summary().unwrap().peak_storage_memory <= BUDGET);
}

#[test]
fn a_huge_record_among_small_ones_counts_at_its_real_size() {
    let ctx = ctx();
    let mut data: Vec<(u64, String)> = (0..2_000u64).map(|i| (i, format!("{i:08}"))).collect();
    // Not at a sampled position: only measuring every record finds it.
    data[1_001].1 = "h".repeat(3 << 19);
    let sorted = ctx.parallelize(data.clone(), 1).sort_within_partitions(true).collect().unwrap();
    assert_eq!(sorted, data);
    let m = ctx.last_job_summary().unwrap().metrics();
    assert!(m.spill_count > 0, "a 1.5 MB record must not fit in a task's 1 MB share: {m:?}");

    // The huge value has a key of its own, so its group is just itself.
    let grouped = ctx
        .parallelize(data.clone(), 1)
        .map(|(k, v)| (if v.len() > 100 { 999 } else { k % 10 }, v))
        .group_by_key(Some(1));
    let sizes: u64 = grouped.collect().unwrap().iter().flat_map(|(_, vs)| vs.iter().map(|v| v.len() as u64)).sum();
    assert_eq!(sizes, data.iter().map(|(_, v)| v.len() as u64).sum::<u64>());
    let m = ctx.last_job_summary().unwrap().metrics();
    assert!(m.spill_count > 0, "the huge value must make the aggregation spill: {m:?}");
}

static EXEC_WHILE_ITERATING: AtomicU64 = AtomicU64::new(0);
static ITER_BLOCKS: OnceLock<Arc<BlockManager>> = OnceLock::new();

#[test]
fn iterators_over_collections_keep_their_grant_until_dropped() {
    let ctx = ctx();
    ITER_BLOCKS.get_or_init(|| ctx.env().blocks.clone());
    let out = ctx
        .parallelize((0..20_000u64).rev().map(|i| (i, i)).collect(), 1)
        .sort_within_partitions(true)
        .map(|(k, v)| {
            if k == 10_000 {
                let used = ITER_BLOCKS.get().map(|b| b.status().execution_used).unwrap_or(0);
                EXEC_WHILE_ITERATING.store(used, Ordering::SeqCst);
            }
            k + v
        })
        .collect()
        .unwrap();
    assert_eq!(out, (0..20_000u64).map(|i| 2 * i).collect::<Vec<_>>());
    let held = EXEC_WHILE_ITERATING.load(Ordering::SeqCst);
    assert!(held >= 20_000 * 16, "the sorted records are still in memory, so their grant is held: {held}");
}

#[test]
fn one_key_too_large_for_memory_fails_with_resources_exhausted() {
    let ctx = super::common::ctx_conf(&[("ember.memory.size", "2m"), ("ember.task.maxFailures", "1")], false);
    // One key with 3 MB of values: its group cannot be merged in a task's 1 MB share.
    let left = ctx.range(0, 30_000, 1, 3).unwrap().map(|i| (7u64, format!("{i:0100}")));
    let right = ctx.parallelize(vec![(7u64, 1u8)], 1);
    let err = left.join(&right, Some(1)).count().unwrap_err();
    assert!(matches!(err, Error::ResourcesExhausted(_)) || err.to_string().contains("one key"), "{err}");
    assert!(err.to_string().contains("one key") && err.to_string().contains("bytes"), "{err}");
}

#[test]
fn cartesian_spills_a_side_that_does_not_fit() {
    let ctx = ctx();
    let big: Vec<String> = (0..12_000u64).map(|i| format!("{i:0120}")).collect();
    let small = ctx.parallelize(vec![1u8, 2, 3], 1);
    let pairs = small.cartesian(&ctx.parallelize(big.clone(), 1)).unwrap();
    let got = pairs.collect().unwrap();
    let expect: Vec<(u8, String)> = [1u8, 2, 3].iter().flat_map(|a| big.iter().map(move |b| (*a, b.clone()))).collect();
    assert_eq!(got, expect);
    let s = ctx.last_job_summary().unwrap();
    assert!(s.metrics().spill_count > 0, "a 1.7 MB side must be spilled, not held: {s:?}");
    assert!(s.peak_memory <= BUDGET);
}
