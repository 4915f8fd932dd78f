//! Tests of the RDD API that completes PySpark's list: set operations, grouping, tree
//! aggregation, numeric actions, key-function orderings, ids, local iteration, lineage strings,
//! approximate counting, samplers, local checkpoints and the storage-level rule of `persist`.
//!
//! Deterministic operations are randomized properties against the `Vec` model in
//! [`super::model`], run on both contexts of [`both`] (in-memory and encoded tasks); the
//! approximate and random ones test their stated contracts (error bounds, sizes, seeded
//! determinism).

use std::collections::{BTreeMap, HashMap};

use ember_core::data::stable_hash;
use ember_core::{Context, Error, HashPartitioner, OrderedF64, StorageLevel};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;

use super::common::{both, ctx};
use super::model::{self, sorted};

fn config() -> ProptestConfig {
    ProptestConfig { cases: 24, failure_persistence: None, max_shrink_time: 60_000, ..ProptestConfig::default() }
}

fn contexts() -> Vec<(&'static str, Context)> {
    ["in-memory tasks", "encoded tasks"].into_iter().zip(both()).collect()
}

const MAX: usize = 300;

/// Numbers: none, a few, many repeats of a few values, or spread out.
fn ints(max: usize) -> BoxedStrategy<Vec<i32>> {
    prop_oneof![
        1 => Just(Vec::new()),
        2 => vec(-5i32..5, 1..=3),
        3 => vec(-8i32..8, 0..=max),
        3 => vec(-1000i32..1000, 0..=max),
    ]
    .boxed()
}

/// Key/value records over a few keys (so sides share keys) or many.
fn pairs(max: usize) -> BoxedStrategy<Vec<(u32, i32)>> {
    prop_oneof![
        1 => Just(Vec::new()),
        3 => vec((0u32..6, -100i32..100), 0..=max),
        2 => vec((0u32..1000, -100i32..100), 0..=max),
    ]
    .boxed()
}

fn shuffle_parts() -> BoxedStrategy<Option<usize>> {
    prop_oneof![Just(None), (1usize..=6).prop_map(Some)].boxed()
}

/// How many jobs `ctx` has run (job ids count up from 0 per context).
fn jobs_run(ctx: &Context) -> u64 {
    ctx.last_job_summary().map(|s| s.id.0 + 1).unwrap_or(0)
}

// ---- set operations and grouping ------------------------------------------------------------

#[test]
fn intersection_and_subtract_match_model() {
    let ctxs = contexts();
    proptest!(config(), |(a in ints(MAX), b in ints(MAX), pa in 1usize..=6, pb in 1usize..=6, sp in shuffle_parts())| {
        for (mode, ctx) in &ctxs {
            let (ra, rb) = (ctx.parallelize(a.clone(), pa), ctx.parallelize(b.clone(), pb));
            let inter = ra.intersection(&rb, sp);
            prop_assert_eq!(inter.num_partitions(), sp.unwrap_or(pa.max(pb)), "{}", mode);
            prop_assert_eq!(sorted(inter.collect()?), model::intersection(&a, &b), "{}: intersection", mode);
            let sub = ra.subtract(&rb, sp);
            prop_assert_eq!(sub.num_partitions(), sp.unwrap_or(pa), "{}", mode);
            prop_assert_eq!(sorted(sub.collect()?), model::subtract(&a, &b), "{}: subtract", mode);
        }
    });
}

#[test]
fn group_by_groups_records_by_their_key() {
    let ctxs = contexts();
    proptest!(config(), |(data in ints(MAX), parts in 1usize..=6, sp in shuffle_parts())| {
        let keyed: Vec<(i32, i32)> = data.iter().map(|&x| (x.rem_euclid(5), x)).collect();
        let want = model::sorted_groups(model::group(&keyed));
        for (mode, ctx) in &ctxs {
            let out = ctx.parallelize(data.clone(), parts).group_by(|x: &i32| x.rem_euclid(5), sp);
            prop_assert_eq!(out.num_partitions(), sp.unwrap_or(parts), "{}", mode);
            let got = out.collect()?;
            prop_assert_eq!(got.len(), want.len(), "{}: a key appears twice", mode);
            prop_assert_eq!(model::sorted_groups(got), want.clone(), "{}", mode);
        }
    });
}

