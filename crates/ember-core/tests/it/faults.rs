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

/// Pairs `(i, i * 2)` for `i < 40_000` summed by `key % 1000`, through a shuffle of four map
/// tasks (file outputs) and three reducers, as a `Vec` model computes them.
fn modelled_sums() -> Vec<(u64, u64)> {
    let mut sums = vec![0u64; 1000];
    for i in 0..40_000u64 {
        sums[(i % 1000) as usize] += i * 2;
    }
    sums.into_iter().enumerate().map(|(k, v)| (k as u64, v)).collect()
}

#[test]
fn corrupt_shuffle_file_is_detected_and_recomputed() {
    for serialize in [false, true] {
        let ctx = ctx_conf(&[("ember.shuffle.inMemoryThreshold", "0")], serialize);
        let r = ctx
            .parallelize((0..40_000u64).map(|i| (i % 1000, i * 2)).collect(), 4)
            .reduce_by_key(|a, b| a + b, Some(3));
        assert_eq!(sorted(r.collect().unwrap()), modelled_sums());
        let shuffle = shuffle_dep(&r).shuffle_id();
        let status = ctx.map_output_tracker().statuses(shuffle)[1].clone().expect("map 1 is registered");
        let path = status.data.clone().expect("a file-backed map output");
        // Flip a byte in the middle of every segment of map 1, so whichever reducer reads first
        // meets corrupt data.
        let mut bytes = std::fs::read(&path).unwrap();
        let mut start = 0usize;
        for len in status.segments.sizes() {
            if len > 0 {
                bytes[start + len as usize / 2] ^= 0x5a;
            }
            start += len as usize;
        }
        std::fs::write(&path, bytes).unwrap();

        assert_eq!(sorted(r.collect().unwrap()), modelled_sums(), "the corrupt output is recomputed");
        let summary = ctx.last_job_summary().unwrap();
        let stages: Vec<(String, usize, u32)> =
            summary.stages.iter().map(|s| (s.name.clone(), s.launched, s.fetch_failures)).collect();
        let map_stage = summary.stages.iter().find(|s| s.name.starts_with("shuffle ")).expect("the map stage ran");
        assert_eq!(map_stage.launched, 1, "only the corrupt map ran again: {stages:?}");
        let reading = summary.stages.iter().find(|s| !s.name.starts_with("shuffle ")).expect("the reading stage");
        assert!(reading.fetch_failures > 0, "the reader recorded a fetch failure: {stages:?}");
        assert_eq!(summary.stages.iter().map(|s| s.failed_attempts).sum::<u32>(), 0, "{stages:?}");
    }
}

#[test]
fn accumulator_updates_count_once_per_successful_task_even_when_a_map_is_recomputed() {
    for ctx in both() {
        let mapped = ctx.long_accumulator();
        let reduced = ctx.long_accumulator();
        let summed = ctx
            .parallelize((0..40_000u64).collect(), 4)
            .map_with(mapped.clone(), |acc, i| {
                acc.add(1);
                (i % 1000, i * 2)
            })
            .reduce_by_key(|a, b| a + b, Some(3));
        let r = summed.map_with(reduced.clone(), |acc, kv| {
            acc.add(1);
            kv
        });
        assert_eq!(sorted(r.collect().unwrap()), modelled_sums());
        assert_eq!(mapped.value().unwrap(), 40_000, "each map task's updates merged once");
        assert_eq!(reduced.value().unwrap(), 1000);

        // Lose map 1's output: the next action's reducers fail to fetch it, and map task 1 runs
        // again. Its updates are merged again, as in Spark: a recomputed transformation counts
        // once per successful task. The reduce attempts that failed to fetch merge nothing.
        assert!(lose_map_output(&ctx, shuffle_dep(&summed).shuffle_id(), 1));
        assert_eq!(sorted(r.collect().unwrap()), modelled_sums());
        let summary = ctx.last_job_summary().unwrap();
        assert!(summary.stages.iter().any(|s| s.fetch_failures > 0), "{summary:?}");
        assert_eq!(mapped.value().unwrap(), 40_000 + 10_000, "map task 1 (10,000 records) ran again once");
        assert_eq!(reduced.value().unwrap(), 2000, "each reduce partition's successful task counts once");
    }
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

/// Records per partition of the slow jobs below; each record sleeps 5 ms, so a partition takes
/// about two seconds and a 40-partition job on `local[2]` about forty. Fewer records than
/// a check every 1024 records would need to notice a kill.
const SLOW_RECORDS: u64 = 400;

/// A 40-partition job of `40 * SLOW_RECORDS` records through `slow`, which must be a
/// non-capturing closure calling [`slow_partition`] with the test's own counters.
fn slow_job<F>(ctx: &Context, slow: F) -> ember_core::Rdd<u64>
where
    F: for<'a> Fn(ember_core::task::BoxIter<'a, u64>) -> ember_core::task::BoxIter<'a, u64> + Send + Sync + 'static,
{
    ctx.parallelize((0..40 * SLOW_RECORDS).collect::<Vec<u64>>(), 40).map_partitions(slow)
}

