//! The DAG scheduler and the local task scheduler.
//!
//! ```text
//!  action ─► JobSpec ─► event loop ─► stages (cut at shuffle dependencies)
//!                          │   submit a stage once its parents' map outputs exist
//!                          ▼
//!                     task queue ─► N slot threads ─► TaskEnd events ─► event loop
//! ```
//!
//! One event loop thread owns all scheduling state; slot threads only run tasks. A group of
//! jobs (`Context::run_jobs`) arrives as one event, so all their stages are created and their
//! runnable tasks queued in one round (Drizzle's group scheduling), instead of one round trip
//! between the caller and the scheduler per job.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use crate::accumulator::{self, AccumUpdates};
use crate::conf::Settings;
use crate::env::Env;
use crate::error::{Error, Result};
use crate::progress::Progress;
use crate::rdd::{Dependency, RddBase};
use crate::ship::Ship;
use crate::shuffle::{ShuffleDepBase, ShuffleId};
use crate::task::{panic_message, JobId, StageId, TaskBody, TaskContext, TaskMetrics, TaskOutput};

/// Stages retried after fetch failures before the job is aborted.
const MAX_STAGE_ATTEMPTS: u32 = 4;

/// Receives the results of one job's tasks.
pub(crate) trait JobListener: Send {
    /// Result task `index` succeeded with `output`.
    fn task_succeeded(&mut self, index: usize, output: TaskOutput) -> Result<()>;
    /// The job ended.
    fn job_finished(self: Box<Self>, result: Result<()>);
}

/// A job to run: the result tasks of `partitions` of `final_rdd`.
pub(crate) struct JobSpec {
    pub(crate) final_rdd: Arc<dyn RddBase>,
    pub(crate) body: Ship<dyn TaskBody>,
    pub(crate) partitions: Vec<usize>,
    pub(crate) listener: Box<dyn JobListener>,
}

/// Metrics of one finished stage.
#[derive(Debug, Clone)]
pub struct StageSummary {
    /// The stage.
    pub id: StageId,
    /// What it computed.
    pub name: String,
    /// Tasks that succeeded.
    pub tasks: usize,
    /// Failed task attempts.
    pub failed_attempts: u32,
    /// Summed task metrics.
    pub metrics: TaskMetrics,
}

/// What a finished (or failed) job did.
#[derive(Debug, Clone)]
pub struct JobSummary {
    /// The job.
    pub id: JobId,
    /// Whether it succeeded.
    pub succeeded: bool,
    /// Wall time from submission to end.
    pub duration: Duration,
    /// Its stages that ran tasks.
    pub stages: Vec<StageSummary>,
}

impl JobSummary {
    /// Metrics summed over all stages.
    pub fn metrics(&self) -> TaskMetrics {
        let mut m = TaskMetrics::default();
        for s in &self.stages {
            m.add(&s.metrics);
        }
        m
    }
}

enum Payload {
    Local(Ship<dyn TaskBody>),
    Encoded(Arc<Vec<u8>>),
}

struct TaskRun {
    stage: StageId,
    stage_attempt: u32,
    index: usize,
    partition: usize,
    attempt: u32,
    payload: Payload,
    cancel: Arc<AtomicBool>,
}

struct TaskEnd {
    stage: StageId,
    stage_attempt: u32,
    index: usize,
    attempt: u32,
    result: Result<TaskOutput>,
    metrics: TaskMetrics,
    updates: AccumUpdates,
}

enum Event {
    Submit(Vec<(JobId, JobSpec)>),
    TaskEnd(Box<TaskEnd>),
    Cancel(Option<JobId>),
    Stop,
}

enum StageKind {
    ShuffleMap { dep: Arc<dyn ShuffleDepBase> },
    Result { job: JobId, partitions: Vec<usize> },
}

struct Running {
    /// Task indexes not yet succeeded in this attempt.
    pending: BTreeSet<usize>,
    cancel: Arc<AtomicBool>,
    started: Instant,
    total: usize,
    in_flight: usize,
}

/// A stage's lifecycle.
enum StageState {
    /// Created, not yet submitted.
    New,
    /// Waiting for parent stages' outputs.
    Waiting,
    /// Tasks are running.
    Running(Running),
    /// All outputs exist.
    Done,
}

