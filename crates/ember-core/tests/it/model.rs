//! A plain `Vec` model of RDD operations: the reference the randomized operator tests in `ops`
//! compare Ember against. Every function here is the obvious single-threaded computation.

use std::collections::{BTreeMap, BTreeSet};

/// The partitions `parallelize(data, n)` makes: slice `i` holds positions
/// `i * len / n .. (i + 1) * len / n`, as in Spark's `ParallelCollectionRDD.slice`.
pub fn slices<T: Clone>(data: &[T], n: usize) -> Vec<Vec<T>> {
    let n = n.max(1);
    let len = data.len();
    (0..n).map(|i| data[i * len / n..(i + 1) * len / n].to_vec()).collect()
}

/// `start, start + step, ...` up to but excluding `end` (down to it for a negative step).
pub fn range(start: i64, end: i64, step: i64) -> Vec<i64> {
    assert_ne!(step, 0);
    let mut out = Vec::new();
    let (mut x, end, step) = (start as i128, end as i128, step as i128);
    while (step > 0 && x < end) || (step < 0 && x > end) {
        out.push(x as i64);
        x += step;
    }
    out
}

/// `v`, sorted.
pub fn sorted<T: Ord>(mut v: Vec<T>) -> Vec<T> {
    v.sort();
    v
}

/// The values of each key, in input order.
pub fn group<K: Ord + Clone, V: Clone>(pairs: &[(K, V)]) -> BTreeMap<K, Vec<V>> {
    let mut m: BTreeMap<K, Vec<V>> = BTreeMap::new();
    for (k, v) in pairs {
        m.entry(k.clone()).or_default().push(v.clone());
    }
    m
}

/// Groups with their values sorted: the normal form for comparing unordered groups.
pub fn sorted_groups<K: Ord, V: Ord>(groups: impl IntoIterator<Item = (K, Vec<V>)>) -> BTreeMap<K, Vec<V>> {
    groups.into_iter().map(|(k, v)| (k, sorted(v))).collect()
}

/// How many times each item occurs.
pub fn counts<T: Ord + Clone>(items: &[T]) -> BTreeMap<T, u64> {
    let mut m = BTreeMap::new();
    for x in items {
        *m.entry(x.clone()).or_insert(0) += 1;
    }
    m
}

/// The sorted, deduplicated items.
pub fn distinct<T: Ord + Clone>(items: &[T]) -> Vec<T> {
    items.iter().cloned().collect::<BTreeSet<T>>().into_iter().collect()
}

/// Every key of either side with both sides' values (sorted), as `cogroup` gives them.
pub type CoGroups<K, V, W> = BTreeMap<K, (Vec<V>, Vec<W>)>;

/// `cogroup`: for every key of either side, the (sorted) values of both sides.
pub fn cogroup<K: Ord + Clone, V: Ord + Clone, W: Ord + Clone>(l: &[(K, V)], r: &[(K, W)]) -> CoGroups<K, V, W> {
    let mut m: CoGroups<K, V, W> = BTreeMap::new();
    for (k, v) in l {
        m.entry(k.clone()).or_default().0.push(v.clone());
    }
    for (k, w) in r {
        m.entry(k.clone()).or_default().1.push(w.clone());
    }
    for (vs, ws) in m.values_mut() {
        vs.sort();
        ws.sort();
    }
    m
}

/// The inner join, sorted.
pub fn join<K: Ord + Clone, V: Ord + Clone, W: Ord + Clone>(l: &[(K, V)], r: &[(K, W)]) -> Vec<(K, (V, W))> {
    let mut out = Vec::new();
    for (k, v) in l {
        for (k2, w) in r {
            if k == k2 {
                out.push((k.clone(), (v.clone(), w.clone())));
            }
        }
    }
    sorted(out)
}

/// The left outer join, sorted.
pub fn left_outer_join<K: Ord + Clone, V: Ord + Clone, W: Ord + Clone>(
    l: &[(K, V)],
    r: &[(K, W)],
) -> Vec<(K, (V, Option<W>))> {
    let mut out = Vec::new();
    for (k, v) in l {
        let matches: Vec<&W> = r.iter().filter(|(k2, _)| k2 == k).map(|(_, w)| w).collect();
        if matches.is_empty() {
            out.push((k.clone(), (v.clone(), None)));
        }
        for w in matches {
            out.push((k.clone(), (v.clone(), Some(w.clone()))));
        }
    }
    sorted(out)
}

/// The right outer join, sorted.
pub fn right_outer_join<K: Ord + Clone, V: Ord + Clone, W: Ord + Clone>(
    l: &[(K, V)],
    r: &[(K, W)],
) -> Vec<(K, (Option<V>, W))> {
    let flipped = left_outer_join(r, l);
    sorted(flipped.into_iter().map(|(k, (w, v))| (k, (v, w))).collect())
}

/// The full outer join, sorted.
pub fn full_outer_join<K: Ord + Clone, V: Ord + Clone, W: Ord + Clone>(
    l: &[(K, V)],
    r: &[(K, W)],
) -> Vec<(K, (Option<V>, Option<W>))> {
    let mut out: Vec<(K, (Option<V>, Option<W>))> =
        left_outer_join(l, r).into_iter().map(|(k, (v, w))| (k, (Some(v), w))).collect();
    for (k, w) in r {
        if !l.iter().any(|(k2, _)| k2 == k) {
            out.push((k.clone(), (None, Some(w.clone()))));
        }
    }
    sorted(out)
}

/// The records of `l` whose key is absent from `r`, sorted.
pub fn subtract_by_key<K: Ord + Clone, V: Ord + Clone, W>(l: &[(K, V)], r: &[(K, W)]) -> Vec<(K, V)> {
    let right: BTreeSet<&K> = r.iter().map(|(k, _)| k).collect();
    sorted(l.iter().filter(|(k, _)| !right.contains(k)).cloned().collect())
}