/// A slow partition: counts the task in `started` when it begins computing, and every record
/// in `records`; each record sleeps 5 ms.
fn slow_partition<'a>(
    it: ember_core::task::BoxIter<'a, u64>,
    started: &'static AtomicU64,
    records: &'static AtomicU64,
) -> ember_core::task::BoxIter<'a, u64> {
    started.fetch_add(1, Ordering::SeqCst);
    Box::new(it.inspect(move |_| {
        records.fetch_add(1, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(5));
    }))
}

/// Waits until `counter` is positive, at most ten seconds.
fn wait_until_positive(counter: &AtomicU64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while counter.load(Ordering::SeqCst) == 0 {
        assert!(std::time::Instant::now() < deadline, "the job's tasks never started");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Waits for a job on another thread; fails the test unless it ends within `limit`.
fn wait_within<U: Send + 'static>(handle: ember_core::JobHandle<U>, limit: Duration) -> ember_core::Result<Vec<U>> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(handle.wait());
    });
    rx.recv_timeout(limit).unwrap_or_else(|_| panic!("the job did not end within {limit:?}"))
}

/// Asserts that no task adds to `records` from 250 ms after `cancelled_at` on: every running
/// task stopped.
fn assert_tasks_stopped(records: &AtomicU64, cancelled_at: std::time::Instant) {
    // Killed tasks stop within one record (5 ms); leave them some time on a loaded machine.
    std::thread::sleep(
        (cancelled_at + Duration::from_millis(250)).saturating_duration_since(std::time::Instant::now()),
    );
    let settled = records.load(Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(records.load(Ordering::SeqCst), settled, "killed tasks kept computing records");
}

fn collect_fn() -> ember_core::ship::Ship<dyn ember_core::PartitionFn<u64, Vec<u64>>> {
    ember_core::ship::Ship::new(ember_core::rdd::CollectPartition::default())
}

static CANCEL_STARTED: AtomicU64 = AtomicU64::new(0);
static CANCEL_RECORDS: AtomicU64 = AtomicU64::new(0);

/// Submits `slow` (whose partitions count into `started` and `records`), cancels it once records
/// flow, and asserts what cancellation promises: the job ends with `Error::Cancelled` at once,
/// its running tasks stop computing, its queued tasks never start, and nothing counts as a
/// failed attempt.
fn assert_cancel_stops_work(ctx: &Context, slow: &ember_core::Rdd<u64>, started: &AtomicU64, records: &AtomicU64) {
    let handle = ctx.submit_job(slow, collect_fn(), None).unwrap();
    let id = handle.id();
    wait_until_positive(records);
    let cancelled_at = std::time::Instant::now();
    handle.cancel();
    let e = wait_within(handle, Duration::from_secs(5)).unwrap_err();
    assert!(matches!(e, Error::Cancelled(_)), "{e:?}");
    assert!(cancelled_at.elapsed() < Duration::from_secs(1), "cancelling took {:?}", cancelled_at.elapsed());
    assert_tasks_stopped(records, cancelled_at);
    // Two slots: the two running partitions started, the queued ones never did.
    let started = started.load(Ordering::SeqCst);
    assert!(started <= 4, "{started} of {} partitions started", slow.num_partitions());
    let summary = ctx.job_summaries().into_iter().find(|s| s.id == id).expect("a summary of the job");
    assert!(!summary.succeeded);
    assert_eq!(summary.stages.iter().map(|s| s.failed_attempts).sum::<u32>(), 0, "{summary:?}");
    assert_eq!(summary.stages.iter().map(|s| s.tasks).sum::<usize>(), 0, "{summary:?}");
    assert_eq!(ctx.parallelize(vec![1, 2], 2).count().unwrap(), 2, "the context stays usable");
}

#[test]
fn a_cancelled_job_stops_its_running_tasks_and_never_starts_queued_ones() {
    for ctx in both() {
        CANCEL_STARTED.store(0, Ordering::SeqCst);
        CANCEL_RECORDS.store(0, Ordering::SeqCst);
        let slow = slow_job(&ctx, |it| slow_partition(it, &CANCEL_STARTED, &CANCEL_RECORDS));
        assert_cancel_stops_work(&ctx, &slow, &CANCEL_STARTED, &CANCEL_RECORDS);
    }
}

static CACHED_STARTED: AtomicU64 = AtomicU64::new(0);
static CACHED_RECORDS: AtomicU64 = AtomicU64::new(0);

#[test]
fn a_cancelled_job_stops_reading_cached_blocks() {
    for ctx in both() {
        CACHED_STARTED.store(0, Ordering::SeqCst);
        CACHED_RECORDS.store(0, Ordering::SeqCst);
        let cached = ctx.parallelize((0..40 * SLOW_RECORDS).collect::<Vec<u64>>(), 40).cache().unwrap();
        assert_eq!(cached.count().unwrap(), 40 * SLOW_RECORDS);
        // The slow function reads every record from the cache, not from the source.
        let slow = cached.map_partitions(|it| slow_partition(it, &CACHED_STARTED, &CACHED_RECORDS));
        assert_cancel_stops_work(&ctx, &slow, &CACHED_STARTED, &CACHED_RECORDS);
    }
}

static TEXT_STARTED: AtomicU64 = AtomicU64::new(0);
static TEXT_RECORDS: AtomicU64 = AtomicU64::new(0);

#[test]
fn a_cancelled_job_stops_reading_text_input() {
    let dir = tempfile::tempdir().unwrap();
    for f in 0..40u64 {
        let lines: String = (0..SLOW_RECORDS).map(|i| format!("{}\n", f * SLOW_RECORDS + i)).collect();
        std::fs::write(dir.path().join(format!("part-{f:02}.txt")), lines).unwrap();
    }
    for ctx in both() {
        TEXT_STARTED.store(0, Ordering::SeqCst);
        TEXT_RECORDS.store(0, Ordering::SeqCst);
        let lines = ctx.text_file(dir.path().to_str().unwrap(), 40).unwrap();
        let slow = lines
            .map(|l: String| l.parse::<u64>().unwrap_or_default())
            .map_partitions(|it| slow_partition(it, &TEXT_STARTED, &TEXT_RECORDS));
        assert_cancel_stops_work(&ctx, &slow, &TEXT_STARTED, &TEXT_RECORDS);
    }
}

static GROUP_A_STARTED: AtomicU64 = AtomicU64::new(0);
static GROUP_A_RECORDS: AtomicU64 = AtomicU64::new(0);
static GROUP_B_STARTED: AtomicU64 = AtomicU64::new(0);
static GROUP_B_RECORDS: AtomicU64 = AtomicU64::new(0);

#[test]
fn cancelling_a_job_group_cancels_its_jobs_only() {
    let ctx = ctx();
    let submitter = ctx.clone();
    let (a, b) = std::thread::spawn(move || {
        submitter.set_job_group("g");
        let a = submitter.submit_job(
            &slow_job(&submitter, |it| slow_partition(it, &GROUP_A_STARTED, &GROUP_A_RECORDS)),
            collect_fn(),
            None,
        );
        let b = submitter.submit_job(
            &slow_job(&submitter, |it| slow_partition(it, &GROUP_B_STARTED, &GROUP_B_RECORDS)),
            collect_fn(),
            None,
        );
        (a.unwrap(), b.unwrap())
    })
    .join()
    .unwrap();
    // Submitted from this thread, outside the group, and queued behind both group jobs.
    let other = ctx.parallelize((0..1000u64).collect(), 4).map(|x| x * 3);
    let other = ctx.submit_job(&other, collect_fn(), None).unwrap();
    wait_until_positive(&GROUP_A_RECORDS);
    let cancelled_at = std::time::Instant::now();
    ctx.cancel_job_group("g");
    for h in [a, b] {
        let e = wait_within(h, Duration::from_secs(5)).unwrap_err();
        assert!(matches!(e, Error::Cancelled(_)), "{e:?}");
        assert!(e.to_string().contains("`g`"), "{e}");
    }
    assert!(cancelled_at.elapsed() < Duration::from_secs(1), "cancelling took {:?}", cancelled_at.elapsed());
    let out: Vec<u64> = wait_within(other, Duration::from_secs(10)).unwrap().into_iter().flatten().collect();
    assert_eq!(out, (0..1000u64).map(|x| x * 3).collect::<Vec<_>>());
    assert_tasks_stopped(&GROUP_A_RECORDS, cancelled_at);
    assert_tasks_stopped(&GROUP_B_RECORDS, cancelled_at);
    let started = GROUP_A_STARTED.load(Ordering::SeqCst) + GROUP_B_STARTED.load(Ordering::SeqCst);
    assert!(started <= 4, "{started} of 80 group partitions started");
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
        assert_eq!(index.len(), 8 * (s.segments.len() + 1), "one offset per segment boundary");
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

/// Record `i` of the mixed-format shuffle below: its map task 0 writes a few bytes, map task 1
/// about 500 KB that compress well, map task 2 about 3 MB that do not.
fn mixed_record(i: u64) -> (u64, String) {
    let text = match i / 100 {
        0 => String::new(),
        1 => "a".repeat(5000),
        _ => {
            let mut x = i.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
            (0..30_000)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    char::from_digit((x % 16) as u32, 16).unwrap_or('0')
                })
                .collect()
        }
    };
    (i % 7, text)
}