#[test]
fn cogroups_of_three_and_four_rdds_match_model() {
    let ctxs = contexts();
    let input = (pairs(80), pairs(80), pairs(80), pairs(80), vec(1usize..=5, 4), shuffle_parts());
    proptest!(config(), |((a, b, c, d, parts, sp) in input)| {
        // Each side has its own value type.
        let b: Vec<(u32, String)> = b.into_iter().map(|(k, v)| (k, v.to_string())).collect();
        let c: Vec<(u32, i64)> = c.into_iter().map(|(k, v)| (k, i64::from(v) * 3)).collect();
        let d: Vec<(u32, bool)> = d.into_iter().map(|(k, v)| (k, v > 0)).collect();
        let want4 = model::cogroup4(&a, &b, &c, &d);
        let want3 = model::cogroup4(&a, &b, &c, &Vec::<(u32, bool)>::new());
        for (mode, ctx) in &ctxs {
            let ra = ctx.parallelize(a.clone(), parts[0]);
            let rb = ctx.parallelize(b.clone(), parts[1]);
            let rc = ctx.parallelize(c.clone(), parts[2]);
            let rd = ctx.parallelize(d.clone(), parts[3]);
            let three = ra.cogroup2(&rb, &rc, sp);
            prop_assert_eq!(three.num_partitions(), sp.unwrap_or(parts[..3].iter().copied().max().unwrap_or(1)), "{}", mode);
            let got: BTreeMap<_, _> = three
                .collect()?
                .into_iter()
                .map(|(k, (x, y, z))| (k, (sorted(x), sorted(y), sorted(z), Vec::new())))
                .collect();
            prop_assert_eq!(&got, &want3, "{}: cogroup2", mode);
            let via_group_with: BTreeMap<_, _> = ra
                .group_with2(&rb, &rc)
                .collect()?
                .into_iter()
                .map(|(k, (x, y, z))| (k, (sorted(x), sorted(y), sorted(z), Vec::new())))
                .collect();
            prop_assert_eq!(&via_group_with, &want3, "{}: group_with2", mode);
            let four = ra.cogroup3(&rb, &rc, &rd, sp);
            prop_assert_eq!(four.num_partitions(), sp.unwrap_or(parts.iter().copied().max().unwrap_or(1)), "{}", mode);
            let got4 = four.collect()?;
            prop_assert_eq!(got4.len(), want4.len(), "{}: a key appears twice", mode);
            let got4: BTreeMap<_, _> =
                got4.into_iter().map(|(k, (w, x, y, z))| (k, (sorted(w), sorted(x), sorted(y), sorted(z)))).collect();
            prop_assert_eq!(&got4, &want4, "{}: cogroup3", mode);
            let via3: BTreeMap<_, _> = ra
                .group_with3(&rb, &rc, &rd)
                .collect()?
                .into_iter()
                .map(|(k, (w, x, y, z))| (k, (sorted(w), sorted(x), sorted(y), sorted(z))))
                .collect();
            prop_assert_eq!(&via3, &want4, "{}: group_with3", mode);
            let two: BTreeMap<_, _> =
                ra.group_with(&rb).collect()?.into_iter().map(|(k, (x, y))| (k, (sorted(x), sorted(y)))).collect();
            prop_assert_eq!(two, model::cogroup(&a, &b), "{}: group_with", mode);
        }
    });
}

#[test]
fn repartition_and_sort_within_partitions_places_and_sorts() {
    let ctxs = contexts();
    proptest!(config(), |(data in pairs(MAX), parts in 1usize..=6, n in 1usize..=6, asc in any::<bool>())| {
        for (mode, ctx) in &ctxs {
            let out = ctx
                .parallelize(data.clone(), parts)
                .repartition_and_sort_within_partitions(HashPartitioner::<u32>::new(n), asc);
            prop_assert_eq!(out.num_partitions(), n, "{}", mode);
            let got = out.glom().collect()?;
            for (i, part) in got.iter().enumerate() {
                prop_assert!(model::is_sorted_by(part, asc, |kv| kv.0), "{}: partition {} not sorted", mode, i);
                let misplaced: Vec<u32> =
                    part.iter().map(|kv| kv.0).filter(|k| (stable_hash(k) % n as u64) as usize != i).collect();
                prop_assert_eq!(misplaced, Vec::<u32>::new(), "{}: partition {}", mode, i);
            }
            prop_assert_eq!(sorted(got.concat()), sorted(data.clone()), "{}", mode);
        }
    });
}

#[test]
fn reduce_by_key_locally_matches_model() {
    let ctxs = contexts();
    proptest!(config(), |(data in pairs(MAX), parts in 1usize..=8)| {
        let want: HashMap<u32, i64> =
            model::group(&data).into_iter().map(|(k, vs)| (k, vs.iter().map(|&v| i64::from(v)).sum())).collect();
        for (mode, ctx) in &ctxs {
            let got = ctx.parallelize(data.clone(), parts).map_values(i64::from).reduce_by_key_locally(|a, b| a + b)?;
            prop_assert_eq!(got, want.clone(), "{}", mode);
        }
    });
}

// ---- tree aggregation -----------------------------------------------------------------------

