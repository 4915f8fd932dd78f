//! Checkpoints release the lineage they replace: ancestors the program holds no other handle on
//! go, with their cached blocks and the outputs of the shuffles they fed, while values stay exact
//! and jobs running meanwhile finish with the lineage they started with.

use std::path::PathBuf;
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use ember_core::shuffle::ShuffleId;
use ember_core::storage::{BlockId, RddId};
use ember_core::{Accumulator, Context, Dependency, LongSum, Rdd};

use super::common::ctx_conf;
use super::model::sorted;

/// Keys of the test data.
const KEYS: u64 = 13;

fn data() -> Vec<(u64, u64)> {
    (0..600).map(|i| (i % KEYS, i)).collect()
}

/// What `reduced(..)` holds: the sum of `3 * v` for each key.
fn sums() -> Vec<(u64, u64)> {
    (0..KEYS).map(|k| (k, data().iter().filter(|(dk, _)| *dk == k).map(|(_, v)| 3 * v).sum())).collect()
}

/// A context writing checkpoints into `dir`; `files` sends every map output to a file.
fn context(dir: &tempfile::TempDir, serialize: bool, files: bool) -> Context {
    let threshold = if files { "0" } else { "1m" };
    let ctx = ctx_conf(&[("ember.shuffle.inMemoryThreshold", threshold)], serialize);
    ctx.set_checkpoint_dir(dir.path()).unwrap();
    ctx
}

/// The contexts every test runs in: in-memory and encoded tasks, map outputs in memory and in
/// files.
fn cases() -> Vec<(String, bool, bool)> {
    let mut v = Vec::new();
    for serialize in [false, true] {
        for files in [false, true] {
            v.push((format!("serialize={serialize} files={files}"), serialize, files));
        }
    }
    v
}

/// The data times three, cached (each record computed counted in `computed`).
fn cached(ctx: &Context, computed: &Accumulator<LongSum>) -> Rdd<(u64, u64)> {
    ctx.parallelize(data(), 4)
        .map_with(computed.clone(), |acc, (k, v)| {
            acc.add(1);
            (k, v * 3)
        })
        .cache()
        .unwrap()
}

/// The cached blocks of `rdd`.
fn blocks_of(ctx: &Context, rdd: RddId) -> usize {
    ctx.storage_status().blocks.iter().filter(|b| matches!(b.id, BlockId::Rdd { rdd: r, .. } if r == rdd)).count()
}

/// The shuffle `rdd` reads.
fn shuffle_of<T: ember_core::Data>(rdd: &Rdd<T>) -> ShuffleId {
    match rdd.dependencies().first() {
        Some(Dependency::Shuffle(d)) => d.shuffle_id(),
        other => panic!("rdd {} reads no shuffle: {other:?}", rdd.id().0),
    }
}

/// The registered outputs of a shuffle, and the data files of those kept in files.
fn outputs(ctx: &Context, shuffle: ShuffleId) -> (usize, Vec<PathBuf>) {
    let statuses = ctx.map_output_tracker().statuses(shuffle);
    let files = statuses.iter().flatten().filter_map(|s| s.data.clone()).collect();
    (statuses.iter().flatten().count(), files)
}

/// Asserts that the shuffle's four map outputs are registered and stored (as files or in memory).
fn assert_outputs_kept(ctx: &Context, shuffle: ShuffleId, files: bool, case: &str) -> Vec<PathBuf> {
    let (registered, paths) = outputs(ctx, shuffle);
    assert_eq!(registered, 4, "{case}: every map output is registered");
    if files {
        assert_eq!(paths.len(), 4, "{case}: {paths:?}");
        assert!(paths.iter().all(|p| p.exists() && p.with_extension("index").exists()), "{case}: {paths:?}");
    } else {
        assert!(paths.is_empty(), "{case}: {paths:?}");
        assert!(ctx.storage_status().shuffle_memory_bytes > 0, "{case}: the outputs are in memory");
    }
    paths
}

