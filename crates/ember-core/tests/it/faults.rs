//! Fault injection and bad input: failures are retried or reported clearly, lost shuffle output
//! is recomputed, and nothing crashes the process or leaves partial output behind.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ember_core::{Context, EmberConf, Error};

use super::common::*;

static FIRST_ATTEMPTS: AtomicU64 = AtomicU64::new(0);

#[test]
fn a_failed_attempt_is_retried_and_its_accumulator_updates_do_not_count() {
    for ctx in both() {
        FIRST_ATTEMPTS.store(0, Ordering::SeqCst);
        let seen = ctx.long_accumulator();
        let out = ctx
            .parallelize((0..100i64).collect::<Vec<_>>(), 4)
            .map_with(seen.clone(), |acc, x| {
                acc.add(1);
                // The first task to reach record 60 fails once, after adding for its records.
                if x == 60 && FIRST_ATTEMPTS.fetch_add(1, Ordering::SeqCst) == 0 {
                    panic!("transient failure");
                }
                x
            })
            .collect()
            .unwrap();
        assert_eq!(out, (0..100).collect::<Vec<_>>());
        assert_eq!(seen.value().unwrap(), 100, "updates of the failed attempt must not count");
        let summary = ctx.last_job_summary().unwrap();
        assert_eq!(summary.stages.iter().map(|s| s.failed_attempts).sum::<u32>(), 1);
    }
}

#[test]
fn exhausted_retries_name_stage_partition_and_message() {
    let ctx =
        Context::new(EmberConf::new().master("local[2]").unwrap().set("ember.task.maxFailures", "2").unwrap()).unwrap();
    let err = ctx
        .parallelize((0..10).collect::<Vec<i32>>(), 5)
        .map(|x| if x >= 8 { panic!("bad record {x}") } else { x })
        .count()
        .unwrap_err();
    match &err {
        Error::JobAborted { partition, attempts, message, stage_name, .. } => {
            assert_eq!(*partition, 4);
            assert_eq!(*attempts, 2);
            assert!(message.contains("bad record 8"), "{message}");
            assert!(stage_name.contains("map"), "{stage_name}");
        }
        other => panic!("unexpected error {other:?}"),
    }
    assert_eq!(ctx.parallelize(vec![1, 2, 3], 2).count().unwrap(), 3, "the context stays usable");
}

fn shuffled(ctx: &Context) -> ember_core::Rdd<(u64, u64)> {
    ctx.parallelize((0..2000u64).map(|i| (i % 13, i)).collect(), 4).reduce_by_key(|a, b| a + b, Some(3))
}

/// The shuffle dependency of an RDD made by a shuffling operation.
fn shuffle_dep<T: ember_core::Data>(r: &ember_core::Rdd<T>) -> std::sync::Arc<dyn ember_core::shuffle::ShuffleDepBase> {
    match &r.dependencies()[0] {
        ember_core::Dependency::Shuffle(d) => d.clone(),
        other => panic!("expected a shuffle dependency, got {other:?}"),
    }
}

fn sorted(mut v: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    v.sort();
    v
}

#[test]
fn lost_map_output_is_recomputed_from_lineage() {
    for ctx in both() {
        let r = shuffled(&ctx);
        let expect = sorted(r.collect().unwrap());
        let dep = shuffle_dep(&r);
        assert!(lose_map_output(&ctx, dep.shuffle_id(), 2));
        assert_eq!(sorted(r.collect().unwrap()), expect);
        let summary = ctx.last_job_summary().unwrap();
        assert!(summary.stages.len() >= 2, "the map stage ran again: {summary:?}");
    }
}

#[test]
fn corrupt_shuffle_file_is_detected_and_recomputed() {
    let ctx = ctx();
    // Large enough map outputs to be written to files.
    let r = ctx.parallelize((0..300_000u64).map(|i| (i, i.to_string())).collect(), 2).reduce_by_key(|a, _| a, Some(2));
    assert_eq!(r.count().unwrap(), 300_000);
    let dep = shuffle_dep(&r);
    let statuses = ctx.map_output_tracker().statuses(dep.shuffle_id());
    let path = statuses[0].as_ref().and_then(|s| s.data.clone()).expect("a file-backed map output");
    let mut bytes = std::fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x5a;
    std::fs::write(&path, bytes).unwrap();
    assert_eq!(r.count().unwrap(), 300_000, "a checksum mismatch triggers recomputation");
}

#[test]
fn invalid_master_urls_are_rejected() {
    for bad in ["locl[2]", "local[-1]", "local[two]", "spark://x"] {
        let e = EmberConf::new().master(bad).unwrap_err();
        assert!(e.to_string().contains(bad), "{e}");
    }
}

#[test]
fn missing_input_names_the_path() {
    let ctx = ctx();
    let e = ctx.text_file("/definitely/not/here.txt", 2).unwrap_err();
    assert!(matches!(e, Error::InputNotFound(_)), "{e:?}");
    assert!(e.to_string().contains("/definitely/not/here.txt"));
    let e = ctx.text_file("/definitely/not/*.txt", 2).unwrap_err();
    assert!(e.to_string().contains("/definitely/not/*.txt"), "{e}");
}

