//! The DAG scheduler: cuts jobs into stages at shuffle dependencies, submits a stage once its
//! parents' outputs exist, tracks map outputs, and recovers from fetch failures by resubmitting
//! the stages whose outputs were lost.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;

use super::backend::{ExecutorBackend, Placement, Prerequisites, TaskStatus};
use super::taskset::{Code, TaskSet};
use super::tracker::{MapOutputTracker, Refused};
use super::{JobListener, JobSpec, JobSummary, StageSummary, SUMMARIES_KEPT};
use crate::accumulator;
use crate::conf::Settings;
use crate::env::Env;
use crate::error::{Error, Result};
use crate::progress::Progress;
use crate::rdd::{Dependency, RddBase};
use crate::ship::{Ship, ShipKey};
use crate::shuffle::{ShuffleDepBase, ShuffleId};
use crate::storage::{BlockManager, MemoryPeaks};
use crate::task::{panic_message, JobId, StageId, TaskBody, TaskMetrics, TaskOutput};

/// The name of the scheduler's event loop thread.
pub(super) const THREAD_NAME: &str = "ember-dag-scheduler";

/// Stages retried after fetch failures before the job is aborted.
const MAX_STAGE_ATTEMPTS: u32 = 4;

/// How often running stages are checked for stragglers (`ember.speculation`).
const SPECULATION_INTERVAL: Duration = Duration::from_millis(100);

/// A task is never a straggler before it has run this long.
const SPECULATION_FLOOR: Duration = Duration::from_millis(100);

/// What the event loop reacts to.
pub(super) enum Event {
    Submit(Vec<(JobId, JobSpec)>),
    TaskEnd(Box<TaskStatus>),
    Cancel(Option<JobId>),
    CancelGroup(String),
    Stop,
}

enum StageKind {
    ShuffleMap { dep: Arc<dyn ShuffleDepBase> },
    Result { job: JobId, partitions: Vec<usize> },
}

/// A stage's lifecycle; each state carries its own data.
enum StageState {
    /// Created, not yet submitted.
    New,
    /// Waiting for parent stages' outputs.
    Waiting,
    /// Tasks are running.
    Running(Box<TaskSet>),
    /// All outputs exist.
    Done,
}

struct Stage {
    id: StageId,
    name: String,
    kind: StageKind,
    /// The RDD whose partitions the stage's tasks compute.
    rdd: Arc<dyn RddBase>,
    parents: Vec<StageId>,
    jobs: BTreeSet<JobId>,
    code: Code,
    /// The nodes `code` was cut at (see `rdd::with_cut`), kept while the stage lives: its tasks
    /// may ask the driver for their lineage.
    _cut_at: Vec<crate::rdd::CutNode>,
    state: StageState,
    attempt: u32,
    fetch_failures: u32,
    /// Failed attempts per task index, across stage attempts.
    failures: HashMap<usize, u32>,
    failed_attempts: u32,
    launched: usize,
    tasks_done: usize,
    metrics: TaskMetrics,
    /// The block manager's peak-memory watch while the stage runs, and the peaks of watches
    /// already closed.
    watch: Option<u64>,
    peaks: MemoryPeaks,
    /// Pre-scheduled: the shuffles (and their map counts) of the parent stages that were running
    /// when its tasks went out; they wait on their executors for them.
    waits: Vec<(ShuffleId, usize)>,
    /// Speculative copies launched.
    speculated: usize,
}

/// Where a retried attempt of a task runs: near its cached input, and when its stage was
/// pre-scheduled and a shuffle it reads is not complete yet, held on its executor until it is.
fn retry_placement(
    (rdd, waits): (&Arc<dyn RddBase>, &[(ShuffleId, usize)]),
    partition: usize,
    env: &Env,
    tracker: &MapOutputTracker,
) -> Placement {
    let (preferred, cached_input) = super::locality::preferred(rdd, partition, &env.block_locations);
    let pending: Vec<(ShuffleId, usize)> =
        waits.iter().filter(|(s, maps)| !tracker.missing(*s, *maps).is_empty()).copied().collect();
    let after = (!pending.is_empty()).then(|| Arc::new(Prerequisites { shuffles: pending, blocks: Vec::new() }));
    Placement { preferred, cached_input, after }
}

impl StageKind {
    /// The partition task `index` of the stage computes.
    fn partition_of(&self, index: usize) -> usize {
        match self {
            StageKind::ShuffleMap { .. } => index,
            StageKind::Result { partitions, .. } => partitions.get(index).copied().unwrap_or(0),
        }
    }
}