/// Asserts that the shuffle's outputs are unregistered and deleted.
fn assert_outputs_released(ctx: &Context, shuffle: ShuffleId, paths: &[PathBuf], case: &str) {
    assert_eq!(outputs(ctx, shuffle).0, 0, "{case}: the map outputs are still registered");
    let left: Vec<&PathBuf> = paths.iter().filter(|p| p.exists() || p.with_extension("index").exists()).collect();
    assert!(left.is_empty(), "{case}: shuffle files left: {left:?}");
    assert_eq!(ctx.storage_status().shuffle_memory_bytes, 0, "{case}: map outputs left in memory");
}

#[test]
fn a_checkpoint_releases_cached_ancestors_and_shuffle_outputs() {
    for (case, serialize, files) in cases() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = context(&dir, serialize, files);
        let computed = ctx.long_accumulator();
        let cached = cached(&ctx, &computed);
        let reduced = cached.reduce_by_key(|a, b| a + b, Some(3));
        let last = reduced.map(|(k, v)| (k, v + 1));
        let want: Vec<(u64, u64)> = sums().into_iter().map(|(k, v)| (k, v + 1)).collect();
        assert_eq!(sorted(last.collect().unwrap()), want, "{case}");

        let (cached_id, shuffle) = (cached.id(), shuffle_of(&reduced));
        assert_eq!(blocks_of(&ctx, cached_id), 4, "{case}: every partition is cached");
        let paths = assert_outputs_kept(&ctx, shuffle, files, &case);

        // The program lets go of the ancestors; only the checkpointed RDD's lineage holds them.
        drop((cached, reduced));
        assert_eq!(blocks_of(&ctx, cached_id), 4, "{case}: the lineage still holds the cached RDD");
        last.checkpoint().unwrap();
        assert!(last.dependencies().is_empty(), "{case}");
        assert_eq!(blocks_of(&ctx, cached_id), 0, "{case}: the cached ancestor's blocks are left");
        assert_outputs_released(&ctx, shuffle, &paths, &case);

        // Later actions read the checkpoint and see the same values.
        assert_eq!(sorted(last.collect().unwrap()), want, "{case}");
        let odd = last.filter(|(k, _)| k % 2 == 1).map(|(k, v)| (k % 3, v)).reduce_by_key(|a, b| a + b, None);
        let mut want_odd = [0u64; 3];
        for (k, v) in want.iter().filter(|(k, _)| k % 2 == 1) {
            want_odd[(k % 3) as usize] += v;
        }
        let want_odd: Vec<(u64, u64)> = (0..3).map(|k| (k, want_odd[k as usize])).collect();
        assert_eq!(sorted(odd.collect().unwrap()), want_odd, "{case}");
        assert_eq!(computed.value().unwrap(), 600, "{case}: the released ancestors were not recomputed");
    }
}

#[test]
fn ancestors_the_program_holds_stay_cached_after_a_checkpoint() {
    for (case, serialize, files) in cases() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = context(&dir, serialize, files);
        let computed = ctx.long_accumulator();
        let cached = cached(&ctx, &computed);
        let reduced = cached.reduce_by_key(|a, b| a + b, Some(3));
        let last = reduced.map(|(k, v)| (k, v + 1));
        assert_eq!(last.count().unwrap(), KEYS, "{case}");
        let shuffle = shuffle_of(&reduced);
        let paths = assert_outputs_kept(&ctx, shuffle, files, &case);

        // The program keeps the cached RDD, not the shuffle: only the shuffle goes.
        drop(reduced);
        last.checkpoint().unwrap();
        assert_outputs_released(&ctx, shuffle, &paths, &case);
        assert_eq!(blocks_of(&ctx, cached.id()), 4, "{case}: a cached RDD the program holds lost its blocks");
        let mut want = data();
        for kv in &mut want {
            kv.1 *= 3;
        }
        assert_eq!(sorted(cached.collect().unwrap()), sorted(want), "{case}");
        assert_eq!(computed.value().unwrap(), 600, "{case}: the cached RDD was recomputed");

        // A shuffled RDD the program holds keeps its shuffle outputs, and so its parent's cache.
        let kept = cached.reduce_by_key(|a, b| a + b, Some(2));
        let last = kept.map_values(|v| v * 2);
        assert_eq!(last.count().unwrap(), KEYS, "{case}");
        let shuffle = shuffle_of(&kept);
        assert_outputs_kept(&ctx, shuffle, files, &case);
        drop(cached);
        last.checkpoint().unwrap();
        assert_outputs_kept(&ctx, shuffle, files, &case);
        assert_eq!(sorted(kept.collect().unwrap()), sums(), "{case}");
        assert_eq!(computed.value().unwrap(), 600, "{case}: the shuffle's parent was recomputed");
    }
}

