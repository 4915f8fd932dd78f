//! Arithmetic on input: partition counts and products out of range are errors, never
//! allocations that abort the process or silently truncated values.

use ember_core::{Error, HashPartitioner};

use super::common::*;

#[test]
fn more_slices_than_records_cost_nothing_and_too_many_partitions_are_an_error() {
    let ctx = ctx();
    // A hundred thousand slices, most empty: the collection is not copied per slice.
    let r = ctx.parallelize(vec![1u32, 2, 3], 100_000);
    assert_eq!(r.num_partitions(), 100_000);
    assert_eq!(r.take(3).unwrap(), vec![1, 2, 3]);
    let huge = ctx.parallelize(vec![1u32, 2, 3], usize::MAX);
    match huge.count() {
        Err(Error::InvalidArgument(m)) => assert!(m.contains("partitions"), "{m}"),
        other => panic!("expected an invalid-argument error, got {other:?}"),
    }
}

#[test]
fn a_shuffle_into_too_many_partitions_is_an_error() {
    let ctx = ctx();
    let pairs = ctx.parallelize(vec![(1u32, 1u32), (2, 2)], 2);
    let err = pairs.reduce_by_key(|a, b| a + b, Some(usize::MAX)).count().unwrap_err();
    assert!(err.to_string().contains("partitions"), "{err}");
    let err = pairs.partition_by(HashPartitioner::new(1 << 40)).count().unwrap_err();
    assert!(err.to_string().contains("partitions"), "{err}");
    // The context stays usable.
    assert_eq!(pairs.reduce_by_key(|a, b| a + b, Some(3)).count().unwrap(), 2);
}

#[test]
fn a_cartesian_whose_partition_count_overflows_is_an_error() {
    let ctx = ctx();
    let a = ctx.parallelize(vec![1u8], 1 << 20);
    let b = ctx.parallelize(vec![2u8], 1 << 20);
    assert!(matches!(a.cartesian(&b), Err(Error::InvalidArgument(_))));
    let c = ctx.parallelize(vec![2u8, 3], 2);
    assert_eq!(a.coalesce(2, false).cartesian(&c).unwrap().count().unwrap(), 2);
}

#[test]
fn records_of_no_bytes_survive_shuffles_and_serialized_caches() {
    for ctx in both() {
        let units = ctx.parallelize(vec![(); 7], 3);
        assert_eq!(units.distinct(Some(2)).count().unwrap(), 1);
        assert_eq!(units.map(|u| (u, 1u32)).group_by_key(Some(2)).collect().unwrap(), vec![((), vec![1; 7])]);
        let cached = units.persist(ember_core::StorageLevel::MemoryOnlySer).unwrap();
        assert_eq!(cached.count().unwrap(), 7);
        assert_eq!(cached.count().unwrap(), 7, "read back from the cache");
        let on_disk = ctx.parallelize(vec![(); 5], 2).persist(ember_core::StorageLevel::DiskOnly).unwrap();
        assert_eq!(on_disk.count().unwrap(), 5);
        assert_eq!(on_disk.count().unwrap(), 5, "read back from disk");
    }
}