#[test]
fn tree_reduce_and_tree_aggregate_match_model() {
    let ctxs = contexts();
    proptest!(config(), |(data in ints(MAX), parts in 1usize..=40, depth in 1usize..=4)| {
        let sum: i64 = data.iter().map(|&x| i64::from(x)).sum();
        let max = data.iter().copied().max();
        for (mode, ctx) in &ctxs {
            let rdd = ctx.parallelize(data.clone(), parts);
            prop_assert_eq!(rdd.tree_reduce(|a: i32, b: i32| a.max(b), depth)?, max, "{}: depth {}", mode, depth);
            let got = rdd.tree_aggregate(
                (0i64, 0u64),
                |(s, c), x| (s + i64::from(x), c + 1),
                |a, b| (a.0 + b.0, a.1 + b.1),
                depth,
            )?;
            prop_assert_eq!(got, (sum, data.len() as u64), "{}: depth {}", mode, depth);
        }
    });
}

#[test]
fn tree_aggregate_combines_in_shuffle_levels() {
    for (mode, ctx) in contexts() {
        let rdd = ctx.range(0, 6400, 1, 64).unwrap();
        let want: i64 = (0..6400).sum();
        let cases = [
            // depth 1: no intermediate level, one stage of 64 tasks.
            (1, vec![64]),
            // depth 2: scale 8; one level of 8 groups.
            (2, vec![64, 8]),
            // depth 3: scale 4; 64 -> 16 -> 4.
            (3, vec![64, 16, 4]),
        ];
        for (depth, stages) in cases {
            let got = rdd.tree_aggregate(0i64, |a, x| a + x, |a, b| a + b, depth).unwrap();
            assert_eq!(got, want, "{mode}: depth {depth}");
            let summary = ctx.last_job_summary().expect("a job ran");
            let tasks: Vec<usize> = summary.stages.iter().map(|s| s.tasks).collect();
            assert_eq!(sorted(tasks), sorted(stages), "{mode}: depth {depth} stages");
            assert_eq!(rdd.tree_reduce(|a, b| a + b, depth).unwrap(), Some(want), "{mode}");
        }
        let err = rdd.tree_reduce(|a, b| a + b, 0).expect_err("depth 0");
        assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
        assert_eq!(ctx.empty::<i64>().tree_aggregate(5i64, |a, x| a + x, |a, b| a + b, 2).unwrap(), 5);
        assert_eq!(ctx.empty::<i64>().tree_reduce(|a, b| a + b, 2).unwrap(), None);
    }
}

// ---- numeric actions ------------------------------------------------------------------------

/// Numbers as `f64`, sometimes with NaN among them.
fn floats(max: usize) -> BoxedStrategy<Vec<f64>> {
    let x = prop_oneof![8 => (-50i32..50).prop_map(f64::from), 1 => Just(f64::NAN), 1 => (-5i32..5).prop_map(|v| f64::from(v) / 4.0)];
    prop_oneof![1 => Just(Vec::new()), 4 => vec(x, 0..=max)].boxed()
}

#[test]
fn histogram_with_a_bucket_count_matches_model() {
    let ctxs = contexts();
    proptest!(config(), |(xs in floats(MAX), parts in 1usize..=6, count in 1usize..=8)| {
        let values: Vec<f64> = xs.iter().copied().filter(|x| !x.is_nan()).collect();
        for (mode, ctx) in &ctxs {
            let got = ctx.parallelize(xs.clone(), parts).histogram(count);
            if values.is_empty() {
                prop_assert!(matches!(got, Err(Error::InvalidArgument(_))), "{}: {:?}", mode, got);
                continue;
            }
            let (buckets, counts) = got?;
            let min = values.iter().copied().fold(f64::INFINITY, f64::min);
            let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            if min == max || count == 1 {
                prop_assert_eq!((buckets, counts), (vec![min, max], vec![values.len() as u64]), "{}", mode);
                continue;
            }
            // Spark's evenly spaced boundaries: min + s * (max - min) / count, then max.
            let mut want: Vec<f64> = (0..count).map(|s| min + (s as f64 * (max - min)) / count as f64).collect();
            want.push(max);
            prop_assert_eq!(&buckets, &want, "{}", mode);
            prop_assert_eq!(counts.iter().sum::<u64>(), values.len() as u64, "{}: every value counted once", mode);
            prop_assert_eq!(counts, model::histogram(&values, &buckets), "{}", mode);
        }
    });
}

#[test]
fn histogram_with_explicit_buckets_matches_model() {
    let ctxs = contexts();
    let buckets =
        vec(-60i32..60, 2..=6).prop_map(|b| model::distinct(&b).into_iter().map(f64::from).collect::<Vec<_>>());
    proptest!(config(), |(xs in floats(MAX), parts in 1usize..=6, buckets in buckets)| {
        prop_assume!(buckets.len() >= 2);
        for (mode, ctx) in &ctxs {
            let got = ctx.parallelize(xs.clone(), parts).histogram_with_buckets(&buckets)?;
            prop_assert_eq!(got, model::histogram(&xs, &buckets), "{}: buckets {:?}", mode, buckets);
        }
    });
}