struct Stage {
    id: StageId,
    name: String,
    kind: StageKind,
    parents: Vec<StageId>,
    jobs: BTreeSet<JobId>,
    body: Ship<dyn TaskBody>,
    encoded: Option<Arc<Vec<u8>>>,
    state: StageState,
    attempt: u32,
    fetch_failures: u32,
    failures: HashMap<usize, u32>,
    failed_attempts: u32,
    tasks_done: usize,
    metrics: TaskMetrics,
}

struct ActiveJob {
    final_stage: StageId,
    finished: Vec<bool>,
    num_finished: usize,
    listener: Option<Box<dyn JobListener>>,
    started: Instant,
}

/// Handle held by the context: submits events, owns the threads.
pub(crate) struct Scheduler {
    events: Sender<Event>,
    next_job: AtomicU64,
    loop_thread: Mutex<Option<JoinHandle<()>>>,
    workers: Mutex<Vec<JoinHandle<()>>>,
    task_tx: Mutex<Option<Sender<TaskRun>>>,
    summaries: Arc<Mutex<VecDeque<JobSummary>>>,
}

/// Stack size of task threads.
const TASK_STACK_BYTES: usize = 64 << 20;

/// Finished job summaries kept for inspection.
const SUMMARIES_KEPT: usize = 256;

static TASK_ATTEMPT_IDS: AtomicU64 = AtomicU64::new(0);

/// Whether the current thread is a task slot.
pub(crate) fn in_task_thread() -> bool {
    std::thread::current().name().is_some_and(|n| n.starts_with("ember-task-"))
}

/// Panics in user functions are task failures, reported through the job's error; the default
/// hook would also print each one to standard error. Task threads log them at debug level
/// instead; other threads keep the previous hook.
fn install_panic_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if in_task_thread() {
                tracing::debug!("task panicked: {info}");
            } else {
                previous(info);
            }
        }));
    });
}

impl Scheduler {
    pub(crate) fn start(settings: &Settings, env: Arc<Env>) -> Result<Scheduler> {
        install_panic_hook();
        let (events_tx, events_rx) = crossbeam_channel::unbounded::<Event>();
        let (task_tx, task_rx) = crossbeam_channel::unbounded::<TaskRun>();
        let serialize = settings.serialize_tasks;
        let mut workers = Vec::new();
        for i in 0..settings.master.slots() {
            let rx = task_rx.clone();
            let tx = events_tx.clone();
            let env = env.clone();
            let h = std::thread::Builder::new()
                .name(format!("ember-task-{i}"))
                // Computing an uncached partition recurses through its lineage; long iterative
                // lineages need more than the default 2 MiB (checkpoint() truncates them).
                .stack_size(TASK_STACK_BYTES)
                .spawn(move || worker_loop(rx, tx, env, serialize))
                .map_err(|e| Error::ResourcesExhausted(format!("cannot start task thread: {e}")))?;
            workers.push(h);
        }
        let summaries = Arc::new(Mutex::new(VecDeque::new()));
        let mut state = State {
            env,
            settings: settings.clone(),
            task_tx: task_tx.clone(),
            next_stage: 0,
            stages: BTreeMap::new(),
            shuffle_stages: HashMap::new(),
            jobs: HashMap::new(),
            progress: Progress::new(settings.show_progress),
            summaries: summaries.clone(),
        };
        let loop_thread = std::thread::Builder::new()
            .name("ember-dag-scheduler".into())
            // Encoding a task walks its lineage recursively.
            .stack_size(TASK_STACK_BYTES)
            .spawn(move || state.run(events_rx))
            .map_err(|e| Error::ResourcesExhausted(format!("cannot start scheduler thread: {e}")))?;
        Ok(Scheduler {
            events: events_tx,
            next_job: AtomicU64::new(0),
            loop_thread: Mutex::new(Some(loop_thread)),
            workers: Mutex::new(workers),
            task_tx: Mutex::new(Some(task_tx)),
            summaries,
        })
    }

