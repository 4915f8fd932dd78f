//! The executor backend: the seam between the task scheduler and whatever runs tasks.
//!
//! Everything that crosses it is plain data: a [`TaskLaunch`] goes out, a [`TaskStatus`] comes
//! back (result or error with its class, metrics, accumulator updates). The first backend,
//! [`LocalBackend`], runs tasks on slot threads of this process; with
//! `ember.local.serializeTasks=true` it sends every launch and every status through bytes, as a
//! remote executor would receive and send them.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender};
use serde::{Deserialize, Serialize};

use crate::accumulator::{self, AccumUpdates};
use crate::env::Env;
use crate::error::{Error, Result, WireError};
use crate::ship::{Ship, ShipKey};
use crate::shuffle::MapStatus;
use crate::task::{panic_message, StageId, TaskBody, TaskContext, TaskMetrics, TaskOutput};

/// A task's code: shared in memory, or encoded as for a remote executor.
pub enum TaskPayload {
    /// The body itself (local mode).
    Local(Ship<dyn TaskBody>),
    /// The encoded body, shared by all tasks of a stage attempt.
    Encoded(Arc<Vec<u8>>),
}

/// A task to run.
pub struct TaskLaunch {
    /// Unique per attempt within the application; the task context's `task_attempt_id`.
    pub task_id: u64,
    /// Its stage.
    pub stage: StageId,
    /// The stage's attempt.
    pub stage_attempt: u32,
    /// Index of the task within its stage.
    pub index: usize,
    /// The partition it computes.
    pub partition: usize,
    /// Attempt number of this task, from 0.
    pub attempt: u32,
    /// The map output tracker's epoch when the task was launched.
    pub epoch: u64,
    /// Executors holding cached input of the task, most preferred first (empty: none known).
    /// A backend with several executors waits a while (`ember.locality.wait`) for a slot on one
    /// of them before it runs the task elsewhere.
    pub preferred: Vec<Arc<str>>,
    /// The cached partition (`rdd`, `split`) up the task's narrow lineage that `preferred` hold:
    /// a task run elsewhere reads it from one of them instead of computing it again.
    pub cached_input: Option<(crate::storage::RddId, usize)>,
    /// Set for a task pre-scheduled with its group (Drizzle): it goes at once to the executor
    /// `preferred` names, which holds it until what it lists is there, then runs it.
    pub after: Option<Arc<Prerequisites>>,
    /// A speculative copy of a slow attempt: a backend with several executors runs it on
    /// another executor than the one running that attempt.
    pub speculative: bool,
    /// Its code and data.
    pub body: TaskPayload,
}

/// Where the scheduler would have a task run (see [`TaskLaunch`]'s fields of the same names).
#[derive(Debug, Clone, Default)]
pub struct Placement {
    /// Executors holding its cached input, most preferred first.
    pub preferred: Vec<Arc<str>>,
    /// That cached input.
    pub cached_input: Option<(crate::storage::RddId, usize)>,
    /// What it waits for, when pre-scheduled.
    pub after: Option<Arc<Prerequisites>>,
}

/// What a pre-scheduled task waits for on its executor.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Prerequisites {
    /// Shuffles whose every map output must be known (with their map counts): map tasks
    /// announce their outputs to the other executors as they finish.
    pub shuffles: Vec<(crate::shuffle::ShuffleId, usize)>,
    /// Cached partitions (RDD, split) that an earlier task of the group computes on the same
    /// executor: the task waits for them, or for that executor to have nothing earlier left
    /// to run, and then computes what is missing itself.
    pub blocks: Vec<(crate::storage::RddId, usize)>,
}

/// What became of a task.
pub struct TaskStatus {
    /// The attempt, as launched.
    pub task_id: u64,
    /// Its stage.
    pub stage: StageId,
    /// The stage's attempt.
    pub stage_attempt: u32,
    /// Index of the task within its stage.
    pub index: usize,
    /// Attempt number of this task.
    pub attempt: u32,
    /// The tracker's epoch at launch.
    pub epoch: u64,
    /// Its output or its error.
    pub result: Result<TaskOutput>,
    /// What it did.
    pub metrics: TaskMetrics,
    /// Its accumulator updates, to merge on the driver if it succeeded.
    pub updates: AccumUpdates,
}