#[test]
fn histogram_edge_cases_follow_spark() {
    let ctx = ctx();
    let rdd = ctx.parallelize(vec![1.0, 10.0, 20.0, 50.0, 50.0, 0.5, 51.0, f64::NAN], 3);
    // The last bucket is closed; values outside and NaN are ignored.
    assert_eq!(rdd.histogram_with_buckets(&[1.0, 10.0, 20.0, 50.0]).unwrap(), vec![1, 1, 3]);
    for bad in [vec![1.0], vec![1.0, 1.0], vec![2.0, 1.0], vec![0.0, f64::NAN]] {
        let err = rdd.histogram_with_buckets(&bad).expect_err("bad buckets");
        assert!(matches!(err, Error::InvalidArgument(_)), "{bad:?}: {err}");
    }
    let (b, c) = ctx.parallelize(vec![0.0, 1.0, 2.0, 3.0, 4.0, f64::NAN], 2).histogram(2).unwrap();
    assert_eq!((b, c), (vec![0.0, 2.0, 4.0], vec![2, 3]));
    assert!(ctx.parallelize(vec![1.0, f64::INFINITY], 1).histogram(2).is_err());
    assert!(ctx.parallelize(vec![f64::NAN], 1).histogram(2).is_err());
    assert!(ctx.parallelize(vec![1.0], 1).histogram(0).is_err());
    assert_eq!(ctx.parallelize(vec![3i32, 3, 3], 2).histogram(4).unwrap(), (vec![3.0, 3.0], vec![3]));
    assert_eq!(ctx.empty::<f64>().histogram_with_buckets(&[0.0, 1.0]).unwrap(), vec![0]);
}

#[test]
fn variance_family_matches_model() {
    let ctxs = contexts();
    proptest!(config(), |(data in ints(MAX), parts in 1usize..=6)| {
        let xs: Vec<f64> = data.iter().map(|&x| f64::from(x)).collect();
        let scale = xs.iter().fold(1.0f64, |m, x| m.max(x.abs()));
        let tol = 1e-9 * scale * scale;
        for (mode, ctx) in &ctxs {
            let rdd = ctx.parallelize(data.clone(), parts);
            let (var, stdev, svar, sstdev) = (rdd.variance()?, rdd.stdev()?, rdd.sample_variance()?, rdd.sample_stdev()?);
            if xs.is_empty() {
                prop_assert!(var.is_nan() && stdev.is_nan() && svar.is_nan() && sstdev.is_nan(), "{}", mode);
                continue;
            }
            let (_, want_var) = model::mean_variance(&xs);
            prop_assert!((var - want_var).abs() <= tol, "{}: variance {} vs {}", mode, var, want_var);
            prop_assert!((stdev - want_var.sqrt()).abs() <= 1e-6 * scale, "{}: stdev", mode);
            let n = xs.len() as f64;
            if xs.len() == 1 {
                prop_assert!(svar.is_nan() && sstdev.is_nan(), "{}", mode);
            } else {
                let want_svar = want_var * n / (n - 1.0);
                prop_assert!((svar - want_svar).abs() <= tol, "{}: sample variance {} vs {}", mode, svar, want_svar);
                prop_assert!((sstdev - want_svar.sqrt()).abs() <= 1e-6 * scale, "{}: sample stdev", mode);
                prop_assert_eq!(rdd.stats()?.sample_stdev(), sstdev, "{}", mode);
            }
        }
    });
}

// ---- orderings by key function --------------------------------------------------------------

#[test]
fn max_min_top_take_ordered_by_a_key_function() {
    let ctxs = contexts();
    proptest!(config(), |(data in ints(MAX), parts in 1usize..=8, n in any::<Index>())| {
        let n = n.index(data.len() + 4);
        // A key with many ties, so that tie-breaking by position is exercised.
        let key = |x: &i32| x.rem_euclid(7);
        for (mode, ctx) in &ctxs {
            let rdd = ctx.parallelize(data.clone(), parts);
            prop_assert_eq!(rdd.max_by(|x: &i32| x.rem_euclid(7))?, model::extreme_by(&data, true, key), "{}", mode);
            prop_assert_eq!(rdd.min_by(|x: &i32| x.rem_euclid(7))?, model::extreme_by(&data, false, key), "{}", mode);
            prop_assert_eq!(rdd.top_by(n, |x: &i32| x.rem_euclid(7))?, model::best_n_by(&data, n, true, key), "{}: top_by({})", mode, n);
            prop_assert_eq!(
                rdd.take_ordered_by(n, |x: &i32| x.rem_euclid(7))?,
                model::best_n_by(&data, n, false, key),
                "{}: take_ordered_by({})", mode, n
            );
        }
    });
}

/// `f64`s including NaN (both signs), infinities and both zeros.
fn odd_floats(max: usize) -> BoxedStrategy<Vec<f64>> {
    let x = prop_oneof![
        6 => (-20i32..20).prop_map(f64::from),
        1 => Just(f64::NAN),
        1 => Just(-f64::NAN),
        1 => Just(-0.0),
        1 => Just(0.0),
        1 => Just(f64::INFINITY),
        1 => Just(f64::NEG_INFINITY),
    ];
    vec(x, 0..=max).boxed()
}

