//! Randomized tests of every RDD operator against the plain `Vec` model in [`super::model`].
//!
//! Inputs include empty RDDs, empty partitions, fewer records than partitions, skewed keys (most
//! records share one key) and many distinct keys; every property runs on both contexts of
//! [`both`], so task encoding is exercised too, and on `local-cluster[2,1,1024]`, whose tasks run
//! in two executor processes and whose shuffles cross between them. Contexts are made once per test function (they
//! start threads) and shared by its cases, which is why the properties use proptest's
//! closure-style `proptest!(config, |..| ..)` rather than one `fn` per case.

use std::collections::{BTreeMap, HashMap};
use std::ops::RangeInclusive;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use ember_core::data::stable_hash;
use ember_core::{
    BoxIter, Context, Data, Error, HashPartitioner, IndexPartitioner, Partitioner, RangePartitioner, Rdd,
};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::TestCaseError;

use super::common::{both, cluster_ctx};
use super::model::{self, sorted};

// ---- configuration and generators -----------------------------------------------------------

/// Few cases and small inputs: the suite runs on a 2-core CI machine.
fn config() -> ProptestConfig {
    ProptestConfig { cases: 24, failure_persistence: None, max_shrink_time: 60_000, ..ProptestConfig::default() }
}

/// The in-memory context and the one that encodes every task, labelled for failure messages.
fn contexts() -> Vec<(&'static str, Context)> {
    let mut c: Vec<_> = ["in-memory tasks", "encoded tasks"].into_iter().zip(both()).collect();
    c.push(("executor processes", cluster_ctx()));
    c
}

/// The most records a generated input holds.
const MAX: usize = 300;
/// Input partition counts.
const PARTS: RangeInclusive<usize> = 1..=8;
/// The key most records share in a skewed input.
const HOT: u32 = 7;

/// Shuffle partition counts: the default (`None`) or an explicit 1..=6.
fn shuffle_parts() -> BoxedStrategy<Option<usize>> {
    prop_oneof![Just(None), (1usize..=6).prop_map(Some)].boxed()
}

/// Keys from one of several shapes: none, 1-3 keys (fewer records than most partition counts),
/// skewed (nine in ten records share `HOT`), many distinct keys, or a handful of keys.
fn keys(max: usize) -> BoxedStrategy<Vec<u32>> {
    prop_oneof![
        1 => Just(Vec::new()),
        2 => vec(0u32..4, 1..=3),
        3 => vec(prop_oneof![9 => Just(HOT), 1 => 0u32..64], 0..=max),
        3 => vec(0u32..1_000_000, 0..=max),
        2 => vec(0u32..6, 0..=max),
    ]
    .boxed()
}

/// Key/value records with keys from [`keys`].
fn pairs(max: usize) -> BoxedStrategy<Vec<(u32, i32)>> {
    keys(max)
        .prop_flat_map(|ks| {
            let n = ks.len();
            (Just(ks), vec(-1000i32..1000, n))
        })
        .prop_map(|(ks, vs)| ks.into_iter().zip(vs).collect())
        .boxed()
}

/// Two sides of a join: the right side either independent of the left, or drawn from its keys
/// (so that most keys match).
fn join_sides(max: usize) -> BoxedStrategy<(Vec<(u32, i32)>, Vec<(u32, i32)>)> {
    pairs(max)
        .prop_flat_map(move |l| {
            let lk: Vec<u32> = l.iter().map(|kv| kv.0).collect();
            let shared = if lk.is_empty() {
                Just(Vec::new()).boxed()
            } else {
                vec((proptest::sample::select(lk), -1000i32..1000), 0..=max).boxed()
            };
            (Just(l), prop_oneof![pairs(max), shared])
        })
        .boxed()
}

/// Numbers: none, 1-3, skewed (mostly one value), spread out, or including the `i32` extremes.
fn ints(max: usize) -> BoxedStrategy<Vec<i32>> {
    prop_oneof![
        1 => Just(Vec::new()),
        2 => vec(-5i32..5, 1..=3),
        2 => vec(prop_oneof![9 => Just(42), 1 => -1000i32..1000], 0..=max),
        3 => vec(-1000i32..1000, 0..=max),
        1 => vec(prop_oneof![Just(i32::MIN), Just(i32::MAX), any::<i32>()], 0..=max),
    ]
    .boxed()
}

// ---- helpers --------------------------------------------------------------------------------

fn map_slices<T: Clone, U>(data: &[T], parts: usize, f: impl Fn(Vec<T>) -> U) -> Vec<U> {
    model::slices(data, parts).into_iter().map(f).collect()
}

fn sum_i64(data: &[i32]) -> i64 {
    data.iter().map(|&x| i64::from(x)).sum()
}

/// The records of `glom` output outside the partition `expected` gives their key, as
/// (partition, expected partition, key).
fn misplaced<K: Clone, V>(parts: &[Vec<(K, V)>], expected: impl Fn(&K) -> usize) -> Vec<(usize, usize, K)> {
    let mut bad = Vec::new();
    for (i, part) in parts.iter().enumerate() {
        for (k, _) in part {
            let want = expected(k);
            if want != i {
                bad.push((i, want, k.clone()));
            }
        }
    }
    bad
}

/// Partitions `rdd` by `p`, and checks on the executors (by `map_partitions_with`) and on the
/// driver (by `glom`) that every record sits where `expected` says and none is lost.
fn check_partition_by<P>(
    mode: &str,
    rdd: &Rdd<(u32, i32)>,
    data: &[(u32, i32)],
    p: P,
    expected: impl Fn(&u32) -> usize,
) -> Result<(), TestCaseError>
where
    P: Partitioner<u32> + Data,
{
    let n = p.num_partitions();
    let out = rdd.partition_by(p.clone());
    prop_assert_eq!(out.num_partitions(), n, "{}", mode);
    let parts = out.glom().collect()?;
    prop_assert_eq!(parts.len(), n, "{}", mode);
    prop_assert_eq!(misplaced(&parts, &expected), vec![], "{}: (partition, expected, key)", mode);
    prop_assert_eq!(sorted(parts.concat()), sorted(data.to_vec()), "{}", mode);
    // The same check inside the tasks, with the partitioner shipped as the environment.
    let wrong = out
        .map_partitions_with(p, |p: &P, split, it: BoxIter<'_, (u32, i32)>| {
            Box::new(it.filter(move |(k, _)| p.partition(k) != split).map(|(k, _)| k))
        })
        .collect()?;
    prop_assert_eq!(wrong, Vec::<u32>::new(), "{}: keys in the wrong partition", mode);
    Ok(())
}

/// `reduce_by_key_with(p, +)`: sums per key, each key in the partition `expected` says.
fn check_reduce_by_key_with<P>(
    mode: &str,
    rdd: &Rdd<(u32, i32)>,
    data: &[(u32, i32)],
    p: P,
    expected: impl Fn(&u32) -> usize,
) -> Result<(), TestCaseError>
where
    P: Partitioner<u32> + Data,
{
    let n = p.num_partitions();
    let out = rdd.map_values(i64::from).reduce_by_key_with(p, |a, b| a + b);
    prop_assert_eq!(out.num_partitions(), n, "{}", mode);
    let parts = out.glom().collect()?;
    prop_assert_eq!(misplaced(&parts, &expected), vec![], "{}: (partition, expected, key)", mode);
    let want: Vec<(u32, i64)> = model::group(data).into_iter().map(|(k, vs)| (k, sum_i64(&vs))).collect();
    prop_assert_eq!(sorted(parts.concat()), want, "{}", mode);
    Ok(())
}

fn range_partition(bounds: &[u32], ascending: bool, k: &u32) -> usize {
    let below = bounds.iter().filter(|b| *b < k).count();
    if ascending {
        below
    } else {
        bounds.len() - below
    }
}

/// Sorted, deduplicated range bounds, from small or large keys.
fn range_bounds() -> BoxedStrategy<Vec<u32>> {
    prop_oneof![vec(0u32..64, 0..=7), vec(0u32..1_000_000, 0..=7)].prop_map(|b| model::distinct(&b)).boxed()
}

// ---- sources --------------------------------------------------------------------------------

#[test]
fn parallelize_and_glom_keep_order_and_slices() {
    let ctxs = contexts();
    proptest!(config(), |(data in ints(MAX), parts in PARTS)| {
        for (mode, ctx) in &ctxs {
            let rdd = ctx.parallelize(data.clone(), parts);
            prop_assert_eq!(rdd.num_partitions(), parts, "{}", mode);
            prop_assert_eq!(rdd.collect()?, data.clone(), "{}", mode);
            prop_assert_eq!(rdd.count()?, data.len() as u64, "{}", mode);
            prop_assert_eq!(rdd.glom().collect()?, model::slices(&data, parts), "{}", mode);
        }
    });
}