impl Stage {
    /// Closes the stage's peak-memory watch (when it finishes or its job ends).
    fn close_watch(&mut self, blocks: &BlockManager) {
        if let Some(w) = self.watch.take() {
            self.peaks = self.peaks.max(blocks.end_watch(w));
        }
    }
}

struct ActiveJob {
    final_stage: StageId,
    finished: Vec<bool>,
    num_finished: usize,
    listener: Option<Box<dyn JobListener>>,
    started: Instant,
    group: Option<String>,
    /// The block manager's peak-memory watch, open from submission to the end.
    watch: u64,
}

/// All scheduling state, owned by the event loop thread.
pub(super) struct State {
    settings: Settings,
    /// Where cached blocks are known (the driver's block manager in local mode).
    env: Arc<Env>,
    backend: Arc<dyn ExecutorBackend>,
    /// The key stage bodies are encoded with, when tasks travel as bytes (this process's own
    /// when rehearsing a remote executor, the application's on a cluster); `None` keeps them
    /// in memory.
    encode_with: Option<ShipKey>,
    tracker: Arc<MapOutputTracker>,
    next_stage: u64,
    stages: BTreeMap<StageId, Stage>,
    shuffle_stages: HashMap<ShuffleId, StageId>,
    jobs: HashMap<JobId, ActiveJob>,
    progress: Progress,
    summaries: Arc<Mutex<VecDeque<JobSummary>>>,
    /// While a group of jobs is being submitted to a backend that pre-schedules: its executors.
    /// Every task of the group then goes out at once, placed on one of them.
    prescheduling: Option<Vec<Arc<str>>>,
    /// Cached partitions that pre-scheduled tasks will compute, and where (so that later
    /// tasks of the group that read them are placed there and wait for them).
    pending_blocks: HashMap<(crate::storage::RddId, usize), Arc<str>>,
    /// While a group is submitted: the persisted RDDs its earlier jobs compute whole, which
    /// later jobs' task bodies are cut at (`rdd::with_cut`).
    coming: Arc<HashSet<crate::storage::RddId>>,
    /// When stragglers were last looked for.
    last_speculation: Instant,
    /// The map output epoch at the last look for lost outputs awaited by pre-scheduled stages,
    /// and whether a stage finished since (outputs go missing only with a newer epoch, and a
    /// stage that finishes with some missing stops running them).
    revive_checked: (u64, bool),
}

impl State {
    pub(super) fn new(
        settings: Settings,
        env: Arc<Env>,
        (backend, encode_with): (Arc<dyn ExecutorBackend>, Option<ShipKey>),
        tracker: Arc<MapOutputTracker>,
        summaries: Arc<Mutex<VecDeque<JobSummary>>>,
    ) -> Self {
        State {
            progress: Progress::new(settings.show_progress),
            settings,
            env,
            backend,
            encode_with,
            tracker,
            next_stage: 0,
            stages: BTreeMap::new(),
            shuffle_stages: HashMap::new(),
            jobs: HashMap::new(),
            summaries,
            prescheduling: None,
            pending_blocks: HashMap::new(),
            coming: Arc::default(),
            last_speculation: Instant::now(),
            revive_checked: (0, true),
        }
    }