    /// Submits a group of jobs at once; returns their ids.
    pub(crate) fn submit(&self, specs: Vec<JobSpec>) -> Result<Vec<JobId>> {
        let jobs: Vec<(JobId, JobSpec)> =
            specs.into_iter().map(|s| (JobId(self.next_job.fetch_add(1, Ordering::Relaxed)), s)).collect();
        let ids = jobs.iter().map(|(id, _)| *id).collect();
        self.events.send(Event::Submit(jobs)).map_err(|_| Error::Stopped)?;
        Ok(ids)
    }

    pub(crate) fn cancel(&self, job: Option<JobId>) {
        let _ = self.events.send(Event::Cancel(job));
    }

    pub(crate) fn summaries(&self) -> Vec<JobSummary> {
        self.summaries.lock().unwrap_or_else(|p| p.into_inner()).iter().cloned().collect()
    }

    pub(crate) fn stop(&self) {
        let _ = self.events.send(Event::Stop);
        if let Some(h) = self.loop_thread.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = h.join();
        }
        self.task_tx.lock().unwrap_or_else(|p| p.into_inner()).take();
        for h in self.workers.lock().unwrap_or_else(|p| p.into_inner()).drain(..) {
            let _ = h.join();
        }
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        self.stop();
    }
}

fn worker_loop(rx: Receiver<TaskRun>, events: Sender<Event>, env: Arc<Env>, serialize: bool) {
    while let Ok(run) = rx.recv() {
        let end = run_task(run, &env, serialize);
        if events.send(Event::TaskEnd(Box::new(end))).is_err() {
            break;
        }
    }
}

fn run_task(run: TaskRun, env: &Arc<Env>, serialize: bool) -> TaskEnd {
    let tid = TASK_ATTEMPT_IDS.fetch_add(1, Ordering::Relaxed);
    let tc = TaskContext::new(run.stage, run.partition, run.attempt, tid, env.clone(), run.cancel.clone());
    let started = Instant::now();
    accumulator::begin_task();
    let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| -> Result<TaskOutput> {
        let body = match &run.payload {
            Payload::Local(b) => b.clone(),
            Payload::Encoded(bytes) => Ship::<dyn TaskBody>::decode_local(bytes)?,
        };
        let out = body.run(run.partition, &tc)?;
        if let Some(e) = tc.take_error() {
            return Err(e);
        }
        match out {
            TaskOutput::Value(v) if serialize => Ok(TaskOutput::Encoded(body.encode_value(v)?)),
            other => Ok(other),
        }
    }));
    let updates = accumulator::end_task(serialize);
    env.blocks.release_task(tid);
    let result = match outcome {
        Ok(r) => r,
        Err(payload) => Err(Error::UserPanic(panic_message(&*payload))),
    };
    let mut metrics = tc.metrics();
    metrics.run_micros = started.elapsed().as_micros() as u64;
    TaskEnd {
        stage: run.stage,
        stage_attempt: run.stage_attempt,
        index: run.index,
        attempt: run.attempt,
        result,
        metrics,
        updates,
    }
}

struct State {
    env: Arc<Env>,
    settings: Settings,
    task_tx: Sender<TaskRun>,
    next_stage: u64,
    stages: BTreeMap<StageId, Stage>,
    shuffle_stages: HashMap<ShuffleId, StageId>,
    jobs: HashMap<JobId, ActiveJob>,
    progress: Progress,
    summaries: Arc<Mutex<VecDeque<JobSummary>>>,
}