#[test]
fn a_column_mixing_bare_framed_and_file_outputs_reads_exactly() {
    for serialize in [false, true] {
        let ctx = ctx_conf(&[("ember.memory.size", "256m")], serialize);
        let data: Vec<(u64, String)> = (0..300).map(mixed_record).collect();
        let r = ctx.parallelize(data.clone(), 3).partition_by(ember_core::shuffle::IndexPartitioner::new(2));
        let mut expect = data.clone();
        expect.sort();
        let mut got = r.collect().unwrap();
        got.sort();
        assert_eq!(got, expect);
        let dep = shuffle_dep(&r);
        let statuses = ctx.map_output_tracker().statuses(dep.shuffle_id());
        let in_memory: Vec<bool> = statuses.iter().map(|s| s.as_ref().is_some_and(|s| s.data.is_none())).collect();
        assert_eq!(in_memory, [true, true, false], "a few bytes and 500 KB compressed stay in memory, 3 MB do not");
        // Map 0 never compacted: its records are kept bare; map 1 compacted into chunks.
        assert_eq!(ctx.env().shuffle.memory_output_formats(dep.shuffle_id()), (1, 1));
        // Each kind, lost, is recomputed to the same records.
        for map in 0..3 {
            assert!(lose_map_output(&ctx, dep.shuffle_id(), map));
            let mut again = r.collect().unwrap();
            again.sort();
            assert_eq!(again, expect, "after losing map output {map}");
        }
    }
}

