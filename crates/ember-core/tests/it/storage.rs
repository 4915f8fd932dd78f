//! Caching: storage levels, eviction under a tiny budget, recomputation from lineage.

use std::sync::atomic::{AtomicU64, Ordering};

use ember_core::{Context, StorageLevel};

fn tiny(serialize: bool) -> Context {
    super::common::ctx_with_memory(Some("4m"), serialize)
}

fn blob(i: u64) -> (u64, String) {
    (i, format!("{i:08}").repeat(8))
}

/// 20,000 blobs (about 1.5 MB) at `level`, counting every record computed in `computed`.
fn counted_blobs(
    ctx: &Context,
    computed: &ember_core::Accumulator<ember_core::LongSum>,
    level: StorageLevel,
) -> ember_core::Rdd<(u64, String)> {
    ctx.range(0, 20_000, 1, 4)
        .unwrap()
        .map_with(computed.clone(), |acc, i| {
            acc.add(1);
            blob(i as u64)
        })
        .persist(level)
        .expect("a fresh RDD accepts a storage level")
}

#[test]
fn eviction_under_tiny_budget_recomputes_correctly() {
    let ctx = tiny(false);
    let computed = ctx.long_accumulator();
    // Two RDDs of about 1.5 MB do not both fit in the storage share of a 4 MB budget.
    let a = counted_blobs(&ctx, &computed, StorageLevel::MemoryOnly);
    let expect: Vec<(u64, String)> = (0..20_000).map(blob).collect();
    assert_eq!(a.collect().unwrap(), expect);
    assert_eq!(computed.value().unwrap(), 20_000);
    let cached_a = ctx.storage_status().blocks.iter().filter(|b| b.memory_bytes > 0).count();
    assert!(cached_a > 0, "some of A must be cached");
    // A second read of A comes from the cache.
    assert_eq!(a.count().unwrap(), 20_000);
    let recomputed_before = computed.value().unwrap();

    let b = ctx.range(0, 40_000, 1, 4).unwrap().map(|i| blob(i as u64 + 1)).persist(StorageLevel::MemoryOnly).unwrap();
    assert_eq!(b.count().unwrap(), 40_000);
    let st = ctx.storage_status();
    assert!(st.evictions > 0, "caching B must evict blocks of A: {st:?}");
    assert!(st.storage_used <= st.budget);

    // Evicted partitions of A are recomputed from lineage, and the result is unchanged.
    assert_eq!(a.collect().unwrap(), expect);
    assert!(computed.value().unwrap() > recomputed_before, "evicted partitions must be recomputed");
}

#[test]
fn memory_and_disk_keeps_evicted_blocks_on_disk() {
    let ctx = tiny(false);
    let computed = ctx.long_accumulator();
    let a = counted_blobs(&ctx, &computed, StorageLevel::MemoryAndDisk);
    assert_eq!(a.count().unwrap(), 20_000);
    let b = ctx.range(0, 40_000, 1, 4).unwrap().map(|i| blob(i as u64)).persist(StorageLevel::MemoryOnly).unwrap();
    assert_eq!(b.count().unwrap(), 40_000);
    assert!(ctx.storage_status().blocks.iter().any(|b| b.disk_bytes > 0), "evicted blocks go to disk");
    let expect: Vec<(u64, String)> = (0..20_000).map(blob).collect();
    assert_eq!(a.collect().unwrap(), expect);
    assert_eq!(computed.value().unwrap(), 20_000, "blocks on disk are not recomputed");
}

static COMPUTED: AtomicU64 = AtomicU64::new(0);