#[test]
fn a_local_checkpoint_releases_the_lineage_too() {
    for (case, serialize, files) in cases() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = context(&dir, serialize, files);
        let computed = ctx.long_accumulator();
        let cached = cached(&ctx, &computed);
        let reduced = cached.reduce_by_key(|a, b| a + b, Some(3));
        let last = reduced.map(|(k, v)| (k, v + 1));
        let want: Vec<(u64, u64)> = sums().into_iter().map(|(k, v)| (k, v + 1)).collect();
        assert_eq!(last.count().unwrap(), KEYS, "{case}");
        let (cached_id, shuffle) = (cached.id(), shuffle_of(&reduced));
        let paths = assert_outputs_kept(&ctx, shuffle, files, &case);

        drop((cached, reduced));
        last.local_checkpoint().unwrap();
        assert_eq!(blocks_of(&ctx, cached_id), 0, "{case}: the cached ancestor's blocks are left");
        assert_outputs_released(&ctx, shuffle, &paths, &case);
        assert_eq!(blocks_of(&ctx, last.id()), 3, "{case}: the local checkpoint's own blocks");
        assert_eq!(sorted(last.collect().unwrap()), want, "{case}");
        assert_eq!(computed.value().unwrap(), 600, "{case}");
    }
}

// ---- a checkpoint while another job reads the lineage ---------------------------------------

/// The key whose record waits at the gate.
const GATE_KEY: u64 = 5;

/// Holds the task computing `GATE_KEY`'s record until the test opens the gate.
struct Gate {
    /// (a task is waiting, the gate is open)
    state: Mutex<(bool, bool)>,
    changed: Condvar,
}

static GATE: Gate = Gate { state: Mutex::new((false, false)), changed: Condvar::new() };

/// Long enough for any step of the test; a hung step fails the test instead of hanging it.
const PATIENCE: Duration = Duration::from_secs(60);

impl Gate {
    fn reset(&self) {
        *self.state.lock().unwrap() = (false, false);
    }

    /// Called by the task: announces itself and waits until the gate opens.
    fn pass(&self) {
        let mut st = self.state.lock().unwrap();
        st.0 = true;
        self.changed.notify_all();
        let _open = self.changed.wait_timeout_while(st, PATIENCE, |s| !s.1).unwrap();
    }

    /// Waits until a task waits at the gate.
    fn await_task(&self) -> bool {
        let st = self.state.lock().unwrap();
        let (st, _) = self.changed.wait_timeout_while(st, PATIENCE, |s| !s.0).unwrap();
        st.0
    }

    fn open(&self) {
        self.state.lock().unwrap().1 = true;
        self.changed.notify_all();
    }
}