#[test]
fn an_all_in_memory_shuffle_of_bare_and_framed_outputs_reads_exactly_and_accounts_its_memory() {
    for serialize in [false, true] {
        let ctx = ctx_conf(&[("ember.memory.size", "256m")], serialize);
        let data: Vec<(u64, String)> = (0..200).map(mixed_record).collect();
        let r = ctx.parallelize(data.clone(), 2).partition_by(ember_core::shuffle::IndexPartitioner::new(2));
        let mut expect = data.clone();
        expect.sort();
        let collect = || {
            let mut got = r.collect().unwrap();
            got.sort();
            got
        };
        assert_eq!(collect(), expect);
        let dep = shuffle_dep(&r);
        let shuffle = &ctx.env().shuffle;
        let statuses = ctx.map_output_tracker().statuses(dep.shuffle_id());
        assert!(statuses.iter().all(|s| s.as_ref().is_some_and(|s| s.data.is_none())), "both outputs in memory");
        assert_eq!(shuffle.memory_output_formats(dep.shuffle_id()), (1, 1), "one framed, one bare");
        assert!(shuffle.memory_used() > 0);
        // Each output, lost, is found missing by its reducers and recomputed to the same records.
        for map in [1, 0] {
            assert!(lose_map_output(&ctx, dep.shuffle_id(), map));
            assert_eq!(collect(), expect, "after losing map output {map}");
            let summary = ctx.last_job_summary().unwrap();
            let map_stage = summary.stages.iter().find(|s| s.name.starts_with("shuffle ")).expect("the map stage ran");
            assert_eq!(map_stage.launched, 1, "only map {map} ran again");
        }
        // Both outputs gone: all their memory (bytes and boundaries) is given back, no more.
        assert!(lose_map_output(&ctx, dep.shuffle_id(), 0) && lose_map_output(&ctx, dep.shuffle_id(), 1));
        assert_eq!(shuffle.memory_used(), 0);
    }
}