#[test]
fn range_matches_model() {
    let ctxs = contexts();
    let step = prop_oneof![-9i64..=-1, 1i64..=9];
    proptest!(config(), |(start in -60i64..60, end in -60i64..60, step in step, slices in PARTS)| {
        let want = model::range(start, end, step);
        for (mode, ctx) in &ctxs {
            let rdd = ctx.range(start, end, step, slices)?;
            prop_assert_eq!(rdd.num_partitions(), slices, "{}", mode);
            prop_assert_eq!(rdd.count()?, want.len() as u64, "{}", mode);
            prop_assert_eq!(rdd.glom().collect()?, model::slices(&want, slices), "{}", mode);
        }
    });
}

#[test]
fn range_near_i64_limits_and_zero_step() {
    let cases = [
        (i64::MAX - 10, i64::MAX, 3),
        (i64::MIN + 10, i64::MIN, -3),
        (i64::MIN, i64::MAX, i64::MAX),
        (i64::MAX, i64::MIN, i64::MIN),
        (0, 10, i64::MAX),
        (0, -10, i64::MIN),
        (i64::MIN, i64::MIN + 5, 1),
        (i64::MAX, i64::MAX - 5, -2),
        (5, 5, 1),
        (5, 5, -1),
    ];
    for (mode, ctx) in contexts() {
        for (start, end, step) in cases {
            let want = model::range(start, end, step);
            for slices in [1, 3, 8] {
                let rdd = ctx.range(start, end, step, slices).unwrap();
                assert_eq!(rdd.count().unwrap(), want.len() as u64, "{mode}: range({start}, {end}, {step})");
                assert_eq!(rdd.collect().unwrap(), want, "{mode}: range({start}, {end}, {step}) / {slices}");
            }
        }
        let err = ctx.range(0, 10, 0, 2).unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(_)), "{mode}: {err}");
    }
}

#[test]
fn narrow_operators_and_actions_accept_an_empty_rdd() {
    for (mode, ctx) in contexts() {
        let e = ctx.empty::<i32>();
        let pe = ctx.empty::<(u32, i32)>();
        let other = ctx.parallelize(vec![(1u32, 10i32), (2, 20)], 2);
        assert_eq!(e.num_partitions(), 0, "{mode}");
        assert_eq!(e.collect().unwrap(), Vec::<i32>::new(), "{mode}");
        assert_eq!(e.count().unwrap(), 0, "{mode}");
        assert_eq!(e.first().unwrap(), None, "{mode}");
        assert_eq!(e.take(3).unwrap(), Vec::<i32>::new(), "{mode}");
        assert!(e.is_empty().unwrap(), "{mode}");
        assert_eq!(e.reduce(|a, b| a + b).unwrap(), None, "{mode}");
        assert_eq!(e.fold(5, |a, b| a + b).unwrap(), 5, "{mode}: the zero is applied once when merging");
        assert_eq!(e.aggregate(0u64, |c, _| c + 1, |a, b| a + b).unwrap(), 0, "{mode}");
        assert_eq!(e.top(2).unwrap(), Vec::<i32>::new(), "{mode}");
        assert_eq!(e.take_ordered(2).unwrap(), Vec::<i32>::new(), "{mode}");
        assert_eq!((e.min().unwrap(), e.max().unwrap()), (None, None), "{mode}");
        assert_eq!(e.sum().unwrap(), 0.0, "{mode}");
        assert!(e.mean().unwrap().is_nan(), "{mode}");
        let s = e.stats().unwrap();
        assert_eq!((s.count, s.min, s.max), (0, f64::INFINITY, f64::NEG_INFINITY), "{mode}");
        assert!(s.variance().is_nan(), "{mode}");
        assert_eq!(e.glom().collect().unwrap(), Vec::<Vec<i32>>::new(), "{mode}");
        assert_eq!(e.zip_with_index().unwrap().collect().unwrap(), vec![], "{mode}");
        assert_eq!(e.zip(&e).unwrap().collect().unwrap(), vec![], "{mode}");
        assert_eq!(e.map(|x| x + 1).filter(|x| x % 2 == 0).collect().unwrap(), Vec::<i32>::new(), "{mode}");
        assert_eq!(e.sample(true, 2.0, 1).unwrap().count().unwrap(), 0, "{mode}");
        assert_eq!(e.coalesce(3, false).collect().unwrap(), Vec::<i32>::new(), "{mode}");
        assert_eq!(e.cartesian(&ctx.parallelize(vec![1], 1)).unwrap().count().unwrap(), 0, "{mode}");
        assert_eq!(e.union(&ctx.parallelize(vec![1, 2], 2)).collect().unwrap(), vec![1, 2], "{mode}");
        let acc = ctx.long_accumulator();
        e.foreach_with(acc.clone(), |acc, x| acc.add(i64::from(x))).unwrap();
        assert_eq!(acc.value().unwrap(), 0, "{mode}");
        assert_eq!(pe.join(&other, None).collect().unwrap(), vec![], "{mode}");
        assert_eq!(pe.left_outer_join(&other, None).collect().unwrap(), vec![], "{mode}");
        assert_eq!(
            sorted(pe.right_outer_join(&other, None).collect().unwrap()),
            vec![(1, (None, 10)), (2, (None, 20))],
            "{mode}"
        );
        assert_eq!(
            sorted(other.full_outer_join(&pe, None).collect().unwrap()),
            vec![(1, (Some(10), None)), (2, (Some(20), None))],
            "{mode}"
        );
        assert_eq!(sorted(other.subtract_by_key(&pe, None).collect().unwrap()), vec![(1, 10), (2, 20)], "{mode}");
        assert_eq!(pe.lookup(1).unwrap(), Vec::<i32>::new(), "{mode}");
        assert!(pe.collect_as_map().unwrap().is_empty(), "{mode}");
    }
}

// ---- narrow transformations -----------------------------------------------------------------

#[test]
fn map_and_map_with_keep_partition_layout() {
    let ctxs = contexts();
    proptest!(config(), |(data in ints(MAX), parts in PARTS, k in -5i32..5)| {
        for (mode, ctx) in &ctxs {
            let rdd = ctx.parallelize(data.clone(), parts);
            let got = rdd.map(|x| x.wrapping_mul(3).wrapping_sub(1)).glom().collect()?;
            let want =
                map_slices(&data, parts, |s| s.iter().map(|x| x.wrapping_mul(3).wrapping_sub(1)).collect::<Vec<_>>());
            prop_assert_eq!(got, want, "{}", mode);
            let got = rdd.map_with(k, |k, x| (i64::from(x) * i64::from(*k), x)).glom().collect()?;
            let want =
                map_slices(&data, parts, |s| s.iter().map(|&x| (i64::from(x) * i64::from(k), x)).collect::<Vec<_>>());
            prop_assert_eq!(got, want, "{}", mode);
        }
    });
}

#[test]
fn filter_and_filter_with_keep_partition_layout() {
    let ctxs = contexts();
    proptest!(config(), |(data in ints(MAX), parts in PARTS, m in 1i32..5)| {
        for (mode, ctx) in &ctxs {
            let rdd = ctx.parallelize(data.clone(), parts);
            let got = rdd.filter(|x| x % 3 == 0).glom().collect()?;
            let want = map_slices(&data, parts, |s| s.into_iter().filter(|x| x % 3 == 0).collect::<Vec<_>>());
            prop_assert_eq!(got, want, "{}", mode);
            let got = rdd.filter_with(m, |m, x| x.rem_euclid(*m) == 0).glom().collect()?;
            let want = map_slices(&data, parts, |s| s.into_iter().filter(|x| x.rem_euclid(m) == 0).collect::<Vec<_>>());
            prop_assert_eq!(got, want, "{}", mode);
        }
    });
}

#[test]
fn flat_map_and_flat_map_with_keep_partition_layout() {
    let ctxs = contexts();
    proptest!(config(), |(data in ints(MAX), parts in PARTS, m in 1i32..5)| {
        for (mode, ctx) in &ctxs {
            let rdd = ctx.parallelize(data.clone(), parts);
            // Zero to three outputs per record, so some partitions end up empty.
            let got = rdd.flat_map(|x: i32| (0..x.rem_euclid(4)).map(move |i| (x, i))).glom().collect()?;
            let want = map_slices(&data, parts, |s| {
                s.into_iter().flat_map(|x| (0..x.rem_euclid(4)).map(move |i| (x, i))).collect::<Vec<_>>()
            });
            prop_assert_eq!(got, want, "{}", mode);
            let got = rdd.flat_map_with(m, |m, x| vec![x; x.rem_euclid(*m) as usize]).glom().collect()?;
            let want = map_slices(&data, parts, |s| {
                s.into_iter().flat_map(|x| vec![x; x.rem_euclid(m) as usize]).collect::<Vec<_>>()
            });
            prop_assert_eq!(got, want, "{}", mode);
        }
    });
}