/// Where tasks run. Implementations must report exactly one status per launched task, including
/// tasks killed before they started (as `Error::Cancelled`), and must report the tasks of an
/// executor they lose as failed.
pub trait ExecutorBackend: Send + Sync {
    /// Task slots in all.
    fn slots(&self) -> usize;
    /// Queues a task.
    fn launch(&self, task: TaskLaunch);
    /// Asks tasks to stop: queued ones never start, running ones stop at their next check.
    fn kill(&self, task_ids: &[u64]);
    /// Deletes a map output the scheduler will not use (a losing or stale attempt's).
    fn discard_map_output(&self, status: &MapStatus);
    /// The executors that can take pre-scheduled tasks ([`TaskLaunch::after`]); empty when the
    /// backend does not pre-schedule (tasks then run stage after stage).
    fn executors(&self) -> Vec<Arc<str>> {
        Vec::new()
    }
    /// Sends what [`launch`](Self::launch) gathered (pre-scheduled tasks go out together, one
    /// message per executor); the scheduler calls it after each event.
    fn flush(&self) {}
    /// Stops the backend; queued tasks are dropped.
    fn stop(&self);
}

// ---- wire forms ------------------------------------------------------------------------------

#[derive(Serialize, Deserialize)]
struct WireLaunch<'a> {
    task_id: u64,
    stage: StageId,
    stage_attempt: u32,
    index: usize,
    partition: usize,
    attempt: u32,
    epoch: u64,
    #[serde(borrow)]
    body: &'a [u8],
}

#[derive(Serialize, Deserialize)]
enum WireOutput {
    Map(MapStatus),
    Value(Vec<u8>),
}

#[derive(Serialize, Deserialize)]
struct WireStatus {
    task_id: u64,
    stage: StageId,
    stage_attempt: u32,
    index: usize,
    attempt: u32,
    epoch: u64,
    result: std::result::Result<WireOutput, WireError>,
    metrics: TaskMetrics,
    updates: Vec<(u64, Vec<u8>)>,
}

fn encode_status(s: TaskStatus) -> Result<Vec<u8>> {
    let result = match s.result {
        Ok(TaskOutput::Map(m)) => Ok(WireOutput::Map(m)),
        Ok(TaskOutput::Encoded(b)) => Ok(WireOutput::Value(b)),
        Ok(TaskOutput::Value(_)) => {
            return Err(Error::Internal("a result crossed the backend without being encoded".into()))
        }
        Err(e) => Err(WireError::from(&e)),
    };
    let updates = match s.updates {
        AccumUpdates::Encoded(v) => v,
        AccumUpdates::Local(_) => {
            return Err(Error::Internal("accumulator updates crossed the backend without being encoded".into()))
        }
    };
    let wire = WireStatus {
        task_id: s.task_id,
        stage: s.stage,
        stage_attempt: s.stage_attempt,
        index: s.index,
        attempt: s.attempt,
        epoch: s.epoch,
        result,
        metrics: s.metrics,
        updates,
    };
    Ok(postcard::to_allocvec(&wire)?)
}

fn decode_status(bytes: &[u8]) -> Result<TaskStatus> {
    let w: WireStatus = postcard::from_bytes(bytes)?;
    Ok(TaskStatus {
        task_id: w.task_id,
        stage: w.stage,
        stage_attempt: w.stage_attempt,
        index: w.index,
        attempt: w.attempt,
        epoch: w.epoch,
        result: match w.result {
            Ok(WireOutput::Map(m)) => Ok(TaskOutput::Map(m)),
            Ok(WireOutput::Value(b)) => Ok(TaskOutput::Encoded(b)),
            Err(e) => Err(Error::from(e)),
        },
        metrics: w.metrics,
        updates: AccumUpdates::Encoded(w.updates),
    })
}

// ---- the local backend -----------------------------------------------------------------------

/// Receives task statuses (the task scheduler's inbox).
pub type StatusSink = Box<dyn Fn(TaskStatus) + Send + Sync>;

/// How a [`LocalBackend`] moves tasks and their results.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Task bodies and results stay in memory (local mode).
    InMemory,
    /// Every launch and status goes through bytes, as it would to and from a remote executor
    /// (`ember.local.serializeTasks=true`).
    Rehearse,
    /// The executor of a cluster: launches arrive encoded, results and accumulator updates
    /// leave encoded; the runtime carries them.
    Executor,
}

impl Mode {
    /// Whether results and accumulator updates are encoded.
    fn encodes(self) -> bool {
        self != Mode::InMemory
    }
}

enum Queued {
    Local(TaskLaunch),
    /// An encoded launch, with its task's identity kept aside so that even a launch that fails
    /// to decode gets its one status.
    Bytes(Vec<u8>, TaskLaunch),
}

struct Shared {
    env: Arc<Env>,
    mode: Mode,
    /// The key task bodies are decoded with: this process's own, or the application's.
    key: ShipKey,
    sink: StatusSink,
    /// Kill flags of queued and running tasks.
    kills: Mutex<HashMap<u64, Arc<AtomicBool>>>,
}

/// Runs tasks on slot threads of this process.
pub(crate) struct LocalBackend {
    shared: Arc<Shared>,
    queue: Mutex<Option<Sender<Queued>>>,
    workers: Mutex<Vec<JoinHandle<()>>>,
    slots: usize,
}