#[test]
fn invalid_utf8_names_the_file_and_leaves_no_output() {
    let ctx = ctx();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("bad.txt");
    std::fs::write(&input, b"fine line\nbad \xff\xfe line\n").unwrap();
    let out = dir.path().join("out");
    let e = ctx.text_file(input.to_str().unwrap(), 1).unwrap().save_as_text_file(&out).unwrap_err();
    assert!(matches!(e, Error::InvalidUtf8 { offset: 14, .. }), "{e:?}");
    assert!(e.to_string().contains("bad.txt"), "{e}");
    assert!(!out.exists(), "no partial output directory");
    let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(leftovers.len(), 1, "no output or temporary directory left behind: {leftovers:?}");
}

#[test]
fn unreadable_input_is_a_clear_error() {
    let ctx = ctx();
    let dir = tempfile::tempdir().unwrap();
    // A gzip file with a broken body cannot be read.
    let gz = dir.path().join("broken.gz");
    std::fs::write(&gz, b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03this is not deflate data").unwrap();
    let e = ctx.text_file(gz.to_str().unwrap(), 1).unwrap().count().unwrap_err();
    assert!(e.to_string().contains("broken.gz"), "{e}");
    // A file that disappears after the job was planned.
    let gone = dir.path().join("gone.txt");
    std::fs::write(&gone, b"a\nb\n").unwrap();
    let rdd = ctx.text_file(gone.to_str().unwrap(), 1).unwrap();
    std::fs::remove_file(&gone).unwrap();
    let e = rdd.collect().unwrap_err();
    assert!(e.to_string().contains("gone.txt"), "{e}");
}

#[test]
fn a_failing_save_leaves_no_output_directory() {
    let ctx = ctx();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("result");
    let e = ctx
        .parallelize((0..100).collect::<Vec<i32>>(), 4)
        .map(|x| if x == 77 { panic!("fails while writing") } else { x })
        .save_as_text_file(&out)
        .unwrap_err();
    assert!(e.to_string().contains("fails while writing"), "{e}");
    assert!(!out.exists());
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "the output directory is removed");
    // Writing to an existing directory is refused.
    std::fs::create_dir(&out).unwrap();
    let e = ctx.parallelize(vec![1], 1).save_as_text_file(&out).unwrap_err();
    assert!(matches!(e, Error::OutputExists(_)), "{e:?}");
}

#[test]
fn a_running_job_can_be_cancelled() {
    let ctx = ctx();
    let slow = ctx.parallelize((0..64).collect::<Vec<u64>>(), 4).map(|x| {
        std::thread::sleep(Duration::from_millis(50));
        x
    });
    let handle =
        ctx.submit_job(&slow, ember_core::ship::Ship::new(ember_core::rdd::CollectPartition::default()), None).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    handle.cancel();
    let e = handle.wait().unwrap_err();
    assert!(matches!(e, Error::Cancelled(_)), "{e:?}");
    assert_eq!(ctx.parallelize(vec![1, 2], 2).count().unwrap(), 2);
}

/// A user partitioner that answers out of range.
#[derive(serde::Serialize, serde::Deserialize)]
struct Broken;

impl ember_core::Partitioner<u32> for Broken {
    fn num_partitions(&self) -> usize {
        2
    }
    fn partition(&self, key: &u32) -> usize {
        *key as usize
    }
}

#[test]
fn an_out_of_range_partitioner_is_a_clear_error() {
    let ctx = ctx();
    let e = ctx.parallelize(vec![(0u32, 1), (7, 2)], 1).partition_by(Broken).collect().unwrap_err();
    assert!(e.to_string().contains("returned partition 7, but it has 2 partitions"), "{e}");
    let e = ctx.parallelize(vec![(0u32, 1), (9, 2)], 1).reduce_by_key_with(Broken, |a, b| a + b).collect().unwrap_err();
    assert!(e.to_string().contains("returned partition"), "{e}");
}

#[test]
fn map_outputs_go_to_files_when_the_memory_threshold_is_zero() {
    let conf = EmberConf::new().master("local[2]").unwrap().set("ember.shuffle.inMemoryThreshold", "0").unwrap();
    let ctx = Context::new(conf).unwrap();
    let r = shuffled(&ctx);
    let expect = sorted(r.collect().unwrap());
    let dep = shuffle_dep(&r);
    let statuses = ctx.map_output_tracker().statuses(dep.shuffle_id());
    for s in statuses.iter().flatten() {
        let data = s.data.as_ref().expect("a data file");
        assert!(data.exists() && data.with_extension("index").exists());
        let index = std::fs::read(data.with_extension("index")).unwrap();
        assert_eq!(index.len(), 8 * (s.sizes.len() + 1), "one offset per segment boundary");
    }
    assert!(lose_map_output(&ctx, dep.shuffle_id(), 1));
    assert_eq!(sorted(r.collect().unwrap()), expect);
    // With the default threshold the same small outputs stay in memory.
    let ctx = super::common::ctx();
    let r = shuffled(&ctx);
    r.count().unwrap();
    let dep = shuffle_dep(&r);
    assert!(ctx.map_output_tracker().statuses(dep.shuffle_id()).iter().flatten().all(|s| s.data.is_none()));
}

#[test]
fn an_action_inside_a_task_is_refused_not_deadlocked() {
    let ctx = ctx();
    let inner = ctx.parallelize(vec![1, 2, 3], 2);
    let e = ctx
        .parallelize(vec![10, 20], 2)
        .map_with(inner, |inner, x: i32| x + inner.count().map(|n| n as i32).unwrap_or_else(|e| panic!("{e}")))
        .collect()
        .unwrap_err();
    assert!(e.to_string().contains("actions run only on the driver"), "{e}");
}
