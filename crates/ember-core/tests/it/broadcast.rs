//! Broadcast values resolve through the executor's store: shared in local mode, decoded into the
//! executor's own copy when rehearsing a remote executor, released with the driver's handle.

use super::common::*;

#[test]
fn tasks_read_broadcasts_through_the_executor_and_rehearsal_decodes_a_copy() {
    for (serialize, ctx) in [false, true].into_iter().zip(both()) {
        let table: Vec<u64> = (0..1000).map(|i| i * 3).collect();
        let bc = ctx.broadcast(table.clone());
        let driver_addr = bc.value().as_ptr() as usize;
        let out = ctx
            .parallelize((0..100u64).collect(), 4)
            .map_with((bc.clone(), driver_addr), |(b, addr), i| {
                (b.value()[i as usize * 10], b.value().as_ptr() as usize == *addr)
            })
            .collect()
            .unwrap();
        let expected: Vec<u64> = (0..100).map(|i| table[i * 10]).collect();
        assert_eq!(out.iter().map(|(v, _)| *v).collect::<Vec<_>>(), expected);
        // In local mode tasks see the driver's object; a rehearsed remote executor its own copy.
        assert!(out.iter().all(|(_, same)| *same != serialize), "serialize={serialize}");
        assert_eq!(ctx.env().broadcasts.len(), 1);
        drop(bc);
        assert_eq!(ctx.env().broadcasts.len(), 0, "the last handle releases the value");
    }
}

#[test]
fn a_broadcast_outside_a_task_cannot_be_decoded() {
    let ctx = ctx_with(true);
    let bc = ctx.broadcast(vec![1u8, 2, 3]);
    let bytes = postcard::to_allocvec(&bc).unwrap();
    assert!(postcard::from_bytes::<ember_core::Broadcast<Vec<u8>>>(&bytes).is_err());
}