#[test]
fn a_malformed_map_status_fails_its_job_once_and_the_context_stays_usable() {
    for serialize in [false, true] {
        let ctx = ctx_conf(&[], serialize);
        let data: Vec<(u64, u64)> = (0..400).map(|i| (i % 10, i)).collect();
        ctx.env().shuffle.malform_next_statuses(1);
        let e = ctx.parallelize(data.clone(), 4).reduce_by_key(|a, b| a + b, Some(3)).collect().unwrap_err();
        assert!(e.to_string().contains("unusable (Malformed)"), "{e}");
        let summary = ctx.last_job_summary().unwrap();
        let map_stage = summary.stages.iter().find(|s| s.name.starts_with("shuffle ")).expect("the map stage ran");
        assert!(map_stage.launched <= 4, "the malformed map task was run again: {summary:?}");
        // The next job, with honest statuses, is exact.
        let got = sorted(ctx.parallelize(data, 4).reduce_by_key(|a, b| a + b, Some(3)).collect().unwrap());
        let want: Vec<(u64, u64)> = (0..10).map(|k| (k, (0..400).filter(|i| i % 10 == k).sum())).collect();
        assert_eq!(got, want);
    }
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

/// A user partitioner whose `num_partitions` panics: it is called on the driver, when the job
/// is submitted and its stages are planned.
#[derive(serde::Serialize, serde::Deserialize)]
struct PanicsOnCount;

impl ember_core::Partitioner<u32> for PanicsOnCount {
    fn num_partitions(&self) -> usize {
        panic!("num_partitions exploded")
    }
    fn partition(&self, _: &u32) -> usize {
        0
    }
}

/// A user partitioner whose `partition` panics: it runs in the map tasks.
#[derive(serde::Serialize, serde::Deserialize)]
struct PanicsOnPartition;

impl ember_core::Partitioner<u32> for PanicsOnPartition {
    fn num_partitions(&self) -> usize {
        2
    }
    fn partition(&self, _: &u32) -> usize {
        panic!("partition exploded")
    }
}

/// The context still runs jobs correctly.
fn assert_usable(ctx: &Context) {
    let out = ctx.parallelize((0..100u32).map(|i| (i % 3, i)).collect(), 4).reduce_by_key(|a, b| a + b, Some(2));
    let mut out = out.collect().unwrap();
    out.sort();
    let model: Vec<(u32, u32)> = (0..3).map(|k| (k, (0..100).filter(|i| i % 3 == k).sum())).collect();
    assert_eq!(out, model);
}

#[test]
fn a_panicking_partitioner_fails_only_its_job() {
    for ctx in both() {
        let e = ctx.parallelize(vec![(1u32, 1u32), (2, 2)], 2).partition_by(PanicsOnCount).collect().unwrap_err();
        assert!(matches!(e, Error::UserPanic(_)), "{e:?}");
        assert!(e.to_string().contains("num_partitions exploded"), "{e}");
        assert_usable(&ctx);
        let e = ctx.parallelize(vec![(1u32, 1u32), (2, 2)], 2).partition_by(PanicsOnPartition).collect().unwrap_err();
        assert!(e.to_string().contains("partition exploded"), "{e}");
        assert_usable(&ctx);
    }
}

/// A record whose `Serialize` impl panics.
#[derive(Clone, Debug, serde::Deserialize)]
struct Unserializable(u32);

impl serde::Serialize for Unserializable {
    fn serialize<S: serde::Serializer>(&self, _: S) -> std::result::Result<S::Ok, S::Error> {
        panic!("Unserializable({}) refuses to be encoded", self.0)
    }
}

#[test]
fn a_panicking_serialize_impl_fails_only_its_job() {
    let ctx = ctx_with(true);
    // The records travel inside the task, encoded on the driver's event loop thread.
    let e = ctx.parallelize(vec![Unserializable(7), Unserializable(8)], 2).count().unwrap_err();
    assert!(matches!(e, Error::UserPanic(_)), "{e:?}");
    assert!(e.to_string().contains("refuses to be encoded"), "{e}");
    assert_usable(&ctx);
    // A job running at the same time is not failed by the panic.
    let slow = ctx.parallelize((0..8u32).collect(), 2).map(|x| {
        std::thread::sleep(Duration::from_millis(20));
        x * 2
    });
    let running =
        ctx.submit_job(&slow, ember_core::ship::Ship::new(ember_core::rdd::CollectPartition::default()), None);
    let running = running.unwrap();
    let e = ctx.parallelize(vec![Unserializable(9)], 1).count().unwrap_err();
    assert!(e.to_string().contains("refuses to be encoded"), "{e}");
    let out: Vec<u32> = running.wait().unwrap().into_iter().flatten().collect();
    assert_eq!(out, (0..8u32).map(|x| x * 2).collect::<Vec<_>>());
}

/// Runs `f` on a thread and fails the test unless it returns within ten seconds.
fn within_deadline(f: impl FnOnce() + Send + 'static) {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        f();
        let _ = tx.send(());
    });
    rx.recv_timeout(Duration::from_secs(10)).expect("no deadlock or panic: the thread returns in time");
}