fn bits(v: &[f64]) -> Vec<u64> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn f64_records_order_like_spark_doubles() {
    let ctxs = contexts();
    proptest!(config(), |(data in odd_floats(120), parts in 1usize..=6, n in 0usize..=10)| {
        let key = |x: &f64| OrderedF64(*x);
        for (mode, ctx) in &ctxs {
            let rdd = ctx.parallelize(data.clone(), parts);
            prop_assert_eq!(rdd.max_f64()?.map(f64::to_bits), model::extreme_by(&data, true, key).map(f64::to_bits), "{}", mode);
            prop_assert_eq!(rdd.min_f64()?.map(f64::to_bits), model::extreme_by(&data, false, key).map(f64::to_bits), "{}", mode);
            prop_assert_eq!(bits(&rdd.top_f64(n)?), bits(&model::best_n_by(&data, n, true, key)), "{}", mode);
            prop_assert_eq!(bits(&rdd.take_ordered_f64(n)?), bits(&model::best_n_by(&data, n, false, key)), "{}", mode);
        }
    });
    // The documented NaN behaviour: NaN is the maximum, never the minimum of mixed data.
    let ctx = ctx();
    let rdd = ctx.parallelize(vec![1.0, f64::NAN, -0.0, 0.0, f64::INFINITY], 2);
    assert!(rdd.max_f64().unwrap().is_some_and(f64::is_nan));
    assert_eq!(rdd.min_f64().unwrap().map(f64::to_bits), Some((-0.0f64).to_bits()));
    assert_eq!(bits(&rdd.take_ordered_f64(2).unwrap()), bits(&[-0.0, 0.0]));
}

// ---- ids and local iteration ----------------------------------------------------------------

#[test]
fn zip_with_unique_id_follows_sparks_scheme_without_a_job() {
    let ctxs = contexts();
    proptest!(config(), |(data in ints(MAX), parts in 1usize..=8)| {
        let n = parts as u64;
        let want: Vec<(i32, u64)> = model::slices(&data, parts)
            .into_iter()
            .enumerate()
            .flat_map(|(k, s)| s.into_iter().enumerate().map(move |(i, x)| (x, i as u64 * n + k as u64)))
            .collect();
        for (mode, ctx) in &ctxs {
            let before = jobs_run(ctx);
            let zipped = ctx.parallelize(data.clone(), parts).zip_with_unique_id();
            prop_assert_eq!(jobs_run(ctx), before, "{}: zip_with_unique_id ran a job", mode);
            prop_assert_eq!(zipped.collect()?, want.clone(), "{}", mode);
        }
    });
}

#[test]
fn to_local_iterator_runs_one_job_per_partition_as_it_goes() {
    let ctxs = contexts();
    proptest!(config(), |(data in ints(MAX), parts in 1usize..=8)| {
        for (mode, ctx) in &ctxs {
            let rdd = ctx.parallelize(data.clone(), parts);
            let before = jobs_run(ctx);
            let got: Vec<i32> = rdd.to_local_iterator().collect::<Result<_, _>>()?;
            prop_assert_eq!(got, data.clone(), "{}", mode);
            prop_assert_eq!(jobs_run(ctx) - before, parts as u64, "{}: one job per partition", mode);
        }
    });
    // Lazy: the first record costs one job when the first partition holds records.
    let ctx = ctx();
    let rdd = ctx.parallelize((0..100).collect::<Vec<i32>>(), 5);
    let before = jobs_run(&ctx);
    let mut it = rdd.to_local_iterator();
    assert_eq!(it.next().transpose().unwrap(), Some(0));
    assert_eq!(jobs_run(&ctx) - before, 1);
    // A failing job is an error item, then the end.
    let failing = ctx.parallelize(vec![1, 2, 3], 3).map(|x: i32| if x == 2 { panic!("boom") } else { x });
    let items: Vec<Result<i32, Error>> = failing.to_local_iterator().collect();
    assert_eq!(items.len(), 2, "{items:?}");
    assert!(items[1].is_err());
}

// ---- names and lineage ----------------------------------------------------------------------