#[test]
fn map_partitions_family_sees_each_partition_once() {
    let ctxs = contexts();
    proptest!(config(), |(data in ints(MAX), parts in PARTS, k in 1usize..4)| {
        for (mode, ctx) in &ctxs {
            let rdd = ctx.parallelize(data.clone(), parts);
            // Running sums restart in every partition.
            let got = rdd
                .map_partitions(|it: BoxIter<'_, i32>| {
                    Box::new(it.scan(0i64, |acc, x| {
                        *acc += i64::from(x);
                        Some(*acc)
                    }))
                })
                .glom()
                .collect()?;
            let want = map_slices(&data, parts, |s| {
                s.iter()
                    .scan(0i64, |acc, &x| {
                        *acc += i64::from(x);
                        Some(*acc)
                    })
                    .collect::<Vec<_>>()
            });
            prop_assert_eq!(got, want, "{}", mode);
            // Called once for every partition, empty ones included, with its index.
            let got = rdd
                .map_partitions_with_index(|i, it: BoxIter<'_, i32>| Box::new(std::iter::once((i, it.count()))))
                .collect()?;
            let want: Vec<(usize, usize)> = model::slices(&data, parts).iter().map(Vec::len).enumerate().collect();
            prop_assert_eq!(got, want, "{}", mode);
            let got = rdd
                .map_partitions_with(k, |k, i, it: BoxIter<'_, i32>| Box::new(it.map(move |x| (i * *k, x))))
                .collect()?;
            let want: Vec<(usize, i32)> = model::slices(&data, parts)
                .into_iter()
                .enumerate()
                .flat_map(|(i, s)| s.into_iter().map(move |x| (i * k, x)))
                .collect();
            prop_assert_eq!(got, want, "{}", mode);
        }
    });
}

#[test]
fn union_concatenates_partitions() {
    let ctxs = contexts();
    proptest!(config(), |(a in ints(MAX / 2), pa in PARTS, b in ints(MAX / 2), pb in PARTS)| {
        for (mode, ctx) in &ctxs {
            let (ra, rb) = (ctx.parallelize(a.clone(), pa), ctx.parallelize(b.clone(), pb));
            let u = ra.union(&rb);
            prop_assert_eq!(u.num_partitions(), pa + pb, "{}", mode);
            let mut want = model::slices(&a, pa);
            want.extend(model::slices(&b, pb));
            prop_assert_eq!(u.glom().collect()?, want, "{}", mode);
            let all = ctx.union(&[ra.clone(), ctx.empty(), rb.clone(), ra.clone()]);
            prop_assert_eq!(all.num_partitions(), 2 * pa + pb, "{}", mode);
            prop_assert_eq!(all.collect()?, [&a[..], &b[..], &a[..]].concat(), "{}", mode);
        }
    });
}

#[test]
fn zip_pairs_records_or_fails_cleanly() {
    let ctxs = contexts();
    proptest!(config(), |(a in ints(MAX), b in ints(MAX), parts in PARTS)| {
        for (mode, ctx) in &ctxs {
            let ra = ctx.parallelize(a.clone(), parts);
            let zipped = ra.zip(&ra.map(|x| i64::from(x) * 2))?.collect()?;
            prop_assert_eq!(zipped, a.iter().map(|&x| (x, i64::from(x) * 2)).collect::<Vec<_>>(), "{}", mode);
            // Two unrelated inputs zip only when each partition holds as many records on both sides.
            let rb = ctx.parallelize(b.iter().map(|x| x.to_string()).collect::<Vec<_>>(), parts);
            let sizes = |v: &[i32]| model::slices(v, parts).iter().map(Vec::len).collect::<Vec<_>>();
            let same_sizes = sizes(&a) == sizes(&b);
            match ra.zip(&rb)?.collect() {
                Ok(got) => {
                    prop_assert!(same_sizes, "{}: zip of unequal partitions succeeded with {:?}", mode, got);
                    let want: Vec<(i32, String)> = a.iter().copied().zip(b.iter().map(|x| x.to_string())).collect();
                    prop_assert_eq!(got, want, "{}", mode);
                }
                Err(e) => {
                    prop_assert!(!same_sizes, "{}: zip failed: {}", mode, e);
                    prop_assert!(e.to_string().contains("zip"), "{}: unclear error: {}", mode, e);
                }
            }
            let other = ctx.parallelize(b.clone(), parts + 1);
            prop_assert!(matches!(ra.zip(&other), Err(Error::InvalidArgument(_))), "{}", mode);
        }
    });
}

#[test]
fn zip_with_index_numbers_records_in_order() {
    let ctxs = contexts();
    proptest!(config(), |(data in ints(MAX), parts in PARTS)| {
        for (mode, ctx) in &ctxs {
            let got = ctx.parallelize(data.clone(), parts).filter(|x| x % 5 != 0).zip_with_index()?.collect()?;
            let want: Vec<(i32, u64)> = data.iter().copied().filter(|x| x % 5 != 0).zip(0u64..).collect();
            prop_assert_eq!(got, want, "{}", mode);
        }
    });
}

#[test]
fn sample_without_replacement_is_a_deterministic_subsequence() {
    let ctxs = contexts();
    let fraction = prop_oneof![Just(0.0), Just(1.0), 0.0f64..=1.0];
    proptest!(config(), |(data in ints(MAX), parts in PARTS, fraction in fraction, seed in any::<u64>())| {
        let slices = model::slices(&data, parts);
        let mut previous: Option<Vec<Vec<i32>>> = None;
        for (mode, ctx) in &ctxs {
            let rdd = ctx.parallelize(data.clone(), parts);
            let s = rdd.sample(false, fraction, seed)?;
            let got = s.glom().collect()?;
            prop_assert_eq!(&s.glom().collect()?, &got, "{}: recomputing gave another sample", mode);
            prop_assert_eq!(&rdd.sample(false, fraction, seed)?.glom().collect()?, &got, "{}: same seed", mode);
            prop_assert_eq!(got.len(), parts, "{}", mode);
            for (i, (part, slice)) in got.iter().zip(&slices).enumerate() {
                prop_assert!(
                    model::is_subsequence(part, slice),
                    "{}: partition {} {:?} not in {:?}", mode, i, part, slice
                );
            }
            if fraction == 0.0 {
                prop_assert_eq!(got.concat(), Vec::<i32>::new(), "{}", mode);
            }
            if fraction == 1.0 {
                prop_assert_eq!(&got, &slices, "{}", mode);
            }
            if let Some(p) = &previous {
                prop_assert_eq!(p, &got, "the two contexts drew different samples");
            }
            previous = Some(got);
        }
    });
}

#[test]
fn sample_with_replacement_repeats_records_in_order() {
    let ctxs = contexts();
    let fraction = prop_oneof![Just(0.0), 0.0f64..4.0];
    proptest!(config(), |(len in 0usize..=MAX, parts in PARTS, fraction in fraction, seed in any::<u64>())| {
        // Distinct records (their positions), so order and origin are visible.
        let data: Vec<u32> = (0..len as u32).collect();
        let slices = model::slices(&data, parts);
        let mut previous: Option<Vec<Vec<u32>>> = None;
        for (mode, ctx) in &ctxs {
            let rdd = ctx.parallelize(data.clone(), parts);
            let got = rdd.sample(true, fraction, seed)?.glom().collect()?;
            prop_assert_eq!(&rdd.sample(true, fraction, seed)?.glom().collect()?, &got, "{}: same seed", mode);
            for (i, (part, slice)) in got.iter().zip(&slices).enumerate() {
                prop_assert!(model::is_sorted_by(part, true, |x| *x), "{}: partition {} out of order", mode, i);
                prop_assert!(
                    part.iter().all(|x| slice.contains(x)),
                    "{}: partition {} {:?} not from {:?}", mode, i, part, slice
                );
            }
            if fraction == 0.0 {
                prop_assert_eq!(got.concat(), Vec::<u32>::new(), "{}", mode);
            }
            if let Some(p) = &previous {
                prop_assert_eq!(p, &got, "the two contexts drew different samples");
            }
            previous = Some(got);
        }
    });
}

/// Sample sizes over large inputs, within six standard deviations per partition. The sampler is
/// seeded, so with fixed seeds this test is deterministic; the wide bounds keep it valid for any
/// reasonable generator.
#[test]
fn sample_sizes_are_about_right() {
    let ctx = both().into_iter().next().unwrap();
    let (n, parts) = (20_000u32, 4usize);
    let per_part = f64::from(n) / parts as f64;
    let rdd = ctx.parallelize((0..n).collect::<Vec<u32>>(), parts);
    for seed in [0u64, 1, 42, u64::MAX] {
        for p in [0.01, 0.1, 0.5, 0.9] {
            let sizes = rdd.sample(false, p, seed).unwrap().glom().map(|v: Vec<u32>| v.len()).collect().unwrap();
            let bound = 6.0 * (per_part * p * (1.0 - p)).sqrt() + 1.0;
            for (i, &s) in sizes.iter().enumerate() {
                assert!((s as f64 - per_part * p).abs() <= bound, "p={p} seed={seed}: partition {i} kept {s}");
            }
        }
        for lambda in [0.1, 1.0, 3.0] {
            let sizes = rdd.sample(true, lambda, seed).unwrap().glom().map(|v: Vec<u32>| v.len()).collect().unwrap();
            let bound = 6.0 * (per_part * lambda).sqrt() + 1.0;
            for (i, &s) in sizes.iter().enumerate() {
                assert!(
                    (s as f64 - per_part * lambda).abs() <= bound,
                    "lambda={lambda} seed={seed}: partition {i}: {s}"
                );
            }
        }
        // A fraction above the 30 at which Poisson draws are split.
        let small = ctx.parallelize((0..2000u32).collect::<Vec<u32>>(), 4);
        let total = small.sample(true, 40.0, seed).unwrap().count().unwrap() as f64;
        assert!((total - 80_000.0).abs() <= 6.0 * 80_000f64.sqrt(), "lambda=40 seed={seed}: {total}");
        // Kept records are spread over each partition, not bunched at its start.
        let kept = rdd.sample(false, 0.5, seed).unwrap().glom().collect().unwrap();
        for (i, part) in kept.iter().enumerate() {
            let centre = per_part * (i as f64 + 0.5);
            let mean = part.iter().map(|&x| f64::from(x)).sum::<f64>() / part.len() as f64;
            let sd_of_mean = per_part / 12f64.sqrt() / (part.len() as f64).sqrt();
            assert!((mean - centre).abs() <= 6.0 * sd_of_mean, "seed={seed}: partition {i} sample mean {mean}");
        }
        // Partitions draw independently: the kept offsets differ between partitions.
        let offsets: Vec<Vec<u32>> = kept
            .iter()
            .enumerate()
            .map(|(i, part)| part.iter().map(|&x| x - (i as u32) * (n / parts as u32)).collect())
            .collect();
        assert!(offsets.windows(2).all(|w| w[0] != w[1]), "seed={seed}: partitions kept the same offsets");
    }
    let a = rdd.sample(false, 0.5, 1).unwrap().collect().unwrap();
    let b = rdd.sample(false, 0.5, 2).unwrap().collect().unwrap();
    assert_ne!(a, b, "different seeds gave the same sample");
}

#[test]
fn sample_rejects_bad_fractions() {
    let ctx = both().into_iter().next().unwrap();
    let rdd = ctx.parallelize(vec![1, 2, 3], 2);
    for (with_replacement, fraction) in
        [(false, -0.1), (false, 1.5), (false, f64::NAN), (true, -1.0), (true, f64::INFINITY), (true, f64::NAN)]
    {
        let res = rdd.sample(with_replacement, fraction, 7);
        assert!(
            matches!(res, Err(Error::InvalidArgument(_))),
            "sample({with_replacement}, {fraction}) gave {:?}",
            res.map(|r| r.num_partitions())
        );
    }
    assert_eq!(rdd.sample(true, 0.0, 7).unwrap().count().unwrap(), 0);
}

#[test]
fn distinct_removes_duplicates() {
    let ctxs = contexts();
    proptest!(config(), |(data in ints(MAX), parts in PARTS, sp in shuffle_parts())| {
        for (mode, ctx) in &ctxs {
            let out = ctx.parallelize(data.clone(), parts).distinct(sp);
            prop_assert_eq!(out.num_partitions(), sp.unwrap_or(parts), "{}", mode);
            prop_assert_eq!(sorted(out.collect()?), model::distinct(&data), "{}", mode);
        }
    });
}

#[test]
fn coalesce_without_shuffle_merges_consecutive_partitions() {
    let ctxs = contexts();
    proptest!(config(), |(data in ints(MAX), parts in PARTS, n in 0usize..=10)| {
        let tagged: Vec<(usize, i32)> = model::slices(&data, parts)
            .into_iter()
            .enumerate()
            .flat_map(|(i, s)| s.into_iter().map(move |x| (i, x)))
            .collect();
        for (mode, ctx) in &ctxs {
            let out = ctx
                .parallelize(data.clone(), parts)
                .map_partitions_with_index(|i, it: BoxIter<'_, i32>| Box::new(it.map(move |x| (i, x))))
                .coalesce(n, false);
            prop_assert_eq!(out.num_partitions(), n.max(1).min(parts), "{}", mode);
            let got = out.glom().collect()?;
            prop_assert_eq!(got.concat(), tagged.clone(), "{}: order must be kept", mode);
            // No parent partition is split between two output partitions.
            let mut owner: BTreeMap<usize, usize> = BTreeMap::new();
            for (j, part) in got.iter().enumerate() {
                for (i, _) in part {
                    prop_assert_eq!(*owner.entry(*i).or_insert(j), j, "{}: parent {} split", mode, i);
                }
            }
        }
    });
}

#[test]
fn coalesce_with_shuffle_and_repartition_spread_records_evenly() {
    let ctxs = contexts();
    proptest!(config(), |(data in ints(MAX), parts in PARTS, n in 0usize..=10, shuffle_via_coalesce in any::<bool>())| {
        let n_out = n.max(1);
        // Each input partition deals its records round-robin over the outputs.
        let sizes: Vec<usize> = model::slices(&data, parts).iter().map(Vec::len).collect();
        let lo: usize = sizes.iter().map(|s| s / n_out).sum();
        let hi: usize = sizes.iter().map(|s| s.div_ceil(n_out)).sum();
        for (mode, ctx) in &ctxs {
            let rdd = ctx.parallelize(data.clone(), parts);
            let out = if shuffle_via_coalesce { rdd.coalesce(n, true) } else { rdd.repartition(n) };
            prop_assert_eq!(out.num_partitions(), n_out, "{}", mode);
            let got = out.glom().collect()?;
            prop_assert_eq!(sorted(got.concat()), sorted(data.clone()), "{}", mode);
            for (j, part) in got.iter().enumerate() {
                prop_assert!(
                    lo <= part.len() && part.len() <= hi,
                    "{}: partition {} holds {} (want {}..={})", mode, j, part.len(), lo, hi
                );
            }
        }
    });
}

#[test]
fn cartesian_pairs_every_partition_with_every_partition() {
    let ctxs = contexts();
    proptest!(config(), |(a in ints(20), pa in 1usize..=4, b in ints(20), pb in 1usize..=4)| {
        let (sa, sb) = (model::slices(&a, pa), model::slices(&b, pb));
        // Partition i * pb + j pairs partition i of `a` with partition j of `b`.
        let want: Vec<Vec<(i32, String)>> = sa
            .iter()
            .flat_map(|x| sb.iter().map(move |y| (x, y)))
            .map(|(x, y)| x.iter().flat_map(|&u| y.iter().map(move |v| (u, v.to_string()))).collect())
            .collect();
        for (mode, ctx) in &ctxs {
            let rb = ctx.parallelize(b.iter().map(|x| x.to_string()).collect::<Vec<_>>(), pb);
            let out = ctx.parallelize(a.clone(), pa).cartesian(&rb).unwrap();
            prop_assert_eq!(out.num_partitions(), pa * pb, "{}", mode);
            prop_assert_eq!(out.glom().collect()?, want.clone(), "{}", mode);
        }
    });
}

#[test]
fn key_by_pairs_each_record_with_its_key() {
    let ctxs = contexts();
    proptest!(config(), |(data in ints(MAX), parts in PARTS)| {
        for (mode, ctx) in &ctxs {
            let got = ctx.parallelize(data.clone(), parts).key_by(|x| x.rem_euclid(7)).collect()?;
            prop_assert_eq!(got, data.iter().map(|&x| (x.rem_euclid(7), x)).collect::<Vec<_>>(), "{}", mode);
        }
    });
}

#[test]
fn sort_by_orders_globally() {
    let ctxs = contexts();
    proptest!(config(), |(data in ints(MAX), parts in PARTS, sp in shuffle_parts(), asc in any::<bool>())| {
        for (mode, ctx) in &ctxs {
            // Few distinct sort keys: many ties.
            let out = ctx.parallelize(data.clone(), parts).sort_by(|x| x.rem_euclid(10), asc, sp)?;
            let n = out.num_partitions();
            prop_assert!(n >= 1 && n <= sp.unwrap_or(parts), "{}: {} partitions", mode, n);
            let got = out.collect()?;
            prop_assert!(model::is_sorted_by(&got, asc, |x| x.rem_euclid(10)), "{}: not sorted: {:?}", mode, got);
            prop_assert_eq!(sorted(got), sorted(data.clone()), "{}", mode);
        }
    });
}

// ---- key/value transformations --------------------------------------------------------------

#[test]
fn map_values_flat_map_values_keys_and_values() {
    let ctxs = contexts();
    proptest!(config(), |(data in pairs(MAX), parts in PARTS)| {
        for (mode, ctx) in &ctxs {
            let rdd = ctx.parallelize(data.clone(), parts);
            let got = rdd.map_values(|v| i64::from(v) - 1).collect()?;
            prop_assert_eq!(got, data.iter().map(|&(k, v)| (k, i64::from(v) - 1)).collect::<Vec<_>>(), "{}", mode);
            let got = rdd.flat_map_values(|v: i32| 0..v.rem_euclid(3)).glom().collect()?;
            let want = map_slices(&data, parts, |s| {
                s.into_iter().flat_map(|(k, v)| (0..v.rem_euclid(3)).map(move |w| (k, w))).collect::<Vec<_>>()
            });
            prop_assert_eq!(got, want, "{}", mode);
            prop_assert_eq!(rdd.keys().collect()?, data.iter().map(|kv| kv.0).collect::<Vec<_>>(), "{}", mode);
            prop_assert_eq!(rdd.values().collect()?, data.iter().map(|kv| kv.1).collect::<Vec<_>>(), "{}", mode);
        }
    });
}

#[test]
fn reduce_by_key_sums_each_key_once_in_its_hash_partition() {
    let ctxs = contexts();
    proptest!(config(), |(data in pairs(MAX), parts in PARTS, sp in shuffle_parts())| {
        let want: Vec<(u32, i64)> = model::group(&data).into_iter().map(|(k, vs)| (k, sum_i64(&vs))).collect();
        for (mode, ctx) in &ctxs {
            let out = ctx.parallelize(data.clone(), parts).map_values(i64::from).reduce_by_key(|a, b| a + b, sp);
            let n = sp.unwrap_or(parts);
            prop_assert_eq!(out.num_partitions(), n, "{}", mode);
            let got = out.glom().collect()?;
            let hp = HashPartitioner::<u32>::new(n);
            prop_assert_eq!(misplaced(&got, |k| hp.partition(k)), vec![], "{}: (partition, expected, key)", mode);
            prop_assert_eq!(sorted(got.concat()), want.clone(), "{}", mode);
        }
    });
}

#[test]
fn fold_by_key_applies_zero_once_per_key_and_input_partition() {
    let ctxs = contexts();
    proptest!(config(), |(data in pairs(MAX), parts in PARTS, sp in shuffle_parts(), zero in -3i64..=3)| {
        // The zero starts each key's fold in every input partition holding that key.
        let slices = model::slices(&data, parts);
        let want: Vec<(u32, i64)> = model::group(&data)
            .into_iter()
            .map(|(k, vs)| {
                let holders = slices.iter().filter(|s| s.iter().any(|kv| kv.0 == k)).count() as i64;
                (k, sum_i64(&vs) + zero * holders)
            })
            .collect();
        let want_max: Vec<(u32, i32)> =
            model::group(&data).into_iter().map(|(k, vs)| (k, vs.into_iter().max().unwrap())).collect();
        for (mode, ctx) in &ctxs {
            let rdd = ctx.parallelize(data.clone(), parts);
            let got = rdd.map_values(i64::from).fold_by_key(zero, |a, b| a + b, sp).collect()?;
            prop_assert_eq!(sorted(got), want.clone(), "{}", mode);
            let got = rdd.fold_by_key(i32::MIN, std::cmp::max, sp).collect()?;
            prop_assert_eq!(sorted(got), want_max.clone(), "{}", mode);
        }
    });
}

#[test]
fn aggregate_by_key_sees_every_value_once() {
    let ctxs = contexts();
    proptest!(config(), |(data in pairs(MAX), parts in PARTS, sp in shuffle_parts())| {
        let groups = model::sorted_groups(model::group(&data));
        let want_stats: Vec<(u32, (i64, u64))> =
            groups.iter().map(|(k, vs)| (*k, (sum_i64(vs), vs.len() as u64))).collect();
        for (mode, ctx) in &ctxs {
            let rdd = ctx.parallelize(data.clone(), parts);
            let out = rdd.aggregate_by_key(
                Vec::new(),
                |mut acc: Vec<i32>, v| {
                    acc.push(v);
                    acc
                },
                |mut a, b| {
                    a.extend(b);
                    a
                },
                sp,
            );
            prop_assert_eq!(out.num_partitions(), sp.unwrap_or(parts), "{}", mode);
            prop_assert_eq!(model::sorted_groups(out.collect()?), groups.clone(), "{}", mode);
            let got = rdd
                .aggregate_by_key(
                    (0i64, 0u64),
                    |(s, c), v| (s + i64::from(v), c + 1),
                    |a, b| (a.0 + b.0, a.1 + b.1),
                    sp,
                )
                .collect()?;
            prop_assert_eq!(sorted(got), want_stats.clone(), "{}", mode);
        }
    });
}

#[test]
fn combine_by_key_sees_every_value_once() {
    let ctxs = contexts();
    proptest!(config(), |(data in pairs(MAX), parts in PARTS, sp in shuffle_parts())| {
        let groups = model::sorted_groups(model::group(&data));
        let want_range: Vec<(u32, (i32, i32))> =
            groups.iter().map(|(k, vs)| (*k, (vs[0], vs[vs.len() - 1]))).collect();
        for (mode, ctx) in &ctxs {
            let rdd = ctx.parallelize(data.clone(), parts);
            let out = rdd.combine_by_key(
                |v| vec![v],
                |mut c: Vec<i32>, v| {
                    c.push(v);
                    c
                },
                |mut a, b| {
                    a.extend(b);
                    a
                },
                sp,
            );
            prop_assert_eq!(out.num_partitions(), sp.unwrap_or(parts), "{}", mode);
            prop_assert_eq!(model::sorted_groups(out.collect()?), groups.clone(), "{}", mode);
            let got = rdd
                .combine_by_key(
                    |v| (v, v),
                    |(lo, hi), v| (lo.min(v), hi.max(v)),
                    |a, b| (a.0.min(b.0), a.1.max(b.1)),
                    sp,
                )
                .collect()?;
            prop_assert_eq!(sorted(got), want_range.clone(), "{}", mode);
        }
    });
}

#[test]
fn group_by_key_groups_every_value_in_its_hash_partition() {
    let ctxs = contexts();
    proptest!(config(), |(data in pairs(MAX), parts in PARTS, sp in shuffle_parts())| {
        let groups = model::sorted_groups(model::group(&data));
        for (mode, ctx) in &ctxs {
            let out = ctx.parallelize(data.clone(), parts).group_by_key(sp);
            let n = sp.unwrap_or(parts);
            prop_assert_eq!(out.num_partitions(), n, "{}", mode);
            let got = out.glom().collect()?;
            let hp = HashPartitioner::<u32>::new(n);
            prop_assert_eq!(misplaced(&got, |k| hp.partition(k)), vec![], "{}: (partition, expected, key)", mode);
            let flat = got.concat();
            prop_assert_eq!(flat.len(), groups.len(), "{}: a key appears twice", mode);
            prop_assert_eq!(model::sorted_groups(flat), groups.clone(), "{}", mode);
        }
    });
}

#[test]
fn partition_by_hash_places_each_record_where_the_partitioner_says() {
    let ctxs = contexts();
    proptest!(config(), |(data in pairs(MAX), parts in PARTS, n in 1usize..=6)| {
        for (mode, ctx) in &ctxs {
            let rdd = ctx.parallelize(data.clone(), parts);
            let expected = |k: &u32| (stable_hash(k) % n as u64) as usize;
            check_partition_by(mode, &rdd, &data, HashPartitioner::<u32>::new(n), expected)?;
        }
    });
}

#[test]
fn partition_by_range_places_each_record_where_the_partitioner_says() {
    let ctxs = contexts();
    proptest!(config(), |(data in pairs(MAX), parts in PARTS, bounds in range_bounds(), asc in any::<bool>())| {
        for (mode, ctx) in &ctxs {
            let rdd = ctx.parallelize(data.clone(), parts);
            let p = RangePartitioner::new(bounds.clone(), asc);
            check_partition_by(mode, &rdd, &data, p, |k| range_partition(&bounds, asc, k))?;
        }
    });
}

#[test]
fn partition_by_index_places_each_record_where_the_partitioner_says() {
    let ctxs = contexts();
    proptest!(config(), |(data in pairs(MAX), parts in PARTS, n in 1usize..=6)| {
        for (mode, ctx) in &ctxs {
            let rdd = ctx.parallelize(data.clone(), parts);
            check_partition_by(mode, &rdd, &data, IndexPartitioner::new(n), |k| *k as usize % n)?;
        }
    });
}

#[test]
fn reduce_by_key_with_uses_the_given_partitioner() {
    let ctxs = contexts();
    let input = (pairs(MAX), PARTS, 1usize..=6, range_bounds(), any::<bool>());
    proptest!(config(), |((data, parts, n, bounds, asc) in input)| {
        for (mode, ctx) in &ctxs {
            let rdd = ctx.parallelize(data.clone(), parts);
            let hash = |k: &u32| (stable_hash(k) % n as u64) as usize;
            check_reduce_by_key_with(mode, &rdd, &data, HashPartitioner::<u32>::new(n), hash)?;
            check_reduce_by_key_with(mode, &rdd, &data, IndexPartitioner::new(n), |k| *k as usize % n)?;
            let range = RangePartitioner::new(bounds.clone(), asc);
            check_reduce_by_key_with(mode, &rdd, &data, range, |k| range_partition(&bounds, asc, k))?;
        }
    });
}

#[test]
fn joins_match_model() {
    let ctxs = contexts();
    proptest!(config(), |((l, r) in join_sides(60), pl in PARTS, pr in PARTS, sp in shuffle_parts())| {
        let n = sp.unwrap_or(pl.max(pr));
        for (mode, ctx) in &ctxs {
            let (rl, rr) = (ctx.parallelize(l.clone(), pl), ctx.parallelize(r.clone(), pr));
            let inner = rl.join(&rr, sp);
            prop_assert_eq!(inner.num_partitions(), n, "{}", mode);
            prop_assert_eq!(sorted(inner.collect()?), model::join(&l, &r), "{}: join", mode);
            let left = rl.left_outer_join(&rr, sp);
            prop_assert_eq!(left.num_partitions(), n, "{}", mode);
            prop_assert_eq!(sorted(left.collect()?), model::left_outer_join(&l, &r), "{}: left", mode);
            let right = rl.right_outer_join(&rr, sp);
            prop_assert_eq!(right.num_partitions(), n, "{}", mode);
            prop_assert_eq!(sorted(right.collect()?), model::right_outer_join(&l, &r), "{}: right", mode);
            let full = rl.full_outer_join(&rr, sp);
            prop_assert_eq!(full.num_partitions(), n, "{}", mode);
            prop_assert_eq!(sorted(full.collect()?), model::full_outer_join(&l, &r), "{}: full", mode);
        }
    });
}

#[test]
fn cogroup_and_subtract_by_key_match_model() {
    let ctxs = contexts();
    proptest!(config(), |((l, r) in join_sides(MAX / 2), pl in PARTS, pr in PARTS, sp in shuffle_parts())| {
        let n = sp.unwrap_or(pl.max(pr));
        // The right side has other value types: strings.
        let rs: Vec<(u32, String)> = r.iter().map(|(k, v)| (*k, v.to_string())).collect();
        for (mode, ctx) in &ctxs {
            let (rl, rr) = (ctx.parallelize(l.clone(), pl), ctx.parallelize(rs.clone(), pr));
            let cg = rl.cogroup(&rr, sp);
            prop_assert_eq!(cg.num_partitions(), n, "{}", mode);
            let got = cg.collect()?;
            prop_assert_eq!(got.len(), model::cogroup(&l, &rs).len(), "{}: a key appears twice", mode);
            let got: BTreeMap<u32, (Vec<i32>, Vec<String>)> =
                got.into_iter().map(|(k, (vs, ws))| (k, (sorted(vs), sorted(ws)))).collect();
            prop_assert_eq!(got, model::cogroup(&l, &rs), "{}: cogroup", mode);
            let sub = rl.subtract_by_key(&rr, sp);
            prop_assert_eq!(sub.num_partitions(), n, "{}", mode);
            prop_assert_eq!(sorted(sub.collect()?), model::subtract_by_key(&l, &rs), "{}: subtract_by_key", mode);
        }
    });
}

#[test]
fn sort_by_key_orders_globally_and_keeps_every_record() {
    let ctxs = contexts();
    proptest!(config(), |(data in pairs(MAX), parts in PARTS, sp in shuffle_parts(), asc in any::<bool>())| {
        for (mode, ctx) in &ctxs {
            let out = ctx.parallelize(data.clone(), parts).sort_by_key(asc, sp)?;
            let n = out.num_partitions();
            // Range bounds come from distinct sampled keys, so there may be fewer partitions.
            prop_assert!(n >= 1 && n <= sp.unwrap_or(parts), "{}: {} partitions", mode, n);
            let got = out.collect()?;
            prop_assert!(model::is_sorted_by(&got, asc, |kv| kv.0), "{}: not sorted: {:?}", mode, got);
            prop_assert_eq!(sorted(got), sorted(data.clone()), "{}", mode);
        }
    });
}

#[test]
fn sort_within_partitions_sorts_each_partition_in_place() {
    let ctxs = contexts();
    proptest!(config(), |(data in pairs(MAX), parts in PARTS, asc in any::<bool>())| {
        let slices = model::slices(&data, parts);
        for (mode, ctx) in &ctxs {
            let out = ctx.parallelize(data.clone(), parts).sort_within_partitions(asc);
            prop_assert_eq!(out.num_partitions(), parts, "{}", mode);
            let got = out.glom().collect()?;
            prop_assert_eq!(got.len(), parts, "{}", mode);
            for (i, (part, slice)) in got.into_iter().zip(&slices).enumerate() {
                prop_assert!(model::is_sorted_by(&part, asc, |kv| kv.0), "{}: partition {} not sorted", mode, i);
                prop_assert_eq!(sorted(part), sorted(slice.clone()), "{}: partition {}", mode, i);
            }
        }
    });
}

// ---- actions --------------------------------------------------------------------------------

#[test]
fn collect_count_first_take_and_is_empty() {
    let ctxs = contexts();
    proptest!(config(), |(data in ints(MAX), parts in PARTS, n in any::<Index>())| {
        let n = n.index(data.len() + 6);
        for (mode, ctx) in &ctxs {
            let rdd = ctx.parallelize(data.clone(), parts);
            prop_assert_eq!(rdd.collect()?, data.clone(), "{}", mode);
            prop_assert_eq!(rdd.count()?, data.len() as u64, "{}", mode);
            prop_assert_eq!(rdd.first()?, data.first().copied(), "{}", mode);
            prop_assert_eq!(rdd.take(n)?, data[..n.min(data.len())].to_vec(), "{}: take({})", mode, n);
            prop_assert_eq!(rdd.take(data.len())?, data.clone(), "{}", mode);
            prop_assert_eq!(rdd.is_empty()?, data.is_empty(), "{}", mode);
        }
    });
}

#[test]
fn take_scans_past_many_empty_partitions() {
    let ctxs = contexts();
    proptest!(config(), |(len in 0usize..=4, parts in 1usize..=40, n in 0usize..=6)| {
        let data: Vec<i32> = (0..len as i32).collect();
        for (mode, ctx) in &ctxs {
            let rdd = ctx.parallelize(data.clone(), parts);
            prop_assert_eq!(rdd.take(n)?, data[..n.min(len)].to_vec(), "{}: take({})", mode, n);
            prop_assert_eq!(rdd.first()?, data.first().copied(), "{}", mode);
            prop_assert_eq!(rdd.is_empty()?, len == 0, "{}", mode);
            // Only the last record survives: every partition before it is empty.
            let last = rdd.filter_with(len as i32 - 1, |last, x| x == last);
            let want: Vec<i32> = data.last().filter(|_| n > 0).copied().into_iter().collect();
            prop_assert_eq!(last.take(n)?, want, "{}", mode);
            prop_assert_eq!(last.is_empty()?, len == 0, "{}", mode);
            prop_assert_eq!(rdd.filter(|_| false).take(n)?, vec![], "{}", mode);
        }
    });
}

#[test]
fn top_and_take_ordered() {
    let ctxs = contexts();
    proptest!(config(), |(data in ints(MAX), parts in PARTS, n in any::<Index>())| {
        let n = n.index(data.len() + 4);
        let asc = sorted(data.clone());
        let desc: Vec<i32> = asc.iter().rev().copied().collect();
        for (mode, ctx) in &ctxs {
            let rdd = ctx.parallelize(data.clone(), parts);
            prop_assert_eq!(rdd.top(n)?, desc[..n.min(desc.len())].to_vec(), "{}: top({})", mode, n);
            prop_assert_eq!(rdd.take_ordered(n)?, asc[..n.min(asc.len())].to_vec(), "{}: take_ordered({})", mode, n);
        }
    });
}

#[test]
fn reduce_fold_and_aggregate() {
    let ctxs = contexts();
    proptest!(config(), |(data in ints(MAX), parts in PARTS, zero in -3i64..=3)| {
        let sum = sum_i64(&data);
        let wrapping = data.iter().copied().reduce(i32::wrapping_add);
        for (mode, ctx) in &ctxs {
            let rdd = ctx.parallelize(data.clone(), parts);
            prop_assert_eq!(rdd.reduce(i32::wrapping_add)?, wrapping, "{}", mode);
            let wide = rdd.map(i64::from);
            // Spark's fold: the zero starts every partition and the final merge.
            prop_assert_eq!(wide.fold(zero, |a, b| a + b)?, sum + zero * (parts as i64 + 1), "{}", mode);
            prop_assert_eq!(wide.fold(0, |a, b| a + b)?, sum, "{}", mode);
            let got =
                rdd.aggregate((0i64, 0u64), |(s, c), x| (s + i64::from(x), c + 1), |a, b| (a.0 + b.0, a.1 + b.1))?;
            prop_assert_eq!(got, (sum, data.len() as u64), "{}", mode);
            let got = rdd.aggregate(
                Vec::new(),
                |mut v: Vec<i32>, x| {
                    v.push(x);
                    v
                },
                |mut a, b| {
                    a.extend(b);
                    a
                },
            )?;
            prop_assert_eq!(sorted(got), sorted(data.clone()), "{}", mode);
        }
    });
}

#[test]
fn foreach_and_foreach_with_see_every_record_once() {
    static SEEN: AtomicI64 = AtomicI64::new(0);
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let ctxs = contexts();
    proptest!(config(), |(data in ints(MAX), parts in PARTS)| {
        for (mode, ctx) in &ctxs {
            let rdd = ctx.parallelize(data.clone(), parts);
            let acc = ctx.long_accumulator();
            rdd.foreach_with(acc.clone(), |acc, x| acc.add(i64::from(x)))?;
            prop_assert_eq!(acc.value()?, sum_i64(&data), "{}", mode);
            SEEN.store(0, Ordering::SeqCst);
            CALLS.store(0, Ordering::SeqCst);
            rdd.foreach(|x| {
                SEEN.fetch_add(i64::from(x), Ordering::SeqCst);
                CALLS.fetch_add(1, Ordering::SeqCst);
            })?;
            // Tasks in executor processes change those processes' statics, not the driver's:
            // the statics show effects only where tasks run in this process.
            if !ctx.settings().master.is_cluster() {
                prop_assert_eq!(SEEN.load(Ordering::SeqCst), sum_i64(&data), "{}", mode);
                prop_assert_eq!(CALLS.load(Ordering::SeqCst), data.len() as u64, "{}", mode);
            }
        }
    });
}

#[test]
fn foreach_partition_sees_every_partition_once() {
    static PARTITIONS: AtomicU64 = AtomicU64::new(0);
    static RECORDS: AtomicU64 = AtomicU64::new(0);
    let ctxs = contexts();
    proptest!(config(), |(data in ints(MAX), parts in PARTS)| {
        for (mode, ctx) in &ctxs {
            let rdd = ctx.parallelize(data.clone(), parts);
            let acc = ctx.long_accumulator();
            rdd.foreach_partition_with(acc.clone(), |acc, it| acc.add(it.map(i64::from).sum()))?;
            prop_assert_eq!(acc.value()?, sum_i64(&data), "{}", mode);
            let calls = ctx.long_accumulator();
            rdd.foreach_partition_with(calls.clone(), |calls, _| calls.add(1))?;
            prop_assert_eq!(calls.value()?, parts as i64, "{}: partitions seen", mode);
            PARTITIONS.store(0, Ordering::SeqCst);
            RECORDS.store(0, Ordering::SeqCst);
            rdd.foreach_partition(|it| {
                PARTITIONS.fetch_add(1, Ordering::SeqCst);
                RECORDS.fetch_add(it.count() as u64, Ordering::SeqCst);
            })?;
            // Tasks in executor processes change those processes' statics, not the driver's.
            if !ctx.settings().master.is_cluster() {
                prop_assert_eq!(PARTITIONS.load(Ordering::SeqCst), parts as u64, "{}", mode);
                prop_assert_eq!(RECORDS.load(Ordering::SeqCst), data.len() as u64, "{}", mode);
            }
        }
    });
}

#[test]
fn count_by_key_count_by_value_and_count_per_key() {
    let ctxs = contexts();
    proptest!(config(), |(data in pairs(MAX), parts in PARTS, sp in shuffle_parts())| {
        let keys: Vec<u32> = data.iter().map(|kv| kv.0).collect();
        let want_keys = model::counts(&keys);
        let want_values = model::counts(&data);
        for (mode, ctx) in &ctxs {
            let rdd = ctx.parallelize(data.clone(), parts);
            let got: BTreeMap<u32, u64> = rdd.count_by_key()?.into_iter().collect();
            prop_assert_eq!(&got, &want_keys, "{}: count_by_key", mode);
            let got: BTreeMap<(u32, i32), u64> = rdd.count_by_value()?.into_iter().collect();
            prop_assert_eq!(&got, &want_values, "{}: count_by_value", mode);
            let per_key = rdd.count_per_key(sp);
            prop_assert_eq!(per_key.num_partitions(), sp.unwrap_or(parts), "{}", mode);
            let got: BTreeMap<u32, u64> = per_key.collect()?.into_iter().collect();
            prop_assert_eq!(&got, &want_keys, "{}: count_per_key", mode);
        }
    });
}

#[test]
fn lookup_finds_every_value_of_a_key() {
    let ctxs = contexts();
    proptest!(config(), |(data in pairs(MAX), parts in PARTS, pick in any::<Index>(), absent in any::<bool>())| {
        // A key of the input (the hot one, often), or one that is surely absent.
        let key = if absent || data.is_empty() { u32::MAX } else { data[pick.index(data.len())].0 };
        let want = sorted(data.iter().filter(|kv| kv.0 == key).map(|kv| kv.1).collect());
        for (mode, ctx) in &ctxs {
            let got = ctx.parallelize(data.clone(), parts).lookup(key)?;
            prop_assert_eq!(sorted(got), want.clone(), "{}: lookup({})", mode, key);
        }
    });
}

#[test]
fn min_max_sum_mean_and_stats() {
    let ctxs = contexts();
    proptest!(config(), |(data in ints(MAX), parts in PARTS)| {
        let xs: Vec<f64> = data.iter().map(|&x| f64::from(x)).collect();
        let scale = xs.iter().fold(1.0f64, |m, x| m.max(x.abs()));
        for (mode, ctx) in &ctxs {
            let rdd = ctx.parallelize(data.clone(), parts);
            prop_assert_eq!(rdd.min()?, data.iter().copied().min(), "{}", mode);
            prop_assert_eq!(rdd.max()?, data.iter().copied().max(), "{}", mode);
            // Integer sums below 2^53 are exact in f64.
            prop_assert_eq!(rdd.sum()?, sum_i64(&data) as f64, "{}", mode);
            let s = rdd.stats()?;
            prop_assert_eq!(s.count, data.len() as u64, "{}", mode);
            prop_assert_eq!(s.sum, sum_i64(&data) as f64, "{}", mode);
            if data.is_empty() {
                prop_assert!(rdd.mean()?.is_nan(), "{}", mode);
                prop_assert!(s.variance().is_nan() && s.sample_variance().is_nan(), "{}", mode);
                prop_assert_eq!((s.min, s.max), (f64::INFINITY, f64::NEG_INFINITY), "{}", mode);
                continue;
            }
            let (mean, var) = model::mean_variance(&xs);
            prop_assert_eq!(s.min, xs.iter().copied().fold(f64::INFINITY, f64::min), "{}", mode);
            prop_assert_eq!(s.max, xs.iter().copied().fold(f64::NEG_INFINITY, f64::max), "{}", mode);
            prop_assert!((rdd.mean()? - mean).abs() <= 1e-9 * scale, "{}: mean {} vs {}", mode, rdd.mean()?, mean);
            prop_assert!((s.mean - mean).abs() <= 1e-9 * scale, "{}: mean {} vs {}", mode, s.mean, mean);
            let var_tol = 1e-9 * scale * scale;
            prop_assert!((s.variance() - var).abs() <= var_tol, "{}: variance {} vs {}", mode, s.variance(), var);
            prop_assert!((s.stdev() - var.sqrt()).abs() <= 1e-6 * scale, "{}: stdev {}", mode, s.stdev());
            let n = xs.len() as f64;
            if xs.len() > 1 {
                let sample_var = var * n / (n - 1.0);
                prop_assert!((s.sample_variance() - sample_var).abs() <= var_tol, "{}: sample variance", mode);
            } else {
                prop_assert!(s.sample_variance().is_nan(), "{}", mode);
            }
            prop_assert!(model::close(rdd.map(i64::from).mean()?, mean), "{}", mode);
        }
    });
}

#[test]
fn collect_as_map_keeps_the_last_value_of_each_key() {
    let ctxs = contexts();
    proptest!(config(), |(data in pairs(MAX), parts in PARTS)| {
        let want: HashMap<u32, i32> = data.iter().copied().collect();
        for (mode, ctx) in &ctxs {
            prop_assert_eq!(ctx.parallelize(data.clone(), parts).collect_as_map()?, want.clone(), "{}", mode);
        }
    });
}

#[test]
fn actions_on_a_shuffled_rdd_agree_with_its_collect() {
    let ctxs = contexts();
    proptest!(config(), |(data in pairs(MAX), parts in PARTS, sp in shuffle_parts(), n in any::<Index>())| {
        let want: Vec<(u32, i64)> = model::group(&data).into_iter().map(|(k, vs)| (k, sum_i64(&vs))).collect();
        let n = n.index(want.len() + 3);
        for (mode, ctx) in &ctxs {
            // One shuffle, read by several jobs (its map stage is reused). Reduce-side order is
            // not specified, so only contents are compared.
            let sums = ctx.parallelize(data.clone(), parts).map_values(i64::from).reduce_by_key(|a, b| a + b, sp);
            prop_assert_eq!(sorted(sums.collect()?), want.clone(), "{}", mode);
            prop_assert_eq!(sums.count()?, want.len() as u64, "{}", mode);
            let taken = sums.take(n)?;
            prop_assert_eq!(taken.len(), n.min(want.len()), "{}: take({})", mode, n);
            prop_assert!(taken.iter().all(|kv| want.contains(kv)), "{}: take gave {:?}", mode, taken);
            prop_assert_eq!(model::distinct(&taken).len(), taken.len(), "{}: take repeated a record", mode);
            prop_assert_eq!(sums.first()?.is_some(), !want.is_empty(), "{}", mode);
            prop_assert_eq!(sums.is_empty()?, want.is_empty(), "{}", mode);
            let indexed = sums.zip_with_index()?.collect()?;
            let indexes: Vec<u64> = indexed.iter().map(|r| r.1).collect();
            prop_assert_eq!(indexes, (0..want.len() as u64).collect::<Vec<_>>(), "{}", mode);
            prop_assert_eq!(sorted(indexed.into_iter().map(|r| r.0).collect()), want.clone(), "{}", mode);
            let mut top: Vec<(u32, i64)> = want.clone();
            top.sort_by(|a, b| b.cmp(a));
            top.truncate(n);
            prop_assert_eq!(sums.top(n)?, top, "{}", mode);
        }
    });
}

#[test]
fn chains_of_narrow_and_shuffle_operators_match_model() {
    let ctxs = contexts();
    proptest!(config(), |(data in pairs(MAX), parts in PARTS, sp1 in shuffle_parts(), sp2 in shuffle_parts())| {
        // Sum per key, bucket keys by their sum, count keys per bucket, join the counts back to
        // the sums, sort by bucket descending.
        let sums: Vec<(u32, i64)> = model::group(&data).into_iter().map(|(k, vs)| (k, sum_i64(&vs))).collect();
        let bucket = |s: i64| s.rem_euclid(5) as u32;
        let sizes = model::counts(&sums.iter().map(|&(_, s)| bucket(s)).collect::<Vec<_>>());
        let want: Vec<(u32, (u64, i64))> =
            sorted(sums.iter().map(|&(_, s)| (bucket(s), (sizes[&bucket(s)], s))).collect());
        for (mode, ctx) in &ctxs {
            let sums = ctx
                .parallelize(data.clone(), parts)
                .filter(|_| true)
                .map_values(i64::from)
                .reduce_by_key(|a, b| a + b, sp1);
            let by_bucket = sums.map(|(_, s)| (s.rem_euclid(5) as u32, s));
            let sizes = by_bucket.group_by_key(sp2).map_values(|ss: Vec<i64>| ss.len() as u64);
            let out = sizes.join(&by_bucket, None).sort_by_key(false, sp2)?;
            let got = out.collect()?;
            prop_assert!(model::is_sorted_by(&got, false, |r| r.0), "{}: not sorted: {:?}", mode, got);
            prop_assert_eq!(sorted(got), want.clone(), "{}", mode);
        }
    });
}

// ---- plain regression checks ----------------------------------------------------------------

#[test]
fn zip_rejects_unequal_partitioning() {
    for (mode, ctx) in contexts() {
        let a = ctx.parallelize((0..6).collect::<Vec<i32>>(), 2);
        let err = a.zip(&ctx.parallelize((0..6).collect::<Vec<i32>>(), 3)).unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(_)) && err.to_string().contains("2 and 3"), "{mode}: {err}");
        // Same partition count, different sizes: the job fails instead of dropping records.
        let err = a.zip(&ctx.parallelize((0..7).collect::<Vec<i32>>(), 2)).unwrap().collect().unwrap_err();
        assert!(err.to_string().contains("different numbers of elements"), "{mode}: {err}");
    }
}

