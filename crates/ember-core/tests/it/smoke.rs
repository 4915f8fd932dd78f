//! End-to-end checks of the main paths.

use super::common::*;

#[test]
fn map_filter_collect_count() {
    for ctx in both() {
        let r = ctx.parallelize((0..100).collect::<Vec<i64>>(), 4).map(|x| x * 2).filter(|x| x % 3 == 0);
        let v = r.collect().unwrap();
        assert_eq!(v, (0..100).map(|x| x * 2).filter(|x| x % 3 == 0).collect::<Vec<_>>());
        assert_eq!(r.count().unwrap(), v.len() as u64);
    }
}

#[test]
fn word_count_shuffle() {
    for ctx in both() {
        let lines = vec!["a b c".to_string(), "b c".to_string(), "c".to_string()];
        let mut out = ctx
            .parallelize(lines, 3)
            .flat_map(|l: String| l.split_whitespace().map(str::to_string).collect::<Vec<_>>())
            .map(|w| (w, 1u64))
            .reduce_by_key(|a, b| a + b, Some(2))
            .collect()
            .unwrap();
        out.sort();
        assert_eq!(out, vec![("a".into(), 1), ("b".into(), 2), ("c".into(), 3)]);
    }
}

#[test]
fn sort_by_key_orders_globally() {
    for ctx in both() {
        let data: Vec<(u32, u32)> = (0..1000u32).map(|i| ((i * 7919) % 1000, i)).collect();
        let sorted = ctx.parallelize(data, 5).sort_by_key(true, Some(4)).unwrap().keys().collect().unwrap();
        assert_eq!(sorted, (0..1000).collect::<Vec<u32>>());
    }
}

#[test]
fn panicking_closure_fails_job_and_context_survives() {
    let ctx = ctx();
    let err = ctx
        .parallelize(vec![1, 2, 3], 3)
        .map(|x: i32| if x == 2 { panic!("boom at {x}") } else { x })
        .collect()
        .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("boom at 2") && msg.contains("failed 4 times"), "{msg}");
    assert_eq!(ctx.parallelize(vec![1, 2, 3], 3).count().unwrap(), 3);
}