#[test]
fn to_debug_string_prints_the_lineage_like_spark() {
    for (mode, ctx) in contexts() {
        let src = ctx.parallelize(vec![(1u32, 2i32), (3, 4), (1, 5)], 2);
        let mapped = src.map(|(k, v): (u32, i32)| (k, v + 1));
        let summed = mapped.reduce_by_key(|a, b| a + b, Some(3));
        let named = summed.map_values(|v| v * 2).set_name("doubled").persist(StorageLevel::MemoryAndDisk).unwrap();
        let out = named.union(&src);
        assert_eq!(named.name().as_deref(), Some("doubled"));
        assert_eq!(src.name(), None);
        let (a, b, c, d, e) = (src.id().0, mapped.id().0, summed.id().0, named.id().0, out.id().0);
        let want = format!(
            "(5) UnionRdd[{e}] at union []\n \
             |  doubled PipeRdd[{d}] at map_with [Disk Memory Deserialized 1x Replicated]\n \
             |  AggregatedRdd[{c}] at reduce_by_key []\n \
             +-(2) PipeRdd[{b}] at map []\n    \
             |  ParallelCollection[{a}] at parallelize []\n \
             |  ParallelCollection[{a}] at parallelize []"
        );
        assert_eq!(out.to_debug_string(), want, "{mode}");
        // Once computed, a persisted RDD reports its cached partitions.
        assert_eq!(named.count().unwrap(), 2);
        let text = named.to_debug_string();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], format!("(3) doubled PipeRdd[{d}] at map_with [Disk Memory Deserialized 1x Replicated]"));
        assert!(lines[1].starts_with(" |       CachedPartitions: 3; MemorySize: "), "{mode}: {text}");
        assert_eq!(lines[2], format!(" |  AggregatedRdd[{c}] at reduce_by_key []"), "{mode}");
        // Two shuffles: the stage boundaries nest.
        let twice = summed.map(|(k, v)| (v, k)).group_by_key(Some(2));
        let text = twice.to_debug_string();
        assert_eq!(
            text.lines().map(|l| l.split('[').next().unwrap_or("")).collect::<Vec<_>>(),
            vec![
                "(2) AggregatedRdd",
                " +-(3) PipeRdd",
                "    |  AggregatedRdd",
                "    +-(2) PipeRdd",
                "       |  ParallelCollection"
            ],
            "{mode}: {text}"
        );
    }
}

// ---- approximate distinct count -------------------------------------------------------------

#[test]
fn count_approx_distinct_is_within_three_relative_sds() {
    for (mode, ctx) in contexts() {
        for seed in 0..4u64 {
            for (n, relative_sd) in [(20_000u64, 0.05), (20_000, 0.1), (5000, 0.01), (300, 0.05), (0, 0.05), (1, 0.2)] {
                // `n` distinct values from a seeded stream, each repeated 1-3 times.
                let data: Vec<u64> = (0..n)
                    .flat_map(|i| {
                        let v = stable_hash(&(seed, i));
                        std::iter::repeat_n(v, 1 + (v % 3) as usize)
                    })
                    .collect();
                let est = ctx.parallelize(data, 4).count_approx_distinct(relative_sd).unwrap();
                let err = (est as f64 - n as f64).abs();
                assert!(
                    err <= (3.0 * relative_sd * n as f64).max(1.0),
                    "{mode}: seed {seed}, n {n}, relative_sd {relative_sd}: estimate {est}"
                );
            }
        }
        let rdd = ctx.parallelize(vec![1u32, 2, 3], 2);
        for bad in [0.000017, 0.0, -1.0, 0.5, f64::NAN] {
            let err = rdd.count_approx_distinct(bad).expect_err("bad relative_sd");
            assert!(matches!(err, Error::InvalidArgument(_)), "{bad}: {err}");
        }
        // Strings hash as well; the same data gives the same estimate.
        let words = ctx.parallelize((0..3000).map(|i| format!("w{}", i % 1000)).collect::<Vec<_>>(), 3);
        let first = words.count_approx_distinct(0.05).unwrap();
        assert!((first as f64 - 1000.0).abs() <= 150.0, "{mode}: {first}");
        assert_eq!(words.count_approx_distinct(0.05).unwrap(), first);
    }
}

// ---- samplers -------------------------------------------------------------------------------

#[test]
fn random_split_is_disjoint_covering_and_seeded() {
    let ctxs = contexts();
    let weights = vec(0.0f64..5.0, 1..=5).prop_filter("positive sum", |w| w.iter().sum::<f64>() > 0.0);
    proptest!(config(), |(data in ints(MAX), parts in 1usize..=6, weights in weights, seed in any::<u64>())| {
        for (mode, ctx) in &ctxs {
            let rdd = ctx.parallelize(data.clone(), parts);
            let splits = rdd.random_split(&weights, seed)?;
            prop_assert_eq!(splits.len(), weights.len(), "{}", mode);
            let got: Vec<Vec<i32>> = splits.iter().map(|s| s.collect()).collect::<Result<_, _>>()?;
            prop_assert_eq!(sorted(got.concat()), sorted(data.clone()), "{}: splits must partition the records", mode);
            for (w, part) in weights.iter().zip(&got) {
                if *w == 0.0 {
                    prop_assert!(part.is_empty(), "{}: zero weight got records", mode);
                }
                prop_assert!(model::is_subsequence(part, &data), "{}: split out of order", mode);
            }
            let again: Vec<Vec<i32>> =
                rdd.random_split(&weights, seed)?.iter().map(|s| s.collect()).collect::<Result<_, _>>()?;
            prop_assert_eq!(again, got, "{}: same seed, other splits", mode);
        }
    });
}

