//! Jobs whose shuffle and aggregation data is several times the memory budget spill to disk,
//! finish correctly, and report what they spilled.

use std::collections::HashMap;

use ember_core::Context;

const BUDGET: u64 = 2 << 20;

fn small_ctx(serialize: bool) -> Context {
    super::common::ctx_with_memory(Some("2m"), serialize)
}

fn records(n: u64) -> Vec<(String, u64)> {
    (0..n).map(|i| (format!("key-{:08}-{}", (i * 2_654_435_761) % (n / 2), "x".repeat(16)), i)).collect()
}

#[test]
fn reduce_by_key_spills_and_matches_model() {
    for serialize in [false, true] {
        let ctx = small_ctx(serialize);
        let data = records(300_000);
        let raw: u64 = data.iter().map(|(k, _)| k.len() as u64 + 8).sum();
        assert!(raw >= 5 * BUDGET, "test data must be at least 5x the budget: {raw}");
        let mut model: HashMap<String, u64> = HashMap::new();
        for (k, v) in &data {
            *model.entry(k.clone()).or_default() += v;
        }
        let out = ctx.parallelize(data, 4).reduce_by_key(|a, b| a + b, Some(3)).collect_as_map().unwrap();
        assert_eq!(out, model);
        let m = ctx.last_job_summary().expect("summary").metrics();
        assert!(m.disk_bytes_spilled > 0 && m.spill_count > 1, "expected spills, got {m:?}");
        assert!(m.memory_bytes_spilled > 0);
    }
}

#[test]
fn group_by_key_and_sort_spill() {
    let ctx = small_ctx(false);
    let data = records(150_000);
    let mut model: HashMap<String, Vec<u64>> = HashMap::new();
    for (k, v) in &data {
        model.entry(k.clone()).or_default().push(*v);
    }
    let mut groups = ctx.parallelize(data.clone(), 3).group_by_key(Some(2)).collect().unwrap();
    for (_, vs) in groups.iter_mut() {
        vs.sort();
    }
    let got: HashMap<String, Vec<u64>> = groups.into_iter().collect();
    for vs in model.values_mut() {
        vs.sort();
    }
    assert_eq!(got, model);
    assert!(ctx.last_job_summary().unwrap().metrics().disk_bytes_spilled > 0);

    let sorted = ctx.parallelize(data.clone(), 3).sort_by_key(true, Some(2)).unwrap().collect().unwrap();
    let mut expect = data;
    expect.sort_by(|a, b| a.0.cmp(&b.0));
    let keys: Vec<&String> = sorted.iter().map(|(k, _)| k).collect();
    assert_eq!(keys, expect.iter().map(|(k, _)| k).collect::<Vec<_>>());
    assert!(ctx.last_job_summary().unwrap().metrics().disk_bytes_spilled > 0, "the sort should spill");
}

#[test]
fn shuffle_without_combine_spills() {
    let ctx = small_ctx(false);
    let data = records(150_000);
    let n = data.len() as u64;
    let out = ctx.parallelize(data, 2).repartition(5);
    assert_eq!(out.count().unwrap(), n);
    let m = ctx.job_summaries().iter().map(|j| j.metrics().disk_bytes_spilled).sum::<u64>();
    assert!(m > 0, "repartition of 5x the budget should spill");
}