/// Stack size of task threads.
pub(crate) const TASK_STACK_BYTES: usize = 64 << 20;

impl LocalBackend {
    pub(crate) fn start(
        slots: usize,
        env: Arc<Env>,
        mode: Mode,
        key: ShipKey,
        sink: StatusSink,
    ) -> Result<LocalBackend> {
        let (tx, rx) = crossbeam_channel::unbounded::<Queued>();
        let shared = Arc::new(Shared { env, mode, key, sink, kills: Mutex::new(HashMap::new()) });
        let mut workers = Vec::new();
        for i in 0..slots {
            let rx = rx.clone();
            let shared = shared.clone();
            let h = std::thread::Builder::new()
                .name(format!("ember-task-{i}"))
                // Computing an uncached partition recurses through its lineage; long iterative
                // lineages need more than the default 2 MiB (checkpoint() truncates them).
                .stack_size(TASK_STACK_BYTES)
                .spawn(move || slot_loop(rx, shared))
                .map_err(|e| Error::ResourcesExhausted(format!("cannot start task thread: {e}")))?;
            workers.push(h);
        }
        Ok(LocalBackend { shared, queue: Mutex::new(Some(tx)), workers: Mutex::new(workers), slots })
    }
}

impl ExecutorBackend for LocalBackend {
    fn slots(&self) -> usize {
        self.slots
    }

    fn launch(&self, task: TaskLaunch) {
        self.shared.kills.lock().unwrap_or_else(|p| p.into_inner()).insert(task.task_id, Arc::default());
        let queued = if self.shared.mode == Mode::Rehearse {
            match encode_launch(&task, &self.shared.key) {
                Ok(b) => Queued::Bytes(b, TaskLaunch { body: TaskPayload::Encoded(Arc::default()), ..task }),
                Err(e) => {
                    report(&self.shared, failed_status(&task, e));
                    return;
                }
            }
        } else {
            Queued::Local(task)
        };
        if let Some(q) = self.queue.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            let _ = q.send(queued);
        }
    }

    fn kill(&self, task_ids: &[u64]) {
        let kills = self.shared.kills.lock().unwrap_or_else(|p| p.into_inner());
        for id in task_ids {
            if let Some(flag) = kills.get(id) {
                flag.store(true, Ordering::Relaxed);
            }
        }
    }

    fn discard_map_output(&self, status: &MapStatus) {
        self.shared.env.shuffle.delete_output(status);
    }

    fn stop(&self) {
        self.queue.lock().unwrap_or_else(|p| p.into_inner()).take();
        // Queued tasks are dropped (they report `Cancelled` without starting) and running ones
        // stop at their next check.
        for flag in self.shared.kills.lock().unwrap_or_else(|p| p.into_inner()).values() {
            flag.store(true, Ordering::Relaxed);
        }
        let me = std::thread::current().id();
        for h in self.workers.lock().unwrap_or_else(|p| p.into_inner()).drain(..) {
            // A slot thread may drop the last context handle; it cannot wait for itself.
            if h.thread().id() != me {
                let _ = h.join();
            }
        }
    }
}

impl Drop for LocalBackend {
    fn drop(&mut self) {
        self.stop();
    }
}

fn encode_launch(t: &TaskLaunch, key: &ShipKey) -> Result<Vec<u8>> {
    let encoded;
    let body: &[u8] = match &t.body {
        TaskPayload::Encoded(b) => b,
        TaskPayload::Local(s) => {
            encoded = key.encode(s)?;
            &encoded
        }
    };
    let w = WireLaunch {
        task_id: t.task_id,
        stage: t.stage,
        stage_attempt: t.stage_attempt,
        index: t.index,
        partition: t.partition,
        attempt: t.attempt,
        epoch: t.epoch,
        body,
    };
    Ok(postcard::to_allocvec(&w)?)
}

fn decode_launch(bytes: &[u8]) -> Result<TaskLaunch> {
    let w: WireLaunch<'_> = postcard::from_bytes(bytes)?;
    Ok(TaskLaunch {
        task_id: w.task_id,
        stage: w.stage,
        stage_attempt: w.stage_attempt,
        index: w.index,
        partition: w.partition,
        attempt: w.attempt,
        epoch: w.epoch,
        preferred: Vec::new(),
        cached_input: None,
        after: None,
        speculative: false,
        body: TaskPayload::Encoded(Arc::new(w.body.to_vec())),
    })
}

/// Which attempt a status is about: what a failure report needs.
#[derive(Clone, Copy)]
struct Attempt {
    task_id: u64,
    stage: StageId,
    stage_attempt: u32,
    index: usize,
    attempt: u32,
    epoch: u64,
}