#[test]
fn random_split_proportions_follow_the_weights() {
    for (mode, ctx) in contexts() {
        let n = 20_000u64;
        let rdd = ctx.range(0, n as i64, 1, 4).unwrap();
        let weights = [1.0, 2.0, 5.0];
        let splits = rdd.random_split(&weights, 42).unwrap();
        for (w, s) in weights.iter().zip(&splits) {
            let p = w / 8.0;
            let (want, sd) = (p * n as f64, (n as f64 * p * (1.0 - p)).sqrt());
            let got = s.count().unwrap() as f64;
            assert!((got - want).abs() <= 5.0 * sd, "{mode}: weight {w}: {got} records, expected {want}");
        }
        let other = rdd.random_split(&weights, 43).unwrap();
        assert_ne!(splits[0].collect().unwrap(), other[0].collect().unwrap(), "{mode}: seed ignored");
        for bad in [vec![], vec![-1.0, 2.0], vec![0.0, 0.0], vec![f64::NAN]] {
            assert!(matches!(rdd.random_split(&bad, 1), Err(Error::InvalidArgument(_))), "{bad:?}");
        }
    }
}

#[test]
fn take_sample_has_the_exact_size_and_is_seeded() {
    let ctxs = contexts();
    proptest!(config(), |(data in ints(MAX), parts in 1usize..=6, num in any::<Index>(), repl in any::<bool>(), seed in any::<u64>())| {
        let num = num.index(data.len() + 10);
        for (mode, ctx) in &ctxs {
            let rdd = ctx.parallelize(data.clone(), parts);
            let got = rdd.take_sample(repl, num, seed)?;
            let want_len = if repl { if data.is_empty() { 0 } else { num } } else { num.min(data.len()) };
            prop_assert_eq!(got.len(), want_len, "{}: take_sample({}, {})", mode, repl, num);
            if repl {
                prop_assert!(got.iter().all(|x| data.contains(x)), "{}: foreign record", mode);
            } else {
                // Each record at most once: the sample is a sub-multiset of the data.
                let (have, want) = (model::counts(&got), model::counts(&data));
                prop_assert!(have.iter().all(|(x, c)| want.get(x).is_some_and(|w| c <= w)), "{}: record repeated", mode);
            }
            prop_assert_eq!(rdd.take_sample(repl, num, seed)?, got, "{}: same seed, other sample", mode);
        }
    });
}

#[test]
fn take_sample_is_spread_over_the_records() {
    let ctx = ctx();
    let rdd = ctx.range(0, 1000, 1, 4).unwrap();
    // Over many seeds every record is picked about equally often (10 of 1000 each time).
    let mut hits = vec![0u32; 1000];
    for seed in 0..400 {
        let s = rdd.take_sample(false, 10, seed).unwrap();
        assert_eq!(s.len(), 10);
        for x in s {
            hits[x as usize] += 1;
        }
    }
    // 4 expected picks per record: the first and last tenths both get about 400.
    let (head, tail): (u32, u32) = (hits[..100].iter().sum(), hits[900..].iter().sum());
    assert!((300..=500).contains(&head) && (300..=500).contains(&tail), "{head} {tail}");
    assert!(matches!(rdd.take_sample(false, usize::MAX, 1), Err(Error::InvalidArgument(_))));
}

#[test]
fn sample_by_key_keeps_each_keys_fraction() {
    for (mode, ctx) in contexts() {
        let per_key = 5000usize;
        let data: Vec<(u32, usize)> = (0..4u32).flat_map(|k| (0..per_key).map(move |i| (k, i))).collect();
        let rdd = ctx.parallelize(data.clone(), 4);
        for repl in [false, true] {
            let fractions: HashMap<u32, f64> = if repl {
                [(0, 0.2), (1, 1.0), (2, 2.5), (3, 0.0)].into()
            } else {
                [(0, 0.1), (1, 0.5), (2, 0.9), (3, 0.0)].into()
            };
            let sample = rdd.sample_by_key(repl, fractions.clone(), 7).unwrap();
            let got = sample.collect().unwrap();
            let counts = model::counts(&got.iter().map(|kv| kv.0).collect::<Vec<_>>());
            for (k, f) in &fractions {
                let n = per_key as f64;
                let sd = if repl { (n * f).sqrt() } else { (n * f * (1.0 - f)).sqrt() };
                let c = counts.get(k).copied().unwrap_or(0) as f64;
                assert!((c - n * f).abs() <= 5.0 * sd + 1e-9, "{mode}: key {k}, fraction {f}, replacement {repl}: {c}");
            }
            if !repl {
                assert!(model::is_subsequence(&got, &data), "{mode}: sample out of order or repeated");
            }
            assert_eq!(rdd.sample_by_key(repl, fractions, 7).unwrap().collect().unwrap(), got, "{mode}: seeded");
        }
        let missing: HashMap<u32, f64> = [(0, 0.5)].into();
        let err = rdd.sample_by_key(false, missing, 1).unwrap().count().expect_err("key without fraction");
        assert!(err.to_string().contains("no sampling fraction"), "{mode}: {err}");
        let bad: HashMap<u32, f64> = [(0, 1.5)].into();
        assert!(matches!(rdd.sample_by_key(false, bad, 1), Err(Error::InvalidArgument(_))));
    }
}