impl State {
    fn run(&mut self, events: Receiver<Event>) {
        loop {
            let ev = match events.recv_timeout(Duration::from_millis(200)) {
                Ok(ev) => ev,
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                    self.render_progress();
                    continue;
                }
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break,
            };
            match ev {
                Event::Submit(jobs) => self.on_submit(jobs),
                Event::TaskEnd(end) => self.on_task_end(*end),
                Event::Cancel(job) => {
                    let ids: Vec<JobId> = match job {
                        Some(j) => vec![j],
                        None => self.jobs.keys().copied().collect(),
                    };
                    for j in ids {
                        self.fail_job(j, Error::Cancelled(format!("job {} was cancelled", j.0)));
                    }
                }
                Event::Stop => {
                    let ids: Vec<JobId> = self.jobs.keys().copied().collect();
                    for j in ids {
                        self.fail_job(j, Error::Stopped);
                    }
                    break;
                }
            }
            self.render_progress();
        }
        self.progress.clear();
    }

    fn render_progress(&mut self) {
        if !self.progress.enabled() {
            return;
        }
        // Tasks wait in one queue, so at most `slots` of a stage's queued tasks are running.
        let slots = self.settings.master.slots();
        let rows: Vec<(u64, usize, usize, usize, Instant)> = self
            .stages
            .values()
            .filter_map(|s| match &s.state {
                StageState::Running(r) => {
                    Some((s.id.0, r.total - r.pending.len(), r.in_flight.min(slots), r.total, r.started))
                }
                _ => None,
            })
            .collect();
        self.progress.render(&rows);
    }

    // ---- stage creation ----------------------------------------------------------------------

    fn new_stage(
        &mut self,
        name: String,
        kind: StageKind,
        parents: Vec<StageId>,
        body: Ship<dyn TaskBody>,
        job: JobId,
    ) -> Result<StageId> {
        let id = StageId(self.next_stage);
        self.next_stage += 1;
        let encoded = if self.settings.serialize_tasks { Some(Arc::new(body.encode()?)) } else { None };
        let mut jobs = BTreeSet::new();
        jobs.insert(job);
        self.stages.insert(
            id,
            Stage {
                id,
                name,
                kind,
                parents,
                jobs,
                body,
                encoded,
                state: StageState::New,
                attempt: 0,
                fetch_failures: 0,
                failures: HashMap::new(),
                failed_attempts: 0,
                tasks_done: 0,
                metrics: TaskMetrics::default(),
            },
        );
        Ok(id)
    }

    /// The shuffle map stages `rdd` directly depends on (walking narrow dependencies, and
    /// stopping at RDDs whose partitions are all cached).
    fn parent_stages(&mut self, rdd: &Arc<dyn RddBase>, job: JobId) -> Result<Vec<StageId>> {
        let mut parents = Vec::new();
        let mut seen = HashSet::new();
        let mut stack = vec![rdd.clone()];
        while let Some(r) = stack.pop() {
            if !seen.insert(r.id()) {
                continue;
            }
            if r.storage_level() != crate::storage::StorageLevel::None
                && self.env.blocks.has_all(r.id(), r.num_partitions())
            {
                continue;
            }
            for dep in r.dependencies() {
                match dep {
                    Dependency::Narrow(p) => stack.push(p),
                    Dependency::Shuffle(d) => {
                        let s = self.shuffle_stage(d, job)?;
                        if !parents.contains(&s) {
                            parents.push(s);
                        }
                    }
                }
            }
        }
        Ok(parents)
    }

    fn shuffle_stage(&mut self, dep: Arc<dyn ShuffleDepBase>, job: JobId) -> Result<StageId> {
        if let Some(&id) = self.shuffle_stages.get(&dep.shuffle_id()) {
            self.add_job_to(id, job);
            return Ok(id);
        }
        let rdd = dep.parent().ok_or(Error::NoContext)?;
        let parents = self.parent_stages(&rdd, job)?;
        let name = format!("shuffle {} of {}", dep.shuffle_id().0, rdd.describe());
        let body = dep.map_task()?;
        let id = self.new_stage(name, StageKind::ShuffleMap { dep: dep.clone() }, parents, body, job)?;
        self.shuffle_stages.insert(dep.shuffle_id(), id);
        Ok(id)
    }

    fn add_job_to(&mut self, id: StageId, job: JobId) {
        let mut stack = vec![id];
        while let Some(s) = stack.pop() {
            if let Some(st) = self.stages.get_mut(&s) {
                if st.jobs.insert(job) {
                    stack.extend(st.parents.iter().copied());
                }
            }
        }
    }

    // ---- submission ----------------------------------------------------------------------------

    fn on_submit(&mut self, jobs: Vec<(JobId, JobSpec)>) {
        let mut finals = Vec::new();
        for (id, spec) in jobs {
            match self.create_job(id, spec) {
                Ok(Some(stage)) => finals.push(stage),
                Ok(None) => {}
                Err((listener, e)) => listener.job_finished(Err(e)),
            }
        }
        for s in finals {
            self.submit_stage(s);
        }
    }

    #[allow(clippy::type_complexity)]
    fn create_job(
        &mut self,
        id: JobId,
        spec: JobSpec,
    ) -> std::result::Result<Option<StageId>, (Box<dyn JobListener>, Error)> {
        let JobSpec { final_rdd, body, partitions, listener } = spec;
        if partitions.is_empty() {
            listener.job_finished(Ok(()));
            self.record_summary(id, true, Instant::now(), &[]);
            return Ok(None);
        }
        let parents = match self.parent_stages(&final_rdd, id) {
            Ok(p) => p,
            Err(e) => return Err((listener, e)),
        };
        let n = partitions.len();
        let name = final_rdd.describe();
        let stage = match self.new_stage(name, StageKind::Result { job: id, partitions }, parents, body, id) {
            Ok(s) => s,
            Err(e) => return Err((listener, e)),
        };
        self.jobs.insert(
            id,
            ActiveJob {
                final_stage: stage,
                finished: vec![false; n],
                num_finished: 0,
                listener: Some(listener),
                started: Instant::now(),
            },
        );
        Ok(Some(stage))
    }

    fn stage_available(&self, id: StageId) -> bool {
        match self.stages.get(&id) {
            Some(Stage { kind: StageKind::ShuffleMap { dep }, .. }) => {
                self.env.shuffle.missing(dep.shuffle_id(), dep.num_maps()).is_empty()
            }
            _ => false,
        }
    }

    fn submit_stage(&mut self, id: StageId) {
        let Some(stage) = self.stages.get(&id) else { return };
        if matches!(stage.state, StageState::Running(_)) {
            return;
        }
        let parents = stage.parents.clone();
        let missing: Vec<StageId> = parents.into_iter().filter(|p| !self.stage_available(*p)).collect();
        if missing.is_empty() {
            self.launch(id);
        } else {
            if let Some(s) = self.stages.get_mut(&id) {
                s.state = StageState::Waiting;
            }
            for p in missing {
                self.submit_stage(p);
            }
        }
    }

    fn launch(&mut self, id: StageId) {
        let to_run: Vec<(usize, usize)> = {
            let Some(stage) = self.stages.get(&id) else { return };
            match &stage.kind {
                StageKind::ShuffleMap { dep } => {
                    self.env.shuffle.missing(dep.shuffle_id(), dep.num_maps()).into_iter().map(|m| (m, m)).collect()
                }
                StageKind::Result { job, partitions } => match self.jobs.get(job) {
                    Some(j) => {
                        partitions.iter().enumerate().filter(|(i, _)| !j.finished[*i]).map(|(i, &p)| (i, p)).collect()
                    }
                    None => Vec::new(),
                },
            }
        };
        let Some(stage) = self.stages.get_mut(&id) else { return };
        if to_run.is_empty() {
            stage.state = StageState::Done;
            self.on_stage_done(id);
            return;
        }
        stage.attempt += 1;
        let cancel = Arc::new(AtomicBool::new(false));
        stage.state = StageState::Running(Running {
            pending: to_run.iter().map(|(i, _)| *i).collect(),
            cancel: cancel.clone(),
            started: Instant::now(),
            total: to_run.len(),
            in_flight: to_run.len(),
        });
        tracing::debug!("stage {} ({}) attempt {}: {} tasks", id.0, stage.name, stage.attempt, to_run.len());
        for (index, partition) in to_run {
            let attempt = stage.failures.get(&index).copied().unwrap_or(0);
            let run = TaskRun {
                stage: id,
                stage_attempt: stage.attempt,
                index,
                partition,
                attempt,
                payload: match &stage.encoded {
                    Some(b) => Payload::Encoded(b.clone()),
                    None => Payload::Local(stage.body.clone()),
                },
                cancel: cancel.clone(),
            };
            let _ = self.task_tx.send(run);
        }
    }

    // ---- completion --------------------------------------------------------------------------

    fn on_task_end(&mut self, end: TaskEnd) {
        let Some(stage) = self.stages.get_mut(&end.stage) else { return };
        if stage.attempt != end.stage_attempt {
            return;
        }
        let StageState::Running(running) = &mut stage.state else { return };
        running.in_flight = running.in_flight.saturating_sub(1);
        match end.result {
            Ok(output) => {
                if !running.pending.remove(&end.index) {
                    return;
                }
                accumulator::merge_updates(end.updates);
                stage.metrics.add(&end.metrics);
                stage.tasks_done += 1;
                let stage_done = running.pending.is_empty();
                match &stage.kind {
                    StageKind::ShuffleMap { dep } => {
                        if let TaskOutput::Map(status) = output {
                            self.env.shuffle.register_map_output(status, dep.num_maps());
                        }
                        if stage_done {
                            stage.state = StageState::Done;
                            self.on_stage_done(end.stage);
                        }
                    }
                    StageKind::Result { job, .. } => {
                        let job = *job;
                        if stage_done {
                            stage.state = StageState::Done;
                        }
                        self.on_result(job, end.index, output);
                    }
                }
            }
            Err(Error::FetchFailed { shuffle, map, reduce, message }) => {
                tracing::warn!(
                    "stage {} task {}: fetch failed for shuffle {shuffle} map {map}: {message}",
                    end.stage.0,
                    end.index
                );
                running.cancel.store(true, Ordering::Relaxed);
                stage.state = StageState::Waiting;
                stage.fetch_failures += 1;
                stage.failed_attempts += 1;
                let sid = ShuffleId(shuffle);
                self.env.shuffle.unregister_map_output(sid, map);
                if stage.fetch_failures > MAX_STAGE_ATTEMPTS {
                    let name = stage.name.clone();
                    let err = Error::JobAborted {
                        job: 0,
                        stage: end.stage.0,
                        stage_name: name,
                        partition: reduce,
                        attempts: MAX_STAGE_ATTEMPTS,
                        message: format!("shuffle {shuffle} output of map {map} kept failing: {message}"),
                    };
                    self.abort_stage(end.stage, err);
                    return;
                }
                if let Some(&parent) = self.shuffle_stages.get(&sid) {
                    if let Some(p) = self.stages.get_mut(&parent) {
                        if matches!(p.state, StageState::Done) {
                            p.state = StageState::New;
                        }
                    }
                }
                self.submit_stage(end.stage);
            }
            Err(err) => {
                let fails = stage.failures.entry(end.index).or_insert(0);
                *fails += 1;
                stage.failed_attempts += 1;
                let fails = *fails;
                let max = self.settings.max_task_failures;
                tracing::warn!("stage {} task {} attempt {} failed: {err}", end.stage.0, end.index, end.attempt);
                if matches!(err, Error::Cancelled(_)) {
                    return;
                }
                if err.is_retryable() && fails < max {
                    running.in_flight += 1;
                    let partition = match &stage.kind {
                        StageKind::ShuffleMap { .. } => end.index,
                        StageKind::Result { partitions, .. } => partitions[end.index],
                    };
                    let run = TaskRun {
                        stage: end.stage,
                        stage_attempt: stage.attempt,
                        index: end.index,
                        partition,
                        attempt: fails,
                        payload: match &stage.encoded {
                            Some(b) => Payload::Encoded(b.clone()),
                            None => Payload::Local(stage.body.clone()),
                        },
                        cancel: running.cancel.clone(),
                    };
                    let _ = self.task_tx.send(run);
                } else {
                    let partition = match &stage.kind {
                        StageKind::ShuffleMap { .. } => end.index,
                        StageKind::Result { partitions, .. } => partitions[end.index],
                    };
                    let abort = match err {
                        // Input errors are the user's to fix: report them as they are.
                        e if !e.is_retryable() => e,
                        e => Error::JobAborted {
                            job: 0,
                            stage: end.stage.0,
                            stage_name: stage.name.clone(),
                            partition,
                            attempts: fails,
                            message: e.to_string(),
                        },
                    };
                    self.abort_stage(end.stage, abort);
                }
            }
        }
    }

    fn on_stage_done(&mut self, id: StageId) {
        if let Some(s) = self.stages.get(&id) {
            tracing::debug!("stage {} ({}) done", id.0, s.name);
        }
        let waiting: Vec<StageId> = self
            .stages
            .values()
            .filter(|s| matches!(s.state, StageState::Waiting) && s.parents.contains(&id))
            .map(|s| s.id)
            .collect();
        for w in waiting {
            self.submit_stage(w);
        }
    }

    fn on_result(&mut self, job_id: JobId, index: usize, output: TaskOutput) {
        let Some(job) = self.jobs.get_mut(&job_id) else { return };
        if job.finished[index] {
            return;
        }
        job.finished[index] = true;
        job.num_finished += 1;
        let res = match job.listener.as_mut() {
            Some(l) => l.task_succeeded(index, output),
            None => Ok(()),
        };
        if let Err(e) = res {
            self.fail_job(job_id, e);
            return;
        }
        if job.num_finished == job.finished.len() {
            self.finish_job(job_id, Ok(()));
        }
    }

    /// Fails every job that needs `stage`.
    fn abort_stage(&mut self, stage: StageId, err: Error) {
        let jobs: Vec<JobId> = self.stages.get(&stage).map(|s| s.jobs.iter().copied().collect()).unwrap_or_default();
        for j in jobs {
            let e = match &err {
                Error::JobAborted { stage, stage_name, partition, attempts, message, .. } => Error::JobAborted {
                    job: j.0,
                    stage: *stage,
                    stage_name: stage_name.clone(),
                    partition: *partition,
                    attempts: *attempts,
                    message: message.clone(),
                },
                other => other.duplicate(),
            };
            self.fail_job(j, e);
        }
    }

    fn fail_job(&mut self, job: JobId, err: Error) {
        self.finish_job(job, Err(err));
    }

    fn finish_job(&mut self, job_id: JobId, result: Result<()>) {
        let Some(mut job) = self.jobs.remove(&job_id) else { return };
        let ok = result.is_ok();
        if let Err(e) = &result {
            tracing::info!("job {} failed: {e}", job_id.0);
        }
        // Stages no other job needs go away; their running tasks are told to stop.
        let mut gone = Vec::new();
        for s in self.stages.values_mut() {
            if s.jobs.remove(&job_id) && s.jobs.is_empty() {
                if let StageState::Running(r) = &s.state {
                    r.cancel.store(true, Ordering::Relaxed);
                }
                gone.push(s.id);
            }
        }
        let mut summaries = Vec::new();
        let mut ids: Vec<StageId> = gone.clone();
        ids.push(job.final_stage);
        ids.sort();
        ids.dedup();
        for id in &ids {
            if let Some(s) = self.stages.get(id) {
                if s.tasks_done > 0 || s.failed_attempts > 0 {
                    summaries.push(StageSummary {
                        id: s.id,
                        name: s.name.clone(),
                        tasks: s.tasks_done,
                        failed_attempts: s.failed_attempts,
                        metrics: s.metrics,
                    });
                }
            }
        }
        for id in gone {
            if let Some(s) = self.stages.remove(&id) {
                if let StageKind::ShuffleMap { dep } = &s.kind {
                    self.shuffle_stages.remove(&dep.shuffle_id());
                }
            }
        }
        self.record_summary(job_id, ok, job.started, &summaries);
        if let Some(l) = job.listener.take() {
            l.job_finished(result);
        }
    }

    fn record_summary(&mut self, id: JobId, succeeded: bool, started: Instant, stages: &[StageSummary]) {
        let summary = JobSummary { id, succeeded, duration: started.elapsed(), stages: stages.to_vec() };
        let m = summary.metrics();
        tracing::debug!(
            "job {} {} in {:?}: shuffle write {} B, spill {} B",
            id.0,
            if succeeded { "finished" } else { "failed" },
            summary.duration,
            m.shuffle_bytes_written,
            m.disk_bytes_spilled
        );
        let mut q = self.summaries.lock().unwrap_or_else(|p| p.into_inner());
        if q.len() >= SUMMARIES_KEPT {
            q.pop_front();
        }
        q.push_back(summary);
    }
}