    pub(super) fn run(&mut self, events: Receiver<Event>) {
        loop {
            let tick = if self.settings.speculation { SPECULATION_INTERVAL } else { Duration::from_millis(200) };
            let ev = match events.recv_timeout(tick) {
                Ok(ev) => ev,
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                    self.revive_awaited_shuffles();
                    self.speculate();
                    self.backend.flush();
                    self.render_progress();
                    continue;
                }
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break,
            };
            if matches!(ev, Event::Stop) {
                let ids: Vec<JobId> = self.jobs.keys().copied().collect();
                for j in ids {
                    self.fail_job(j, Error::Stopped);
                }
                break;
            }
            // User code runs here too (partitioners, `Serialize` impls, result decoding). A panic
            // in it fails the jobs in flight, not the scheduler.
            if let Err(payload) = std::panic::catch_unwind(AssertUnwindSafe(|| self.handle(ev))) {
                let message = panic_message(&*payload);
                tracing::warn!("a user function panicked on the driver: {message}");
                self.fail_all(&format!("a user function panicked on the driver: {message}"));
            }
            if self.settings.speculation && self.last_speculation.elapsed() >= SPECULATION_INTERVAL {
                self.speculate();
            }
            self.revive_awaited_shuffles();
            // Pre-scheduled tasks gathered while handling the event go out together.
            self.backend.flush();
            if self.jobs.is_empty() {
                self.pending_blocks.clear();
            }
            self.render_progress();
        }
        self.progress.clear();
    }

    fn handle(&mut self, ev: Event) {
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
            Event::CancelGroup(group) => {
                let ids: Vec<JobId> =
                    self.jobs.iter().filter(|(_, j)| j.group.as_deref() == Some(&group)).map(|(id, _)| *id).collect();
                for j in ids {
                    self.fail_job(j, Error::Cancelled(format!("job {} was cancelled with its group `{group}`", j.0)));
                }
            }
            Event::Stop => {}
        }
    }

    /// Fails every job after a panic left the state in doubt, and forgets every stage.
    fn fail_all(&mut self, message: &str) {
        let ids: Vec<JobId> = self.jobs.keys().copied().collect();
        for j in ids {
            let _ = std::panic::catch_unwind(AssertUnwindSafe(|| self.fail_job(j, Error::UserPanic(message.into()))));
        }
        for s in std::mem::take(&mut self.stages).into_values() {
            if let StageState::Running(ts) = &s.state {
                ts.kill_all(&*self.backend);
            }
        }
        self.shuffle_stages.clear();
        self.jobs.clear();
    }

    fn render_progress(&mut self) {
        if !self.progress.enabled() {
            return;
        }
        // Tasks wait in one queue, so at most `slots` of a stage's queued tasks are running.
        let slots = self.backend.slots();
        let rows: Vec<(u64, usize, usize, usize, Instant)> = self
            .stages
            .values()
            .filter_map(|s| match &s.state {
                StageState::Running(ts) => {
                    Some((s.id.0, ts.total - ts.pending.len(), ts.running.len().min(slots), ts.total, ts.started))
                }
                _ => None,
            })
            .collect();
        self.progress.render(&rows);
    }

    // ---- stage creation ----------------------------------------------------------------------

    fn new_stage(
        &mut self,
        (name, kind, rdd): (String, StageKind, Arc<dyn RddBase>),
        parents: Vec<StageId>,
        body: Ship<dyn TaskBody>,
        job: JobId,
    ) -> Result<StageId> {
        let id = StageId(self.next_stage);
        self.next_stage += 1;
        let (code, cut_at) = match &self.encode_with {
            // Cut at nodes cached everywhere (or made by an earlier job of the group): the body
            // does not grow with the lineage.
            Some(key) => {
                let (encoded, cut_at) =
                    crate::rdd::with_cut(&self.env.block_locations, &self.coming, || key.encode(&body));
                (Code::Encoded(Arc::new(encoded?)), cut_at)
            }
            None => (Code::Local(body), Vec::new()),
        };
        self.stages.insert(
            id,
            Stage {
                id,
                name,
                kind,
                rdd,
                parents,
                jobs: BTreeSet::from([job]),
                code,
                _cut_at: cut_at,
                state: StageState::New,
                attempt: 0,
                fetch_failures: 0,
                failures: HashMap::new(),
                failed_attempts: 0,
                launched: 0,
                tasks_done: 0,
                metrics: TaskMetrics::default(),
                watch: None,
                peaks: MemoryPeaks::default(),
                waits: Vec::new(),
                speculated: 0,
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
                && (self.env.blocks.has_all(r.id(), r.num_partitions())
                    || self.env.block_locations.has_all(r.id(), r.num_partitions()))
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
        let kind = StageKind::ShuffleMap { dep: dep.clone() };
        let id = self.new_stage((name, kind, rdd), parents, body, job)?;
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

    /// Pre-scheduled stages wait on their executors for their parents' shuffles. A parent that
    /// stopped running with outputs missing (lost with an executor after its tasks succeeded)
    /// runs its missing maps again; nothing else would, and those stages would wait forever.
    fn revive_awaited_shuffles(&mut self) {
        let epoch = self.tracker.epoch();
        if self.revive_checked == (epoch, false) {
            return;
        }
        self.revive_checked = (epoch, false);
        let mut revive = Vec::new();
        for s in self.stages.values() {
            if s.waits.is_empty() || !matches!(s.state, StageState::Running(_)) {
                continue;
            }
            for &(sid, maps) in &s.waits {
                let Some(p) = self.shuffle_stages.get(&sid).and_then(|p| self.stages.get(p)) else { continue };
                let idle = !matches!(p.state, StageState::Running(_) | StageState::Waiting);
                if idle && !self.tracker.missing(sid, maps).is_empty() {
                    revive.push(p.id);
                }
            }
        }
        revive.sort_unstable();
        revive.dedup();
        for p in revive {
            if let Some(ps) = self.stages.get_mut(&p) {
                tracing::info!("stage {} ({}): map outputs were lost; running them again", p.0, ps.name);
                ps.state = StageState::New;
            }
            self.submit_stage(p);
        }
    }

    // ---- speculation ---------------------------------------------------------------------------

    /// Launches a copy of every task that runs much longer than its stage's others
    /// (`ember.speculation`): the first attempt to succeed wins, the other is killed.
    fn speculate(&mut self) {
        self.last_speculation = Instant::now();
        if !self.settings.speculation {
            return;
        }
        let (quantile, multiplier) = (self.settings.speculation_quantile, self.settings.speculation_multiplier);
        let epoch = self.tracker.epoch();
        let backend = self.backend.clone();
        let slots = backend.slots();
        for stage in self.stages.values_mut() {
            let StageState::Running(ts) = &mut stage.state else { continue };
            // Only a stage's tail: while it has more attempts than there are slots, some wait for
            // one, and their time since launch says nothing about their speed.
            if ts.running.len() > slots || !stage.waits.is_empty() {
                continue;
            }
            for index in ts.stragglers(quantile, multiplier, SPECULATION_FLOOR) {
                let partition = stage.kind.partition_of(index);
                let attempt = stage.failures.get(&index).copied().unwrap_or(0) + 1;
                tracing::info!("stage {} task {index}: launching a speculative copy", stage.id.0);
                ts.speculated.insert(index);
                let placement = retry_placement((&stage.rdd, &stage.waits), partition, &self.env, &self.tracker);
                ts.launch_copy(&*backend, &stage.code, (index, partition, attempt), epoch, placement);
                stage.launched += 1;
                stage.speculated += 1;
            }
        }
    }

    // ---- submission ----------------------------------------------------------------------------

    fn on_submit(&mut self, jobs: Vec<(JobId, JobSpec)>) {
        // A group (Drizzle): on a backend that pre-schedules, all its tasks go out in one round.
        if jobs.len() > 1 {
            let executors = self.backend.executors();
            if !executors.is_empty() {
                self.prescheduling = Some(executors);
            }
        }
        self.submit_jobs(jobs);
        self.prescheduling = None;
    }

    fn submit_jobs(&mut self, jobs: Vec<(JobId, JobSpec)>) {
        // Afresh for each submission (a panic below may have left an earlier group's).
        self.coming = Arc::default();
        let mut finals = Vec::new();
        for (id, spec) in jobs {
            let JobSpec { final_rdd, body, partitions, listener, group } = spec;
            let made = (self.prescheduling.is_some()
                && final_rdd.storage_level() != crate::storage::StorageLevel::None
                && partitions.iter().collect::<HashSet<_>>().len() == final_rdd.num_partitions())
            .then(|| final_rdd.id());
            let created =
                std::panic::catch_unwind(AssertUnwindSafe(|| self.create_job(id, final_rdd, body, &partitions)));
            let created = match created {
                Ok(r) => r,
                Err(payload) => Err(Error::UserPanic(format!(
                    "a user function panicked on the driver while planning job {}: {}",
                    id.0,
                    panic_message(&*payload)
                ))),
            };
            match created {
                Ok(Some(stage)) => {
                    self.jobs.insert(
                        id,
                        ActiveJob {
                            final_stage: stage,
                            finished: vec![false; partitions.len()],
                            num_finished: 0,
                            listener: Some(listener),
                            started: Instant::now(),
                            group,
                            watch: self.env.blocks.begin_watch(),
                        },
                    );
                    finals.push((id, stage));
                    if let Some(made) = made {
                        Arc::make_mut(&mut self.coming).insert(made);
                    }
                }
                Ok(None) => {
                    listener.job_finished(Ok(()));
                    self.record_summary(id, true, Instant::now(), &[], MemoryPeaks::default());
                }
                Err(e) => {
                    self.forget_job_stages(id);
                    listener.job_finished(Err(e));
                }
            }
        }
        self.coming = Arc::default();
        for (job, s) in finals {
            if let Err(payload) = std::panic::catch_unwind(AssertUnwindSafe(|| self.submit_stage(s))) {
                let message = panic_message(&*payload);
                self.fail_job(job, Error::UserPanic(format!("a user function panicked on the driver: {message}")));
            }
        }
    }

    fn create_job(
        &mut self,
        id: JobId,
        final_rdd: Arc<dyn RddBase>,
        body: Ship<dyn TaskBody>,
        partitions: &[usize],
    ) -> Result<Option<StageId>> {
        if partitions.is_empty() {
            return Ok(None);
        }
        let parents = self.parent_stages(&final_rdd, id)?;
        let name = final_rdd.describe();
        let kind = StageKind::Result { job: id, partitions: partitions.to_vec() };
        Ok(Some(self.new_stage((name, kind, final_rdd), parents, body, id)?))
    }

    /// Removes the stages only job `id` needed (after it failed while being created).
    fn forget_job_stages(&mut self, id: JobId) {
        let gone: Vec<StageId> = self
            .stages
            .values_mut()
            .filter_map(|s| (s.jobs.remove(&id) && s.jobs.is_empty()).then_some(s.id))
            .collect();
        for g in gone {
            if let Some(StageKind::ShuffleMap { dep }) = self.stages.remove(&g).map(|s| s.kind) {
                self.shuffle_stages.remove(&dep.shuffle_id());
            }
        }
    }

    fn stage_available(&self, id: StageId) -> bool {
        match self.stages.get(&id) {
            Some(Stage { kind: StageKind::ShuffleMap { dep }, .. }) => {
                self.tracker.missing(dep.shuffle_id(), dep.num_maps()).is_empty()
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
            for p in &missing {
                self.submit_stage(*p);
            }
            // Pre-scheduling: the stage's tasks go out now too, each waiting on its executor
            // for the outputs of the parent stages that are running.
            if self.prescheduling.is_some() {
                let mut waits = Vec::new();
                for p in &missing {
                    match self.stages.get(p) {
                        Some(Stage { state: StageState::Running(_), kind: StageKind::ShuffleMap { dep }, .. }) => {
                            waits.push((dep.shuffle_id(), dep.num_maps()));
                        }
                        _ => return,
                    }
                }
                if let Some(s) = self.stages.get_mut(&id) {
                    s.waits = waits;
                }
                self.launch(id);
            }
        }
    }

    /// Where a pre-scheduled task computing partition `split` of `rdd` runs, and the cached
    /// partitions it waits for there: the holder of the nearest cached partition on its narrow
    /// lineage, or the executor an earlier task of the group computes it on (the task then
    /// waits for it), else executor `split` modulo their number (the same for every stage, so
    /// that partitions computed by one task are where the next needs them). The partitions the
    /// task will cache on its way are recorded as coming there.
    fn place(
        &mut self,
        rdd: &Arc<dyn RddBase>,
        split: usize,
        executors: &[Arc<str>],
    ) -> (Arc<str>, Vec<(crate::storage::RddId, usize)>) {
        let pending = &self.pending_blocks;
        let (found, on_the_way) = super::locality::walk_cached(rdd, split, &self.env.block_locations, |id| {
            pending.get(&(id, split)).cloned()
        });
        let (exec, blocks) = match found {
            super::locality::Cached::Held(_, holders) => (holders[0].clone(), Vec::new()),
            super::locality::Cached::Coming(id, exec) => (exec, vec![(id, split)]),
            super::locality::Cached::Nothing => (executors[split % executors.len()].clone(), Vec::new()),
        };
        for id in on_the_way {
            self.pending_blocks.insert((id, split), exec.clone());
        }
        (exec, blocks)
    }

    fn launch(&mut self, id: StageId) {
        let to_run: Vec<(usize, usize)> = {
            let Some(stage) = self.stages.get(&id) else { return };
            match &stage.kind {
                StageKind::ShuffleMap { dep } => {
                    self.tracker.missing(dep.shuffle_id(), dep.num_maps()).into_iter().map(|m| (m, m)).collect()
                }
                StageKind::Result { job, partitions } => match self.jobs.get(job) {
                    Some(j) => {
                        partitions.iter().enumerate().filter(|(i, _)| !j.finished[*i]).map(|(i, &p)| (i, p)).collect()
                    }
                    None => Vec::new(),
                },
            }
        };
        let epoch = self.tracker.epoch();
        let backend = self.backend.clone();
        let Some(stage) = self.stages.get_mut(&id) else { return };
        if to_run.is_empty() {
            stage.state = StageState::Done;
            self.on_stage_done(id);
            return;
        }
        stage.attempt += 1;
        let mut ts = TaskSet::new(id, stage.attempt, to_run.iter().map(|(i, _)| *i));
        tracing::debug!("stage {} ({}) attempt {}: {} tasks", id.0, stage.name, stage.attempt, to_run.len());
        let rdd = stage.rdd.clone();
        let waits = stage.waits.clone();
        let executors = self.prescheduling.clone().filter(|e| !e.is_empty());
        let mut placed = Vec::with_capacity(to_run.len());
        for &(_, partition) in &to_run {
            placed.push(match &executors {
                Some(executors) => {
                    let (exec, blocks) = self.place(&rdd, partition, executors);
                    let after = Prerequisites { shuffles: waits.clone(), blocks };
                    Placement { preferred: vec![exec], cached_input: None, after: Some(Arc::new(after)) }
                }
                None => {
                    let (preferred, cached_input) =
                        super::locality::preferred(&rdd, partition, &self.env.block_locations);
                    Placement { preferred, cached_input, after: None }
                }
            });
        }
        let Some(stage) = self.stages.get_mut(&id) else { return };
        for ((index, partition), placement) in to_run.into_iter().zip(placed) {
            let attempt = stage.failures.get(&index).copied().unwrap_or(0);
            ts.launch(&*backend, &stage.code, (index, partition, attempt), epoch, placement);
        }
        stage.launched += ts.launched;
        if stage.watch.is_none() {
            stage.watch = Some(self.env.blocks.begin_watch());
        }
        stage.state = StageState::Running(Box::new(ts));
    }

    // ---- completion --------------------------------------------------------------------------

    /// Drops the output of a task whose result the scheduler does not use.
    fn discard(&self, output: &Result<TaskOutput>) {
        if let Ok(TaskOutput::Map(status)) = output {
            self.backend.discard_map_output(status);
        }
    }

    fn on_task_end(&mut self, end: TaskStatus) {
        let Some(stage) = self.stages.get_mut(&end.stage) else {
            self.discard(&end.result);
            return;
        };
        let StageState::Running(ts) = &mut stage.state else {
            self.discard(&end.result);
            return;
        };
        let took = ts.launched_at.get(&end.task_id).map(|t| t.elapsed());
        if ts.stage_attempt != end.stage_attempt || !ts.ended(end.task_id) {
            self.discard(&end.result);
            return;
        }
        match end.result {
            Ok(output) => {
                if !ts.pending.contains(&end.index) {
                    self.discard(&Ok(output));
                    return;
                }
                // A map task's output counts once the tracker has registered it; a result goes to
                // its job after the stage's bookkeeping.
                let result = match &stage.kind {
                    StageKind::ShuffleMap { dep } => {
                        let TaskOutput::Map(status) = output else {
                            let err = Error::Internal("a shuffle map task returned a value".into());
                            self.abort_stage(end.stage, err);
                            return;
                        };
                        match self.tracker.register(status, dep.num_maps(), end.epoch) {
                            Ok(replaced) => {
                                if let Some(old) = replaced {
                                    self.backend.discard_map_output(&old);
                                }
                            }
                            Err((refused, why @ (Refused::UnknownMap | Refused::Malformed))) => {
                                // Not a transient loss: the same task would report the same.
                                self.backend.discard_map_output(&refused);
                                let err = Error::Internal(format!(
                                    "stage {} task {}: its map output status for map {} is unusable ({why:?})",
                                    end.stage.0, end.index, refused.map
                                ));
                                self.abort_stage(end.stage, err);
                                return;
                            }
                            Err((refused, why)) => {
                                // Its executor was lost after the task started: run it again.
                                tracing::warn!("stage {} task {}: output refused ({why:?})", end.stage.0, end.index);
                                self.backend.discard_map_output(&refused);
                                let partition = stage.kind.partition_of(end.index);
                                let attempt = stage.failures.get(&end.index).copied().unwrap_or(0);
                                let epoch = self.tracker.epoch();
                                let placement =
                                    retry_placement((&stage.rdd, &stage.waits), partition, &self.env, &self.tracker);
                                ts.launch(
                                    &*self.backend,
                                    &stage.code,
                                    (end.index, partition, attempt),
                                    epoch,
                                    placement,
                                );
                                stage.launched += 1;
                                return;
                            }
                        }
                        None
                    }
                    StageKind::Result { job, .. } => Some((*job, output)),
                };
                ts.pending.remove(&end.index);
                // What the task itself took (its executor measured it); the launch-to-status time
                // when it did not say.
                let ran = std::time::Duration::from_micros(end.metrics.run_micros);
                ts.durations.extend(if end.metrics.run_micros > 0 { Some(ran) } else { took });
                // The first attempt to succeed wins; any other (a speculative copy, or the
                // straggler it copied) is killed and its status ignored.
                let losers = ts.others_of(end.index);
                if !losers.is_empty() {
                    self.backend.kill(&losers);
                }
                if let Err(e) = merge_updates(end.updates) {
                    self.abort_stage(end.stage, e);
                    return;
                }
                stage.metrics.add(&end.metrics);
                stage.tasks_done += 1;
                let stage_done = ts.pending.is_empty();
                if stage_done {
                    stage.close_watch(&self.env.blocks);
                    stage.state = StageState::Done;
                }
                match result {
                    Some((job, output)) => self.on_result(job, end.index, output),
                    None if stage_done => self.on_stage_done(end.stage),
                    None => {}
                }
            }
            Err(Error::FetchFailed { shuffle, map, reduce, message }) => {
                tracing::warn!(
                    "stage {} task {}: fetch failed for shuffle {shuffle} map {map}: {message}",
                    end.stage.0,
                    end.index
                );
                ts.kill_all(&*self.backend);
                stage.state = StageState::Waiting;
                stage.fetch_failures += 1;
                let sid = ShuffleId(shuffle);
                if let Some(lost) = self.tracker.unregister(sid, map) {
                    self.backend.discard_map_output(&lost);
                }
                if stage.fetch_failures > MAX_STAGE_ATTEMPTS {
                    let err = Error::JobAborted {
                        job: 0,
                        stage: end.stage.0,
                        stage_name: stage.name.clone(),
                        partition: reduce,
                        attempts: MAX_STAGE_ATTEMPTS,
                        message: format!("shuffle {shuffle} output of map {map} kept failing: {message}"),
                    };
                    self.abort_stage(end.stage, err);
                    return;
                }
                // The shuffle's stage may not be a parent of this one: it was skipped because a
                // cached RDD covered it, and the cache has since lost blocks. Create it (or take
                // another job's) and make it a parent now.
                let parent = self.missing_shuffle_stage(end.stage, sid);
                match parent {
                    Some(p) => {
                        if let Some(ps) = self.stages.get_mut(&p) {
                            if matches!(ps.state, StageState::Done) {
                                ps.state = StageState::New;
                            }
                        }
                    }
                    None => {
                        let err =
                            Error::Internal(format!("shuffle {shuffle} read by stage {} is unknown", end.stage.0));
                        self.abort_stage(end.stage, err);
                        return;
                    }
                }
                self.submit_stage(end.stage);
            }
            Err(err) => {
                if matches!(err, Error::Cancelled(_)) {
                    // Attempts this scheduler kills belong to task sets it has already dropped, so
                    // their statuses never get here: this cancellation came from the task itself
                    // (user code returned it). It is not retried.
                    self.abort_stage(end.stage, err);
                    return;
                }
                let fails = stage.failures.entry(end.index).or_insert(0);
                *fails += 1;
                stage.failed_attempts += 1;
                let fails = *fails;
                let max = self.settings.max_task_failures;
                tracing::warn!("stage {} task {} attempt {} failed: {err}", end.stage.0, end.index, end.attempt);
                let partition = stage.kind.partition_of(end.index);
                if err.is_retryable() && fails < max {
                    let epoch = self.tracker.epoch();
                    let placement = retry_placement((&stage.rdd, &stage.waits), partition, &self.env, &self.tracker);
                    ts.launch(&*self.backend, &stage.code, (end.index, partition, fails), epoch, placement);
                    stage.launched += 1;
                } else {
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

    /// The map stage of shuffle `sid` as a parent of `stage`: the existing one, or one created
    /// from the dependency found in the lineage of `stage` (through cached RDDs); `stage`'s jobs
    /// are added to it.
    fn missing_shuffle_stage(&mut self, stage: StageId, sid: ShuffleId) -> Option<StageId> {
        let (rdd, jobs) = {
            let s = self.stages.get(&stage)?;
            (s.rdd.clone(), s.jobs.iter().copied().collect::<Vec<_>>())
        };
        let first = *jobs.first()?;
        let p = match self.shuffle_stages.get(&sid) {
            Some(&p) => p,
            None => {
                let dep = find_shuffle(&rdd, sid)?;
                self.shuffle_stage(dep, first).ok()?
            }
        };
        // The lost cache may have covered other shuffles too (a chain of cached partitions
        // lost with one executor): they are all found now, not one fetch failure at a time.
        let mut found = vec![p];
        if let Ok(more) = self.parent_stages(&rdd, first) {
            found.extend(more);
        }
        for &q in &found {
            for &j in &jobs {
                self.add_job_to(q, j);
            }
            if let Some(s) = self.stages.get_mut(&stage) {
                if !s.parents.contains(&q) {
                    s.parents.push(q);
                }
            }
        }
        Some(p)
    }

    fn on_stage_done(&mut self, id: StageId) {
        self.revive_checked.1 = true;
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
        if job.finished.get(index).is_none_or(|f| *f) {
            return;
        }
        job.finished[index] = true;
        job.num_finished += 1;
        // Decoding the result runs the user's `Deserialize` impl: its panic fails this job only,
        // not every job in flight.
        let res = match job.listener.as_mut() {
            Some(l) => std::panic::catch_unwind(AssertUnwindSafe(|| l.task_succeeded(index, output))).unwrap_or_else(
                |payload| {
                    Err(Error::UserPanic(format!(
                        "a user function panicked on the driver while decoding a result of job {}: {}",
                        job_id.0,
                        panic_message(&*payload)
                    )))
                },
            ),
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
        // Stages no other job needs go away; their running tasks are killed.
        let mut gone = Vec::new();
        for s in self.stages.values_mut() {
            if s.jobs.remove(&job_id) && s.jobs.is_empty() {
                if let StageState::Running(ts) = &s.state {
                    ts.kill_all(&*self.backend);
                }
                gone.push(s.id);
            }
        }
        let mut summaries = Vec::new();
        let mut ids: Vec<StageId> = gone.clone();
        ids.push(job.final_stage);
        ids.sort();
        ids.dedup();
        let peaks = self.env.blocks.end_watch(job.watch);
        for id in &ids {
            if let Some(s) = self.stages.get_mut(id) {
                s.close_watch(&self.env.blocks);
                if s.launched > 0 {
                    summaries.push(StageSummary {
                        id: s.id,
                        name: s.name.clone(),
                        tasks: s.tasks_done,
                        launched: s.launched,
                        failed_attempts: s.failed_attempts,
                        fetch_failures: s.fetch_failures,
                        metrics: s.metrics,
                        peak_execution_memory: s.peaks.execution,
                        peak_storage_memory: s.peaks.storage,
                        peak_memory: s.peaks.total,
                        prescheduled: !s.waits.is_empty(),
                        speculative_copies: s.speculated,
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
        self.record_summary(job_id, ok, job.started, &summaries, peaks);
        if let Some(l) = job.listener.take() {
            l.job_finished(result);
        }
    }

    fn record_summary(
        &mut self,
        id: JobId,
        succeeded: bool,
        started: Instant,
        stages: &[StageSummary],
        peaks: MemoryPeaks,
    ) {
        let summary = JobSummary {
            id,
            succeeded,
            duration: started.elapsed(),
            stages: stages.to_vec(),
            peak_execution_memory: peaks.execution,
            peak_storage_memory: peaks.storage,
            peak_memory: peaks.total,
        };
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

/// Merges a successful task's accumulator updates; a user `AccumulatorParam` that panics fails
/// the jobs of the task's stage, not the scheduler.
fn merge_updates(updates: accumulator::AccumUpdates) -> Result<()> {
    std::panic::catch_unwind(AssertUnwindSafe(|| accumulator::merge_updates(updates)))
        .map_err(|p| Error::UserPanic(format!("an accumulator's merge panicked on the driver: {}", panic_message(&*p))))
}

/// The shuffle dependency `sid` in the lineage of `rdd`, looking through cached RDDs.
fn find_shuffle(rdd: &Arc<dyn RddBase>, sid: ShuffleId) -> Option<Arc<dyn ShuffleDepBase>> {
    let mut seen = HashSet::new();
    let mut stack = vec![rdd.clone()];
    while let Some(r) = stack.pop() {
        if !seen.insert(r.id()) {
            continue;
        }
        for dep in r.dependencies() {
            match dep {
                Dependency::Narrow(p) => stack.push(p),
                Dependency::Shuffle(d) if d.shuffle_id() == sid => return Some(d),
                Dependency::Shuffle(d) => stack.extend(d.parent()),
            }
        }
    }
    None
}