// ---- persistence and local checkpoints ------------------------------------------------------

#[test]
fn persist_at_another_level_is_an_error() {
    let ctx = ctx();
    let r = ctx.parallelize(vec![1, 2, 3], 2);
    assert_eq!(r.persist(StorageLevel::MemoryOnly).unwrap().storage_level(), StorageLevel::MemoryOnly);
    // The same level again, and `cache` (MemoryOnly), are fine.
    r.persist(StorageLevel::MemoryOnly).unwrap();
    r.cache().unwrap();
    let err = r.persist(StorageLevel::DiskOnly).expect_err("another level");
    assert!(matches!(err, Error::InvalidArgument(_)) && err.to_string().contains("storage level"), "{err}");
    assert_eq!(r.storage_level(), StorageLevel::MemoryOnly);
    // After unpersist, a new level may be assigned.
    r.unpersist();
    r.persist(StorageLevel::DiskOnly).unwrap();
    assert!(r.cache().is_err());
    assert!(r.persist(StorageLevel::None).is_err());
    assert!(ctx.parallelize(vec![1], 1).persist(StorageLevel::None).is_ok(), "None on None is a no-op");
    assert_eq!(r.collect().unwrap(), vec![1, 2, 3]);
}

#[test]
fn local_checkpoint_truncates_lineage_onto_cached_blocks() {
    for (mode, ctx) in contexts() {
        let computed = ctx.long_accumulator();
        let data: Vec<(u32, i64)> = (0..500).map(|i| (i % 7, i64::from(i))).collect();
        let r = ctx
            .parallelize(data.clone(), 3)
            .map_with(computed.clone(), |acc, (k, v)| {
                acc.add(1);
                (k, v * 2)
            })
            .reduce_by_key(|a, b| a + b, Some(2))
            .map_values(|v| v + 1);
        assert!(!r.dependencies().is_empty());
        r.local_checkpoint().unwrap();
        assert!(r.is_locally_checkpointed(), "{mode}");
        assert!(r.dependencies().is_empty(), "{mode}: lineage not truncated");
        assert_eq!(r.storage_level(), StorageLevel::MemoryAndDisk, "{mode}: memory levels gain disk");
        // As in Spark, a locally checkpointed RDD may be persisted again, keeping disk.
        r.persist(StorageLevel::MemoryOnlySer).unwrap();
        assert_eq!(r.storage_level(), StorageLevel::MemoryAndDiskSer, "{mode}");
        assert_eq!(computed.value().unwrap(), 500, "{mode}");
        let want: Vec<(u32, i64)> =
            model::group(&data).into_iter().map(|(k, vs)| (k, vs.iter().map(|v| v * 2).sum::<i64>() + 1)).collect();
        assert_eq!(sorted(r.collect().unwrap()), want, "{mode}");
        let child = r.map(|(k, v)| (k % 2, v)).reduce_by_key(|a, b| a + b, None);
        assert_eq!(child.count().unwrap(), 2, "{mode}");
        assert_eq!(computed.value().unwrap(), 500, "{mode}: parents were recomputed");
        assert!(r.to_debug_string().contains("LocalCheckpointRdd"), "{mode}: {}", r.to_debug_string());
        // The blocks are the only copy: once dropped, reading fails instead of recomputing.
        r.unpersist();
        let err = r.collect().expect_err("blocks are gone");
        assert!(err.to_string().contains("locally checkpointed"), "{mode}: {err}");
        assert_eq!(computed.value().unwrap(), 500, "{mode}");
    }
}

/// In local mode a replicated level caches one copy, as its base level does: the partition is
/// computed once and read back from the cache.
#[test]
fn replicated_levels_cache_in_local_mode() {
    let ctx = ember_core::Context::local(2).unwrap();
    let computed = ctx.long_accumulator();
    let r = ctx
        .parallelize((0..1000u64).collect(), 4)
        .map_with(computed.clone(), |acc, x| {
            acc.add(1);
            x
        })
        .persist(ember_core::StorageLevel::MemoryAndDisk2)
        .unwrap();
    assert_eq!(r.count().unwrap(), 1000);
    assert_eq!(r.reduce(|a, b| a + b).unwrap(), Some((0..1000u64).sum()));
    assert_eq!(computed.value().unwrap(), 1000);
}