#[test]
fn a_job_reading_the_lineage_during_a_checkpoint_gets_exact_values() {
    for (case, serialize, files) in cases() {
        GATE.reset();
        let dir = tempfile::tempdir().unwrap();
        let ctx = context(&dir, serialize, files);
        let computed = ctx.long_accumulator();
        // The cached RDD comes after the shuffle: nothing but the checkpointed RDD's lineage
        // holds it, not even the running job's shuffle stage.
        let cached = ctx
            .parallelize(data(), 4)
            .reduce_by_key(|a, b| a + b, Some(4))
            .map_with(computed.clone(), |acc, (k, v)| {
                acc.add(1);
                (k, v * 3)
            })
            .cache()
            .unwrap();
        let cached_id = cached.id();
        let last = cached.map(|(k, v)| (k, v + 1));
        drop(cached);
        assert_eq!(last.count().unwrap(), KEYS, "{case}");
        assert_eq!(blocks_of(&ctx, cached_id), 4, "{case}");

        let child = last.map(|(k, v)| {
            if k == GATE_KEY {
                GATE.pass();
            }
            (k, v + 1)
        });
        let reader = std::thread::spawn(move || child.collect());
        assert!(GATE.await_task(), "{case}: no task reached the gate");
        // A task of the child's job now holds iterators over `last`'s lineage, down to the
        // cached blocks.
        last.checkpoint().unwrap();
        if !serialize {
            // That task keeps the lineage it reads alive: the cached RDD is still there. (Encoded
            // tasks compute from their own copies of the lineage, so the driver's is released.)
            assert_eq!(blocks_of(&ctx, cached_id), 4, "{case}: the lineage was released under a running task");
        }
        GATE.open();
        let got = reader.join().expect("the reading thread").unwrap();
        let want: Vec<(u64, u64)> = sums().into_iter().map(|(k, v)| (k, v + 2)).collect();
        assert_eq!(sorted(got), want, "{case}");
        if !serialize {
            assert_eq!(blocks_of(&ctx, cached_id), 0, "{case}: the lineage outlived the job that read it");
        }
        let want: Vec<(u64, u64)> = sums().into_iter().map(|(k, v)| (k, v + 1)).collect();
        assert_eq!(sorted(last.collect().unwrap()), want, "{case}");
    }
}

#[test]
fn concurrent_checkpoints_of_one_rdd_write_it_once() {
    for local in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let ctx = context(&dir, false, false);
        let computed = ctx.long_accumulator();
        // About 150 ms per write on two slots: the calls below overlap.
        let rdd = ctx.parallelize(data(), 4).map_with(computed.clone(), |acc, (k, v)| {
            acc.add(1);
            std::thread::sleep(Duration::from_micros(500));
            (k, v * 3)
        });
        let calls: Vec<_> = (0..3)
            .map(|_| {
                let r = rdd.clone();
                std::thread::spawn(move || if local { r.local_checkpoint() } else { r.checkpoint() })
            })
            .collect();
        for c in calls {
            c.join().expect("the checkpointing thread").unwrap();
        }
        assert!(rdd.is_checkpointed());
        assert_eq!(computed.value().unwrap(), 600, "local: {local}: the checkpoint was written more than once");
        let want: Vec<(u64, u64)> = sorted(data().into_iter().map(|(k, v)| (k, v * 3)).collect());
        assert_eq!(sorted(rdd.collect().unwrap()), want, "local: {local}");
        assert_eq!(computed.value().unwrap(), 600, "local: {local}: read back, not recomputed");
    }
}

/// The RDD whose own function checkpoints it, below.
static SELF_CHECKPOINTING: Mutex<Option<Rdd<u64>>> = Mutex::new(None);
/// What its nested checkpoint calls returned.
static NESTED: Mutex<Vec<String>> = Mutex::new(Vec::new());

#[test]
fn a_checkpoint_from_inside_its_own_job_is_refused_not_deadlocked() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = context(&dir, false, false);
    let rdd = ctx.parallelize((0..40u64).collect(), 2).map(|x| {
        let me = SELF_CHECKPOINTING.lock().unwrap().clone();
        if let Some(me) = me {
            let got = me.checkpoint().map_or_else(|e| e.to_string(), |()| "written".into());
            NESTED.lock().unwrap().push(got);
        }
        x
    });
    *SELF_CHECKPOINTING.lock().unwrap() = Some(rdd.clone());
    let (tx, rx) = std::sync::mpsc::channel();
    let outer = rdd.clone();
    std::thread::spawn(move || tx.send(outer.checkpoint().map_err(|e| e.to_string())));
    let done = rx.recv_timeout(Duration::from_secs(60)).expect("the checkpoint deadlocked");
    SELF_CHECKPOINTING.lock().unwrap().take();
    done.unwrap();
    let nested = NESTED.lock().unwrap().clone();
    assert!(!nested.is_empty(), "the function never ran");
    assert!(nested.iter().all(|m| m.contains("checkpoints are written from the driver")), "{nested:?}");
    assert_eq!(sorted(rdd.collect().unwrap()), (0..40).collect::<Vec<u64>>());
}
