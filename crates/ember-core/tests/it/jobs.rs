//! Job submission: groups of jobs, summaries, and context settings.

use ember_core::rdd::CollectPartition;
use ember_core::ship::Ship;
use ember_core::{EmberConf, PartitionFn};

use super::common::*;

#[test]
fn run_jobs_submits_a_dependent_group_at_once() {
    for ctx in both() {
        // Ten jobs, each depending on the previous one's shuffle, submitted together.
        let mut state = ctx.parallelize((0..8u64).map(|k| (k, 0u64)).collect(), 4);
        let mut rdds = Vec::new();
        for i in 1..=10u64 {
            state = state.map_with(i, |i, (k, v)| (k, v + i)).reduce_by_key(|a, b| a + b, Some(4));
            rdds.push(state.clone());
        }
        let jobs: Vec<(ember_core::Rdd<(u64, u64)>, Ship<dyn PartitionFn<(u64, u64), Vec<(u64, u64)>>>)> =
            rdds.iter().map(|r| (r.clone(), Ship::new(CollectPartition::default()) as _)).collect();
        let results = ctx.run_jobs(jobs).unwrap();
        assert_eq!(results.len(), 10);
        for (i, parts) in results.iter().enumerate() {
            let mut all: Vec<(u64, u64)> = parts.iter().flatten().copied().collect();
            all.sort();
            let s: u64 = (1..=i as u64 + 1).sum();
            assert_eq!(all, (0..8).map(|k| (k, s)).collect::<Vec<_>>(), "job {i}");
        }
        assert_eq!(ctx.count_all(&rdds).unwrap(), vec![8; 10]);
    }
}

#[test]
fn broadcast_values_reach_tasks() {
    for ctx in both() {
        let table = ctx.broadcast(vec![10u64, 20, 30]);
        let out = ctx.parallelize(vec![0usize, 1, 2, 1], 2).map_with(table, |t, i| t[i]).collect().unwrap();
        assert_eq!(out, vec![10, 20, 30, 20]);
    }
}

#[test]
fn job_summaries_record_shuffle_metrics() {
    let ctx = ctx();
    let n = ctx
        .parallelize((0..1000u64).map(|i| (i % 10, 1u64)).collect(), 4)
        .reduce_by_key(|a, b| a + b, Some(2))
        .count()
        .unwrap();
    assert_eq!(n, 10);
    let s = ctx.last_job_summary().unwrap();
    assert!(s.succeeded);
    assert_eq!(s.stages.len(), 2);
    let m = s.metrics();
    assert_eq!(m.shuffle_records_written, 40, "map-side combine: 10 keys per map task");
    assert_eq!(m.shuffle_records_read, 40);
    assert!(m.shuffle_bytes_written > 0);
}

#[test]
fn config_file_and_unknown_keys() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("ember.conf");
    std::fs::write(&f, "# comment\nember.master = local[3]\nember.memory.size=64m\n").unwrap();
    let s = EmberConf::from_file(&f).unwrap().settings().unwrap();
    assert_eq!(s.master.slots(), 3);
    assert_eq!(s.memory_bytes, 64 << 20);
    std::fs::write(&f, "ember.memroy.size=64m\n").unwrap();
    let e = EmberConf::from_file(&f).unwrap_err();
    assert!(e.to_string().contains("ember.memroy.size"), "{e}");
}

#[test]
fn a_stopped_context_refuses_jobs() {
    let ctx = ctx();
    let r = ctx.parallelize(vec![1, 2, 3], 2);
    assert_eq!(r.count().unwrap(), 3);
    ctx.stop();
    let e = r.count().unwrap_err();
    assert!(matches!(e, ember_core::Error::Stopped), "{e:?}");
}

#[test]
fn long_uncached_lineages_compute() {
    for ctx in both() {
        let mut r = ctx.parallelize((0..10u64).collect(), 2);
        for _ in 0..2000 {
            r = r.map(|x| x + 1);
        }
        assert_eq!(r.collect().unwrap(), (2000..2010).collect::<Vec<_>>());
    }
}

#[test]
fn shared_lineage_encodes_once_per_node() {
    for ctx in both() {
        // 2^16 paths through the lineage, but only 17 distinct nodes.
        let mut r = ctx.parallelize(vec![1u64], 1);
        for _ in 0..16 {
            r = r.union(&r);
        }
        // SAFETY: the key stays in this process, which runs this binary.
        let key = unsafe { ember_core::ship::ShipKey::for_verified_peers([3; 16]) };
        let bytes = key.encode(&r).unwrap();
        assert!(bytes.len() < 4096, "encoding grows with nodes, not paths: {} bytes", bytes.len());
        let back: ember_core::Rdd<u64> = key.decode(&bytes).unwrap();
        assert_eq!(back.num_partitions(), 1 << 16);
        // Without the key, the bytes cannot be decoded.
        assert!(postcard::from_bytes::<ember_core::Rdd<u64>>(&bytes).is_err());
        // Run a smaller diamond through the scheduler.
        let mut small = ctx.parallelize(vec![1u64, 2], 2);
        for _ in 0..8 {
            small = small.union(&small);
        }
        assert_eq!(small.count().unwrap(), 2 << 8);
    }
}