impl Attempt {
    fn of_launch(t: &TaskLaunch) -> Attempt {
        Attempt {
            task_id: t.task_id,
            stage: t.stage,
            stage_attempt: t.stage_attempt,
            index: t.index,
            attempt: t.attempt,
            epoch: t.epoch,
        }
    }

    fn of_status(s: &TaskStatus) -> Attempt {
        Attempt {
            task_id: s.task_id,
            stage: s.stage,
            stage_attempt: s.stage_attempt,
            index: s.index,
            attempt: s.attempt,
            epoch: s.epoch,
        }
    }

    /// A status reporting that this attempt failed with `e` (no metrics, no updates).
    fn failed(self, e: Error) -> TaskStatus {
        TaskStatus {
            task_id: self.task_id,
            stage: self.stage,
            stage_attempt: self.stage_attempt,
            index: self.index,
            attempt: self.attempt,
            epoch: self.epoch,
            result: Err(e),
            metrics: TaskMetrics::default(),
            updates: AccumUpdates::Encoded(Vec::new()),
        }
    }
}

fn failed_status(t: &TaskLaunch, e: Error) -> TaskStatus {
    t.failed(e)
}

impl TaskLaunch {
    /// The status reporting that this attempt failed with `e` (no metrics, no updates): for a
    /// task killed before it started, lost with its executor, or that could not be sent.
    pub fn failed(&self, e: Error) -> TaskStatus {
        Attempt::of_launch(self).failed(e)
    }
}

/// Hands a status to the scheduler, through bytes when rehearsing a remote executor.
fn report(shared: &Shared, status: TaskStatus) {
    let status = if shared.mode == Mode::Rehearse {
        let attempt = Attempt::of_status(&status);
        encode_status(status).and_then(|b| decode_status(&b)).unwrap_or_else(|e| attempt.failed(e))
    } else {
        status
    };
    (shared.sink)(status);
}

fn slot_loop(rx: Receiver<Queued>, shared: Arc<Shared>) {
    while let Ok(q) = rx.recv() {
        let task = match q {
            Queued::Local(t) => t,
            Queued::Bytes(b, identity) => match decode_launch(&b) {
                Ok(t) => t,
                Err(e) => {
                    shared.kills.lock().unwrap_or_else(|p| p.into_inner()).remove(&identity.task_id);
                    report(&shared, failed_status(&identity, e));
                    continue;
                }
            },
        };
        let kill =
            shared.kills.lock().unwrap_or_else(|p| p.into_inner()).get(&task.task_id).cloned().unwrap_or_default();
        let status = if kill.load(Ordering::Relaxed) {
            // Killed while queued: it never starts.
            failed_status(&task, Error::Cancelled("the task was killed before it started".into()))
        } else {
            run_task(task, &shared, kill)
        };
        shared.kills.lock().unwrap_or_else(|p| p.into_inner()).remove(&status.task_id);
        report(&shared, status);
    }
}

fn run_task(task: TaskLaunch, shared: &Shared, kill: Arc<AtomicBool>) -> TaskStatus {
    let env = &shared.env;
    let serialize = shared.mode.encodes();
    let _executor = crate::env::enter(env);
    let tc = TaskContext::new(task.stage, task.partition, task.attempt, task.task_id, env.clone(), kill)
        .with_remote_input(task.cached_input, &task.preferred);
    let started = Instant::now();
    accumulator::begin_task();
    let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| -> Result<TaskOutput> {
        let body = match &task.body {
            TaskPayload::Local(b) => b.clone(),
            TaskPayload::Encoded(bytes) => shared.key.decode::<Ship<dyn TaskBody>>(bytes)?,
        };
        let out = body.run(task.partition, &tc)?;
        if let Some(e) = tc.take_error() {
            if let TaskOutput::Map(status) = &out {
                env.shuffle.delete_output(status);
            }
            return Err(e);
        }
        match out {
            TaskOutput::Value(v) if serialize => Ok(TaskOutput::Encoded(body.encode_value(v)?)),
            other => Ok(other),
        }
    }));
    let updates = accumulator::end_task(serialize);
    env.blocks.release_task(task.task_id);
    let result = match outcome {
        Ok(r) => r,
        Err(payload) => Err(Error::UserPanic(panic_message(&*payload))),
    };
    // A task that stopped because it was killed reports cancellation, whatever error its
    // interrupted iterators produced on the way out.
    let result = match result {
        Err(e) if tc.is_killed() && !matches!(e, Error::Cancelled(_)) => {
            Err(Error::Cancelled(format!("the task was killed ({e})")))
        }
        r => r,
    };
    let mut metrics = tc.metrics();
    metrics.run_micros = started.elapsed().as_micros() as u64;
    TaskStatus {
        task_id: task.task_id,
        stage: task.stage,
        stage_attempt: task.stage_attempt,
        index: task.index,
        attempt: task.attempt,
        epoch: task.epoch,
        result,
        metrics,
        updates,
    }
}