#[test]
fn default_shuffle_partitions_follow_the_conf() {
    let conf = ember_core::EmberConf::new()
        .master("local[2]")
        .and_then(|c| c.set("ember.shuffle.partitions", "3"))
        .and_then(|c| c.set("ember.ui.showConsoleProgress", "false"))
        .unwrap();
    let ctx = Context::new(conf).unwrap();
    let data: Vec<(u32, i32)> = (0..40).map(|i| (i % 7, i as i32)).collect();
    let rdd = ctx.parallelize(data.clone(), 5);
    let other = ctx.parallelize(data.clone(), 8);
    let want = model::group(&data).into_iter().map(|(k, vs)| (k, sum_i64(&vs))).collect::<Vec<_>>();
    let sums = rdd.map_values(i64::from).reduce_by_key(|a, b| a + b, None);
    assert_eq!(sums.num_partitions(), 3);
    assert_eq!(sorted(sums.collect().unwrap()), want);
    assert_eq!(rdd.group_by_key(None).num_partitions(), 3);
    assert_eq!(rdd.distinct(None).num_partitions(), 3);
    assert_eq!(rdd.count_per_key(None).num_partitions(), 3);
    let joined = rdd.join(&other, None);
    assert_eq!(joined.num_partitions(), 3);
    assert_eq!(sorted(joined.collect().unwrap()), model::join(&data, &data));
    // An explicit count wins over the conf.
    assert_eq!(rdd.reduce_by_key(|a, b| a + b, Some(2)).num_partitions(), 2);
    assert_eq!(rdd.cogroup(&other, Some(4)).num_partitions(), 4);
}