#[test]
fn dropping_the_last_context_on_another_thread_neither_deadlocks_nor_panics() {
    for serialize in [false, true] {
        let ctx = ctx_with(serialize);
        assert_usable(&ctx);
        let local_dir = ctx.env().local_dir.clone();
        watch_teardown_panics();
        within_deadline(move || {
            assert_eq!(ctx.parallelize(vec![1, 2, 3], 2).count().unwrap(), 3);
            drop(ctx);
            wait_until_removed(&local_dir);
        });
        assert_eq!(TEARDOWN_PANICS.load(Ordering::SeqCst), 0, "a thread panicked while the context stopped");
    }
}

static HELD: std::sync::Mutex<Option<Context>> = std::sync::Mutex::new(None);
static DROPPED_IN_TASK: AtomicU64 = AtomicU64::new(0);

/// Panics raised on any thread while a context was being torn down, counted by
/// [`watch_teardown_panics`].
static TEARDOWN_PANICS: AtomicU64 = AtomicU64::new(0);

/// Counts panics about joining threads (a thread that waits for itself) or stopping the
/// context, on every thread: the engine's own hook reports panics on its threads only at debug
/// level, so this hook wraps it. Call after a context exists, so the engine's hook is in place.
fn watch_teardown_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let message = info.to_string();
            if message.contains("failed to join thread") {
                TEARDOWN_PANICS.fetch_add(1, Ordering::SeqCst);
            }
            previous(info);
        }));
    });
}