/// Whether `small` is a subsequence of `big` (same order, possibly with gaps).
pub fn is_subsequence<T: PartialEq>(small: &[T], big: &[T]) -> bool {
    let mut it = big.iter();
    small.iter().all(|x| it.any(|y| y == x))
}

/// Whether `v` is sorted ascending (or descending) by `key`.
pub fn is_sorted_by<T, K: Ord>(v: &[T], ascending: bool, key: impl Fn(&T) -> K) -> bool {
    v.windows(2).all(|w| if ascending { key(&w[0]) <= key(&w[1]) } else { key(&w[0]) >= key(&w[1]) })
}

/// Population mean and variance.
pub fn mean_variance(xs: &[f64]) -> (f64, f64) {
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    let var = xs.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n;
    (mean, var)
}

/// Whether `a` and `b` agree to a relative (or, near zero, absolute) tolerance.
pub fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

#[test]
fn model_self_checks() {
    assert_eq!(slices(&[1, 2, 3], 5), vec![vec![], vec![1], vec![], vec![2], vec![3]]);
    assert_eq!(range(5, -5, -3), vec![5, 2, -1, -4]);
    assert_eq!(range(0, 0, 1), Vec::<i64>::new());
    assert_eq!(range(i64::MAX - 2, i64::MAX, 1), vec![i64::MAX - 2, i64::MAX - 1]);
    assert!(is_subsequence(&[1, 3], &[1, 2, 3]) && !is_subsequence(&[3, 1], &[1, 2, 3]));
    assert_eq!(join(&[(1, 'a'), (2, 'b')], &[(1, 'x'), (1, 'y')]), vec![(1, ('a', 'x')), (1, ('a', 'y'))]);
    assert_eq!(
        full_outer_join(&[(1, 'a'), (2, 'b')], &[(1, 'x'), (3, 'z')]),
        vec![(1, (Some('a'), Some('x'))), (2, (Some('b'), None)), (3, (None, Some('z')))]
    );
    assert_eq!(subtract_by_key(&[(1, 'a'), (2, 'b')], &[(1, ())]), vec![(2, 'b')]);
}

// ---- models of the Spark API completion (tests in `api`) -----------------------------------

/// `intersection`: the distinct records present in both, sorted.
pub fn intersection<T: Ord + Clone>(a: &[T], b: &[T]) -> Vec<T> {
    let right: BTreeSet<&T> = b.iter().collect();
    distinct(&a.iter().filter(|x| right.contains(x)).cloned().collect::<Vec<_>>())
}

/// `subtract`: the records of `a` (duplicates kept) absent from `b`, sorted.
pub fn subtract<T: Ord + Clone>(a: &[T], b: &[T]) -> Vec<T> {
    let right: BTreeSet<&T> = b.iter().collect();
    sorted(a.iter().filter(|x| !right.contains(x)).cloned().collect())
}

/// `cogroup` of four sides: for every key of any side, the (sorted) values of each.
pub type CoGroups4<K, A, B, C, D> = BTreeMap<K, (Vec<A>, Vec<B>, Vec<C>, Vec<D>)>;

/// `cogroup3`: for every key of any of the four sides, each side's values, sorted.
pub fn cogroup4<K: Ord + Clone, A: Ord + Clone, B: Ord + Clone, C: Ord + Clone, D: Ord + Clone>(
    a: &[(K, A)],
    b: &[(K, B)],
    c: &[(K, C)],
    d: &[(K, D)],
) -> CoGroups4<K, A, B, C, D> {
    let mut m: CoGroups4<K, A, B, C, D> = BTreeMap::new();
    for (k, v) in a {
        m.entry(k.clone()).or_default().0.push(v.clone());
    }
    for (k, v) in b {
        m.entry(k.clone()).or_default().1.push(v.clone());
    }
    for (k, v) in c {
        m.entry(k.clone()).or_default().2.push(v.clone());
    }
    for (k, v) in d {
        m.entry(k.clone()).or_default().3.push(v.clone());
    }
    for (a, b, c, d) in m.values_mut() {
        a.sort();
        b.sort();
        c.sort();
        d.sort();
    }
    m
}

/// The first record with the largest (`largest`) or smallest key.
pub fn extreme_by<T: Clone, K: Ord>(v: &[T], largest: bool, key: impl Fn(&T) -> K) -> Option<T> {
    let mut best: Option<&T> = None;
    for x in v {
        best = match best {
            Some(b) if (largest && key(x) <= key(b)) || (!largest && key(x) >= key(b)) => Some(b),
            _ => Some(x),
        };
    }
    best.cloned()
}

/// The first `n` records of `v` stably sorted by key (descending for `largest`).
pub fn best_n_by<T: Clone, K: Ord>(v: &[T], n: usize, largest: bool, key: impl Fn(&T) -> K) -> Vec<T> {
    let mut out = v.to_vec();
    if largest {
        out.sort_by_key(|b| std::cmp::Reverse(key(b)));
    } else {
        out.sort_by_key(|a| key(a));
    }
    out.truncate(n);
    out
}

/// A histogram over `buckets` (`[b[i], b[i+1])`, the last one closed), by linear scan.
pub fn histogram(xs: &[f64], buckets: &[f64]) -> Vec<u64> {
    let mut counts = vec![0; buckets.len() - 1];
    for &x in xs {
        for i in 0..buckets.len() - 1 {
            let last = i == buckets.len() - 2;
            if buckets[i] <= x && (x < buckets[i + 1] || (last && x == buckets[i + 1])) {
                counts[i] += 1;
                break;
            }
        }
    }
    counts
}