// Regression: a shuffle whose parent RDD has no partitions (`Context::empty`) used to fail (no map
// task ever registered the shuffle, so every reduce task's fetch failed). Spark returns an empty
// result, and so must Ember.
#[test]
fn reduce_by_key_of_an_rdd_without_partitions_is_empty() {
    let ctx = super::common::ctx();
    let out = ctx.empty::<(u32, i32)>().reduce_by_key(|a, b| a + b, None).collect();
    assert_eq!(out.unwrap(), Vec::<(u32, i32)>::new());
}

// The same regression over every shuffling operator.
#[test]
fn shuffles_of_an_rdd_without_partitions_are_empty() {
    for (mode, ctx) in contexts() {
        let e = ctx.empty::<i32>();
        let pe = ctx.empty::<(u32, i32)>();
        assert_eq!(pe.reduce_by_key(|a, b| a + b, Some(3)).collect().unwrap(), vec![], "{mode}");
        assert_eq!(pe.group_by_key(None).collect().unwrap(), vec![], "{mode}");
        assert_eq!(pe.partition_by(HashPartitioner::new(3)).glom().collect().unwrap(), vec![vec![]; 3], "{mode}");
        assert_eq!(pe.sort_by_key(true, None).unwrap().collect().unwrap(), vec![], "{mode}");
        assert!(pe.count_by_key().unwrap().is_empty(), "{mode}");
        assert!(e.count_by_value().unwrap().is_empty(), "{mode}");
        assert_eq!(e.distinct(None).collect().unwrap(), Vec::<i32>::new(), "{mode}");
        assert_eq!(e.sort_by(|x| *x, false, Some(3)).unwrap().collect().unwrap(), Vec::<i32>::new(), "{mode}");
        let rep = e.repartition(3);
        assert_eq!((rep.num_partitions(), rep.count().unwrap()), (3, 0), "{mode}");
        assert_eq!(e.coalesce(2, true).collect().unwrap(), Vec::<i32>::new(), "{mode}");
        assert_eq!(pe.join(&pe, None).collect().unwrap(), vec![], "{mode}");
    }
}