/// Waits until the context that owned `local_dir` is gone: dropping its last handle stops the
/// scheduler and the task threads, then removes the directory.
fn wait_until_removed(local_dir: &std::path::Path) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while local_dir.exists() {
        assert!(std::time::Instant::now() < deadline, "the context was never fully dropped");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn dropping_the_last_context_inside_a_task_neither_deadlocks_nor_panics() {
    within_deadline(|| {
        let ctx = ctx();
        watch_teardown_panics();
        let local_dir = ctx.env().local_dir.clone();
        let rdd = ctx.parallelize((0..4u32).collect(), 4).map(|x| {
            // The task takes the held handle and drops it.
            if let Some(c) = HELD.lock().unwrap_or_else(|p| p.into_inner()).take() {
                drop(c);
                DROPPED_IN_TASK.fetch_add(1, Ordering::SeqCst);
            }
            x
        });
        *HELD.lock().unwrap() = Some(ctx.clone());
        let handle = ctx.submit_job(&rdd, collect_fn_u32(), None).unwrap();
        // The driver lets go of every handle; the rest are held by the job's stage (on the
        // scheduler thread) and its task bodies (on task threads), so the very last handle goes
        // away on one of those threads, which must not wait for itself.
        drop((handle, rdd, ctx));
        wait_until_removed(&local_dir);
    });
    assert_eq!(DROPPED_IN_TASK.load(Ordering::SeqCst), 1);
    assert_eq!(TEARDOWN_PANICS.load(Ordering::SeqCst), 0, "a thread panicked while the context stopped");
    assert!(HELD.lock().unwrap().is_none());
}

fn collect_fn_u32() -> ember_core::ship::Ship<dyn ember_core::PartitionFn<u32, Vec<u32>>> {
    ember_core::ship::Ship::new(ember_core::rdd::CollectPartition::default())
}

/// A record whose `Deserialize` impl panics: made inside tasks, it is decoded only on the
/// driver, when an encoded result arrives at the scheduler.
#[derive(Clone, Debug, serde::Serialize)]
struct Undecodable(u32);

impl<'de> serde::Deserialize<'de> for Undecodable {
    fn deserialize<D: serde::Deserializer<'de>>(_: D) -> std::result::Result<Self, D::Error> {
        panic!("Undecodable refuses to be decoded")
    }
}