#[test]
fn every_storage_level_round_trips_and_unpersist_drops_blocks() {
    for serialize in [false, true] {
        let ctx = tiny(serialize);
        for level in [
            StorageLevel::MemoryOnly,
            StorageLevel::MemoryOnlySer,
            StorageLevel::MemoryAndDisk,
            StorageLevel::MemoryAndDiskSer,
            StorageLevel::DiskOnly,
        ] {
            COMPUTED.store(0, Ordering::SeqCst);
            let r = ctx
                .parallelize((0..1000u32).collect::<Vec<_>>(), 3)
                .map(|x| {
                    COMPUTED.fetch_add(1, Ordering::SeqCst);
                    (x, x.to_string())
                })
                .persist(level)
                .unwrap();
            let first = r.collect().unwrap();
            let second = r.collect().unwrap();
            assert_eq!(first, second);
            assert_eq!(first.len(), 1000);
            assert_eq!(COMPUTED.load(Ordering::SeqCst), 1000, "{level:?}: second read must come from storage");
            assert_eq!(ctx.storage_status().blocks.len(), 3, "{level:?}");
            r.unpersist();
            assert!(ctx.storage_status().blocks.is_empty(), "{level:?}: unpersist drops blocks");
        }
    }
}

#[test]
fn fully_cached_parent_skips_its_shuffle() {
    for serialize in [false, true] {
        let ctx = tiny(serialize);
        let mapped = ctx.long_accumulator();
        let pairs =
            ctx.parallelize((0..100u64).map(|i| (i % 10, i)).collect(), 4).map_with(mapped.clone(), |acc, kv| {
                acc.add(1);
                kv
            });
        let summed = pairs.reduce_by_key(|a, b| a + b, Some(2)).cache().unwrap();
        assert_eq!(summed.count().unwrap(), 10);
        assert_eq!(mapped.value().unwrap(), 100);
        // Forget every map output: a stage that reads the shuffle would have to run all four map
        // tasks again. Only the cache can spare them.
        let shuffle = match &summed.dependencies()[0] {
            ember_core::Dependency::Shuffle(d) => d.shuffle_id(),
            other => panic!("expected a shuffle dependency, got {other:?}"),
        };
        for map in 0..4 {
            assert!(ctx.map_output_tracker().unregister(shuffle, map).is_some());
        }
        let mut doubled = summed.map_values(|v| v * 2).collect().unwrap();
        doubled.sort();
        let expect: Vec<(u64, u64)> =
            (0..10u64).map(|k| (k, 2 * (0..100u64).filter(|i| i % 10 == k).sum::<u64>())).collect();
        assert_eq!(doubled, expect);
        let last = ctx.last_job_summary().unwrap();
        let launched: Vec<(String, usize)> = last.stages.iter().map(|s| (s.name.clone(), s.launched)).collect();
        assert_eq!(last.stages.len(), 1, "only the result stage launches tasks: {launched:?}");
        assert_eq!(last.stages[0].launched, 2, "one task per cached partition: {launched:?}");
        assert_eq!(mapped.value().unwrap(), 100, "no map task ran again");
    }
}

#[test]
fn checkpoint_truncates_lineage() {
    let ctx = tiny(false);
    let dir = tempfile::tempdir().unwrap();
    ctx.set_checkpoint_dir(dir.path()).unwrap();
    let r = ctx.parallelize((0..500u64).map(|i| (i % 7, i)).collect(), 3).reduce_by_key(|a, b| a + b, Some(2));
    let before = {
        let mut v = r.collect().unwrap();
        v.sort();
        v
    };
    assert!(!r.dependencies().is_empty());
    r.checkpoint().unwrap();
    assert!(r.is_checkpointed());
    assert!(r.dependencies().is_empty(), "checkpointing truncates lineage");
    let mut after = r.collect().unwrap();
    after.sort();
    assert_eq!(before, after);
    let files = std::fs::read_dir(dir.path()).unwrap().count();
    assert_eq!(files, 1, "one directory for the RDD");
    // Without a checkpoint directory, checkpoint() says so.
    let other = Context::local(1).unwrap();
    let e = other.parallelize(vec![1], 1).checkpoint().unwrap_err();
    assert!(e.to_string().contains("set_checkpoint_dir"), "{e}");
}
