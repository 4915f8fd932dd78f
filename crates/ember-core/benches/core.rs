//! Micro-benchmarks of the core engine: task encoding, scheduler round trips, shuffle and sort.
//! Run with `cargo bench -p ember-core`; compare runs on the same machine, not absolute times.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use ember_core::{Context, EmberConf, Rdd};

fn ctx() -> Context {
    let conf = EmberConf::new()
        .master("local[2]")
        .and_then(|c| c.set("ember.ui.showConsoleProgress", "false"))
        .expect("valid configuration");
    Context::new(conf).expect("context starts")
}

fn encoding(c: &mut Criterion) {
    let ctx = ctx();
    let mut rdd: Rdd<u64> = ctx.parallelize((0..1000u64).collect(), 4);
    for _ in 0..20 {
        rdd = rdd.map(|x| x + 1).filter(|x| x % 7 != 0);
    }
    c.bench_function("ship/encode_lineage_40_ops", |b| b.iter(|| postcard::to_allocvec(black_box(&rdd)).unwrap()));
    let bytes = postcard::to_allocvec(&rdd).unwrap();
    c.bench_function("ship/decode_lineage_40_ops", |b| {
        b.iter(|| postcard::from_bytes::<Rdd<u64>>(black_box(&bytes)).unwrap())
    });
}

fn scheduling(c: &mut Criterion) {
    let ctx = ctx();
    let cached = ctx.parallelize((0..10_000u64).collect(), 10).cache().unwrap();
    cached.count().unwrap();
    c.bench_function("scheduler/count_job_10_tasks", |b| b.iter(|| cached.count().unwrap()));
    c.bench_function("scheduler/reduce_by_key_job_10x10_tasks", |b| {
        b.iter(|| cached.map(|x| (x % 10, x)).reduce_by_key(|a, b| a + b, Some(10)).count().unwrap())
    });
    let group: Vec<Rdd<u64>> = (0..10).map(|_| cached.map(|x| x * 2)).collect();
    c.bench_function("scheduler/group_of_10_count_jobs", |b| b.iter(|| ctx.count_all(black_box(&group)).unwrap()));
}

fn shuffle_and_sort(c: &mut Criterion) {
    let ctx = ctx();
    let pairs =
        ctx.parallelize((0..200_000u64).map(|i| (format!("key-{}", i % 5000), i)).collect(), 4).cache().unwrap();
    pairs.count().unwrap();
    let mut g = c.benchmark_group("shuffle");
    g.sample_size(10);
    g.bench_function("reduce_by_key_200k_records_5k_keys", |b| {
        b.iter(|| pairs.reduce_by_key(|a, b| a + b, Some(4)).count().unwrap())
    });
    g.bench_function("group_by_key_200k_records", |b| b.iter(|| pairs.group_by_key(Some(4)).count().unwrap()));
    g.bench_function("sort_by_key_200k_strings", |b| {
        b.iter(|| pairs.sort_by_key(true, Some(4)).unwrap().count().unwrap())
    });
    g.finish();
}

// The macro defines an undocumented `benches` function.
#[allow(missing_docs)]
mod group {
    use super::*;
    criterion_group!(benches, encoding, scheduling, shuffle_and_sort);
}
use group::benches;
criterion_main!(benches);