#[test]
fn a_panic_decoding_a_result_fails_only_its_job() {
    let ctx = ctx_with(true);
    // A job in flight at the same time, on the same scheduler: one slow task on one slot, while
    // the other slot runs the failing job.
    let slow = ctx.parallelize((0..8u32).collect(), 1).map(|x| {
        std::thread::sleep(Duration::from_millis(50));
        x * 2
    });
    let running =
        ctx.submit_job(&slow, ember_core::ship::Ship::new(ember_core::rdd::CollectPartition::default()), None).unwrap();
    let e = ctx.parallelize(vec![1u32, 2], 2).map(Undecodable).collect().unwrap_err();
    assert!(matches!(e, Error::UserPanic(_)), "{e:?}");
    assert!(e.to_string().contains("refuses to be decoded"), "{e}");
    let out: Vec<u32> = running.wait().unwrap().into_iter().flatten().collect();
    assert_eq!(out, (0..8u32).map(|x| x * 2).collect::<Vec<_>>());
    assert_usable(&ctx);
}

/// A job whose shuffle stage was skipped because a cached RDD covered it, and then finds the
/// cache and the shuffle output both lost, still recovers: the fetch failure creates the map
/// stage it never planned and runs it for the lost output only.
#[test]
fn a_fetch_failure_under_a_skipped_shuffle_creates_its_map_stage() {
    let ctx = ctx();
    let pairs = ctx.parallelize((0..400u32).map(|i| (i % 10, 1u32)).collect(), 4);
    let summed = pairs.reduce_by_key(|a, b| a + b, Some(2));
    let cached = summed.persist(ember_core::StorageLevel::DiskOnly).unwrap();
    assert_eq!(cached.count().unwrap(), 10);
    let dep = match cached.dependencies().into_iter().next() {
        Some(ember_core::Dependency::Shuffle(d)) => d,
        other => panic!("expected a shuffle dependency, got {other:?}"),
    };
    // Both the cached partition 0 and map output 1 are lost.
    assert!(lose_map_output(&ctx, dep.shuffle_id(), 1));
    let block = ctx.env().local_dir.join("blocks").join(format!("rdd_{}_0", cached.id().0));
    std::fs::remove_file(&block).expect("the cached block is on disk");
    let mut got = cached.map(|(k, n)| (k, n * 2)).collect().unwrap();
    got.sort();
    assert_eq!(got, (0..10u32).map(|k| (k, 80)).collect::<Vec<_>>());
    let summary = ctx.last_job_summary().unwrap();
    let map_stage = summary.stages.iter().find(|s| s.name.starts_with("shuffle")).expect("the map stage ran");
    assert_eq!(map_stage.launched, 1, "only the lost map output is recomputed: {summary:?}");
    assert!(summary.stages.iter().any(|s| s.fetch_failures > 0), "{summary:?}");
}

/// An accumulator whose merge panics on the driver fails its job with the message; the context
/// stays usable.
#[test]
fn a_panicking_accumulator_merge_fails_only_its_job() {
    #[derive(serde::Serialize, serde::Deserialize)]
    struct Fussy;
    impl ember_core::AccumulatorParam for Fussy {
        type Value = u64;
        fn zero(&self) -> u64 {
            0
        }
        fn merge(&self, acc: &mut u64, update: u64) {
            if update == 13 {
                panic!("thirteen is not welcome");
            }
            *acc += update;
        }
    }
    for ctx in both() {
        let acc = ctx.accumulator(Fussy);
        // A job running meanwhile must not be failed with it.
        let slow = ctx.parallelize((0..6u64).collect(), 1).map(|x| {
            std::thread::sleep(Duration::from_millis(40));
            x
        });
        std::thread::scope(|s| {
            let other = s.spawn(|| slow.count());
            std::thread::sleep(Duration::from_millis(20));
            // The task merges 6 and 7 into its buffered update, 13, which the driver then merges.
            let err = ctx.parallelize(vec![6u64, 7], 1).foreach_with(acc.clone(), |a, x| a.add(x)).unwrap_err();
            assert!(err.to_string().contains("thirteen"), "{err}");
            assert_eq!(other.join().unwrap().unwrap(), 6, "the other job is not failed");
        });
        assert_eq!(ctx.parallelize((0..10u64).collect(), 2).count().unwrap(), 10);
    }
}
