//! The driver's side: the control service executors connect to, and the executor backend the
//! scheduler hands tasks to.
//!
//! The backend keeps the tasks the scheduler launched in a queue and hands them to executors
//! with free slots, many per message; an executor's statuses free its slots again. When an
//! executor's session ends, its running tasks fail with [`Error::ExecutorLost`] and the scheduler
//! runs them again (on the executors left).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ember_core::runtime::{ExecutorBackend, StatusSink, TaskLaunch, TaskStatus};
use ember_core::scheduler::MapOutputTracker;
use ember_core::shuffle::{MapStatus, ShuffleId};
use ember_core::Error;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};

use crate::auth;
use crate::error::{ClusterError, Result};
use crate::proto::{self, driver_message::Kind as Out, executor_message::Kind as In};
use crate::wire;

/// An executor's session, as the driver holds it.
struct Session {
    tx: mpsc::UnboundedSender<std::result::Result<proto::DriverMessage, Status>>,
    slots: usize,
    /// Tasks launched on it and not yet reported.
    running: HashSet<u64>,
    /// Pre-scheduled tasks sent to it and not yet reported: they wait there for their input
    /// and take no slot until they run, so they do not count against its free slots.
    held: HashSet<u64>,
    /// Task attempts that failed on it in a row (execution errors: not input errors, fetch
    /// failures, kills or losses).
    failures_in_a_row: u32,
    /// Excluded for the application after too many failures in a row: it gets no more tasks.
    excluded: bool,
    /// Tasks given to it so far (ties between executors go to the one given fewer).
    given: u64,
    /// When it last sent anything (a status or a heartbeat).
    last_heard: Instant,
}

#[derive(Default)]
struct State {
    /// Registered executors, by id.
    sessions: BTreeMap<String, Session>,
    /// Executors started for the application and not registered yet.
    expected: HashSet<String>,
    /// Why executors could not join (refused, lost while starting).
    refusals: Vec<String>,
    /// Tasks waiting for a slot, with when they were queued.
    queue: VecDeque<(TaskLaunch, Instant)>,
    /// Pre-scheduled tasks gathered until the scheduler flushes them.
    outbox: Vec<TaskLaunch>,
    /// Executors the master took away (or that exited) before or after they registered: they
    /// may not register again.
    removed: HashSet<String>,
    /// Whether a master may grant executors later (standalone): tasks then wait for executors
    /// instead of failing when none is left, and executors the driver was not told of may
    /// register (they proved the application's secret and binary).
    elastic: bool,
    /// Where each running task runs, and its launch (to report it failed if its executor goes).
    running: HashMap<u64, (String, TaskLaunch)>,
    stopped: bool,
}

/// The driver's view of its executors; the control service and the backend share it.
pub(crate) struct Cluster {
    state: Mutex<State>,
    changed: Condvar,
    statuses: StatusSink,
    app_id: String,
    /// The driver's executable hash: executors must have the same.
    binary: [u8; 32],
    /// The driver's settings, sent to executors when they register.
    settings: Vec<u8>,
    /// Where map outputs are.
    tracker: Arc<MapOutputTracker>,
    /// The driver's services (broadcast values are published there).
    driver_env: Arc<ember_core::env::Env>,
    /// How long a task waits for a slot on an executor it prefers (`ember.locality.wait`).
    locality_wait: Duration,
    /// Failed attempts in a row that exclude an executor (`ember.excludeOnFailure.maxFailures`;
    /// 0: never).
    max_failures_in_a_row: u32,
    /// Data-plane addresses of every executor that registered, kept after it is lost (a
    /// reducer asking for a lost executor's outputs gets an address that fails, and so a fetch
    /// failure).
    addresses: Mutex<HashMap<String, String>>,
}

impl Cluster {
    pub(crate) fn new(
        app_id: String,
        binary: [u8; 32],
        settings: &ember_core::conf::Settings,
        (statuses, tracker, driver_env): (StatusSink, Arc<MapOutputTracker>, Arc<ember_core::env::Env>),
    ) -> Result<Arc<Cluster>> {
        let encoded = postcard::to_allocvec(settings)
            .map_err(|e| ClusterError::Protocol(format!("the settings do not encode: {e}")))?;
        let cluster = Arc::new(Cluster {
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
            statuses,
            app_id,
            binary,
            settings: encoded,
            tracker,
            driver_env,
            locality_wait: Duration::from_millis(settings.locality_wait_ms),
            max_failures_in_a_row: settings.exclude_after_failures,
            addresses: Mutex::default(),
        });
        // Executors delete the outputs of a shuffle the driver removed.
        let weak = Arc::downgrade(&cluster);
        cluster.driver_env.shuffle.on_remove_shuffle(Arc::new(move |id| {
            if let Some(c) = weak.upgrade() {
                c.broadcast(Out::RemoveShuffle(proto::RemoveShuffle { shuffle: id.0 }));
            }
        }));
        // Executors drop their copies of a broadcast value the driver releases.
        let weak = Arc::downgrade(&cluster);
        cluster.driver_env.broadcasts.on_release(Arc::new(move |id| {
            if let Some(c) = weak.upgrade() {
                c.broadcast(Out::ReleaseBroadcast(proto::ReleaseBroadcast { id }));
            }
        }));
        Ok(cluster)
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Expects an executor the driver started.
    pub(crate) fn expect(&self, id: &str) {
        self.state().expected.insert(id.to_string());
    }

    /// Waits until `n` executors are registered, `deadline` passes, or `alive()` says a started
    /// executor is gone (its message is the error).
    pub(crate) fn wait_for(
        &self,
        n: usize,
        deadline: Instant,
        mut alive: impl FnMut() -> std::result::Result<(), String>,
    ) -> Result<()> {
        let mut state = self.state();
        loop {
            if let Some(r) = state.refusals.first() {
                return Err(ClusterError::Startup(r.clone()));
            }
            if state.sessions.len() >= n {
                return Ok(());
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(ClusterError::Startup(format!(
                    "{} of {n} executors registered before the timeout",
                    state.sessions.len()
                )));
            }
            drop(state);
            alive().map_err(ClusterError::Startup)?;
            state = self.state();
            let wait = (deadline - now).min(Duration::from_millis(100));
            state = self.changed.wait_timeout(state, wait).unwrap_or_else(|p| p.into_inner()).0;
        }
    }

    /// Hands queued tasks to executors with free slots, one message per executor. A task goes
    /// to a free executor among those it prefers (holders of its cached input); while one of
    /// them is alive it waits up to `locality_wait` for a slot there (delay scheduling), then
    /// takes the executor with the most free slots. Returns tasks that cannot run (no executor
    /// is left, or their launch does not encode), for the caller to report failed once the lock
    /// is released.
    #[must_use]
    fn dispatch(state: &mut State, locality_wait: Duration) -> Vec<(TaskLaunch, Error)> {
        let mut failed = Vec::new();
        if state.sessions.is_empty() && state.expected.is_empty() && !state.elastic && !state.queue.is_empty() {
            let e =
                || Error::ExecutorLost { executor: "all".into(), reason: "no executor is left to run tasks".into() };
            failed.extend(state.queue.drain(..).map(|(t, _)| (t, e())));
            return failed;
        }
        if !state.sessions.is_empty() && state.sessions.values().all(|s| s.excluded) {
            // The executors that were not excluded are gone: the excluded ones are all there is.
            tracing::warn!("every executor left was excluded for failures: they take tasks again");
            for s in state.sessions.values_mut() {
                s.excluded = false;
                s.failures_in_a_row = 0;
            }
        }
        let mut free: BTreeMap<String, usize> = state
            .sessions
            .iter()
            .filter(|(_, s)| !s.excluded)
            .map(|(id, s)| (id.clone(), s.slots.saturating_sub(s.running.len())))
            .filter(|&(_, f)| f > 0)
            .collect();
        if free.is_empty() || state.queue.is_empty() {
            return failed;
        }
        let now = Instant::now();
        let mut assigned: BTreeMap<String, Vec<TaskLaunch>> = BTreeMap::new();
        let mut kept = VecDeque::new();
        while let Some((task, queued)) = state.queue.pop_front() {
            if free.is_empty() {
                kept.push_back((task, queued));
                kept.extend(state.queue.drain(..));
                break;
            }
            // A speculative copy runs away from the executor running the attempt it copies
            // (when there is another).
            let avoid = match task.speculative && state.sessions.len() > 1 {
                true => state
                    .running
                    .values()
                    .find(|(_, t)| {
                        t.stage == task.stage && t.stage_attempt == task.stage_attempt && t.index == task.index
                    })
                    .map(|(on, _)| on.clone()),
                false => None,
            };
            let allowed = |id: &str| avoid.as_deref() != Some(id);
            let target = match task.preferred.iter().find(|p| free.contains_key(&***p) && allowed(p)) {
                Some(p) => Some(p.to_string()),
                None => {
                    let waits = now.saturating_duration_since(queued) < locality_wait
                        && task
                            .preferred
                            .iter()
                            .any(|p| state.sessions.get(&**p).is_some_and(|s| !s.excluded) && allowed(p));
                    match waits {
                        true => None,
                        false => {
                            // Most free slots; among equals, the one given the fewest tasks.
                            let given = |id: &str| state.sessions.get(id).map_or(0, |s| s.given);
                            free.iter()
                                .filter(|(id, _)| allowed(id))
                                .max_by_key(|&(id, f)| (*f, std::cmp::Reverse(given(id))))
                                .map(|(id, _)| id.clone())
                        }
                    }
                }
            };
            let Some(id) = target else {
                kept.push_back((task, queued));
                continue;
            };
            if let Some(f) = free.get_mut(&id) {
                *f -= 1;
                if *f == 0 {
                    free.remove(&id);
                }
            }
            assigned.entry(id).or_default().push(task);
        }
        state.queue = kept;
        failed.extend(Self::send_batches(state, assigned, false));
        failed
    }

    /// Dispatches queued tasks again: those waiting for a preferred executor may have waited
    /// long enough.
    pub(crate) fn redispatch(&self) {
        let failed = {
            let mut state = self.state();
            if state.queue.is_empty() {
                return;
            }
            Self::dispatch(&mut state, self.locality_wait)
        };
        self.fail(failed);
    }

    /// Reports tasks that could not run.
    fn fail(&self, failed: Vec<(TaskLaunch, Error)>) {
        for (t, e) in failed {
            (self.statuses)(t.failed(e));
        }
    }

    /// A status from executor `from`: its slot is free again. What identifies the attempt
    /// comes from the driver's own record of the launch, not from the executor.
    fn task_ended(&self, from: &str, mut status: TaskStatus) {
        let failed = {
            let mut state = self.state();
            match state.running.get(&status.task_id) {
                Some((on, _)) if on == from => {}
                // Not launched there (or already failed over): not this executor's to report.
                _ => {
                    tracing::warn!("executor {from} reported task {}, which it does not run", status.task_id);
                    return;
                }
            }
            let Some((_, launch)) = state.running.remove(&status.task_id) else { return };
            status.stage = launch.stage;
            status.stage_attempt = launch.stage_attempt;
            status.index = launch.index;
            status.attempt = launch.attempt;
            status.epoch = launch.epoch;
            if let Ok(ember_core::runtime::TaskOutput::Map(m)) = &status.result {
                if &*m.location != from {
                    let e = format!("executor {from} reported a map output held by `{}`", m.location);
                    status.result = Err(Error::Serialization(e));
                }
            }
            if let Some(s) = state.sessions.get_mut(from) {
                s.running.remove(&status.task_id);
                s.held.remove(&status.task_id);
            }
            self.count_failure(&mut state, from, &status.result);
            Self::dispatch(&mut state, self.locality_wait)
        };
        (self.statuses)(status);
        self.fail(failed);
    }

    /// Counts a task's outcome against its executor; one that fails `max_failures_in_a_row`
    /// attempts in a row (execution errors only) is excluded for the application, unless it is
    /// the last executor taking tasks.
    fn count_failure(
        &self,
        state: &mut State,
        from: &str,
        result: &ember_core::Result<ember_core::runtime::TaskOutput>,
    ) {
        let failed = match result {
            Ok(_) => false,
            Err(e) => e.class() == ember_core::ErrorClass::Execution && !matches!(e, Error::ExecutorLost { .. }),
        };
        let others = state.sessions.iter().filter(|(id, s)| id.as_str() != from && !s.excluded).count();
        let Some(s) = state.sessions.get_mut(from) else { return };
        if !failed {
            // Only a success ends a run of failures (kills, fetch failures and input errors
            // say nothing about the executor).
            if result.is_ok() {
                s.failures_in_a_row = 0;
            }
            return;
        }
        s.failures_in_a_row += 1;
        if self.max_failures_in_a_row > 0
            && s.failures_in_a_row >= self.max_failures_in_a_row
            && !s.excluded
            && others > 0
        {
            s.excluded = true;
            tracing::warn!(
                "executor {from} failed {} tasks in a row: excluded for the application (ember.excludeOnFailure.maxFailures)",
                s.failures_in_a_row
            );
        }
    }

    /// Tells every executor where the others' data planes are (where map outputs are announced).
    fn send_peers(state: &State, addresses: &HashMap<String, String>) {
        let executors: HashMap<String, String> =
            state.sessions.keys().filter_map(|id| addresses.get(id).map(|a| (id.clone(), a.clone()))).collect();
        for s in state.sessions.values() {
            let peers = proto::Peers { executors: executors.clone() };
            let _ = s.tx.send(Ok(proto::DriverMessage { kind: Some(Out::Peers(peers)) }));
        }
    }

    /// Sends each executor its tasks in one message and records them as running there (`held`:
    /// pre-scheduled, taking no slot until they run). Tasks whose executor is gone go back to
    /// the queue; tasks whose launch does not encode are returned, failed.
    fn send_batches(
        state: &mut State,
        batches: BTreeMap<String, Vec<TaskLaunch>>,
        held: bool,
    ) -> Vec<(TaskLaunch, Error)> {
        let mut failed = Vec::new();
        let now = Instant::now();
        for (id, tasks) in batches {
            let message = match wire::launch_message(&tasks) {
                Ok(m) => m,
                Err(e) => {
                    tracing::error!("cannot send tasks to executor {id}: {e}");
                    let reason = e.to_string();
                    failed.extend(tasks.into_iter().map(|t| (t, Error::Internal(reason.clone()))));
                    continue;
                }
            };
            let Some(session) = state.sessions.get_mut(&id) else {
                // Chosen under this lock, so present; were it not, the tasks wait in the queue.
                state.queue.extend(tasks.into_iter().map(|t| (t, now)));
                continue;
            };
            // A send that fails means the session is ending; its end fails these tasks over.
            let _ = session.tx.send(Ok(proto::DriverMessage { kind: Some(Out::Launch(message)) }));
            session.given += tasks.len() as u64;
            for t in tasks {
                match held {
                    true => session.held.insert(t.task_id),
                    false => session.running.insert(t.task_id),
                };
                state.running.insert(t.task_id, (id.clone(), t));
            }
        }
        failed
    }

    /// Sends the gathered pre-scheduled tasks, each to the executor it was placed on (or, when
    /// that one is gone, to the one with the most free slots), one message per executor.
    fn send_outbox(state: &mut State) -> Vec<(TaskLaunch, Error)> {
        let mut failed = Vec::new();
        let tasks = std::mem::take(&mut state.outbox);
        if tasks.is_empty() {
            return failed;
        }
        let now = Instant::now();
        let mut by_executor: BTreeMap<String, Vec<TaskLaunch>> = BTreeMap::new();
        for t in tasks {
            let placed = t
                .preferred
                .iter()
                .find(|p| state.sessions.get(&***p).is_some_and(|s| !s.excluded))
                .map(|p| p.to_string());
            let target = placed.or_else(|| {
                state
                    .sessions
                    .iter()
                    .filter(|(_, s)| !s.excluded)
                    .max_by_key(|(_, s)| (s.slots.saturating_sub(s.running.len()), std::cmp::Reverse(s.given)))
                    .map(|(id, _)| id.clone())
            });
            match target {
                Some(id) => by_executor.entry(id).or_default().push(t),
                // No executor now: it waits in the queue like any task.
                None => state.queue.push_back((t, now)),
            }
        }
        failed.extend(Self::send_batches(state, by_executor, true));
        failed
    }

    /// Executor `id` is gone: its running tasks fail (to run again elsewhere).
    fn lost(&self, id: &str, reason: &str) {
        self.lose(id, reason, |_| true);
    }

    /// [`lost`](Self::lost), if its session still satisfies `still` under the lock.
    fn lose(&self, id: &str, reason: &str, still: impl FnOnce(&Session) -> bool) {
        let failed: Vec<(TaskLaunch, Error)> = {
            let mut state = self.state();
            if !state.sessions.get(id).is_some_and(still) {
                return;
            }
            let Some(session) = state.sessions.remove(id) else { return };
            if !state.stopped {
                tracing::warn!("executor {id} lost: {reason}");
                // Its map outputs and cached partitions are gone with it: stages that need them run
                // their tasks again.
                self.driver_env.block_locations.executor_lost(id);
                let gone = self.tracker.executor_lost(id);
                if !gone.is_empty() {
                    tracing::info!("{} map outputs were lost with executor {id}", gone.len());
                }
            }
            let e = || Error::ExecutorLost { executor: id.to_string(), reason: reason.to_string() };
            let mut failed: Vec<(TaskLaunch, Error)> = session
                .running
                .iter()
                .chain(&session.held)
                .filter_map(|t| state.running.remove(t))
                .map(|(_, t)| (t, e()))
                .collect();
            failed.extend(Self::dispatch(&mut state, self.locality_wait));
            Self::send_peers(&state, &self.addresses.lock().unwrap_or_else(|p| p.into_inner()));
            self.changed.notify_all();
            failed
        };
        self.fail(failed);
    }

    /// Handles a session's first message; `Err` is the refusal to send back.
    fn register(
        &self,
        r: &proto::Register,
        tx: &mpsc::UnboundedSender<std::result::Result<proto::DriverMessage, Status>>,
    ) -> std::result::Result<(), String> {
        let mut state = self.state();
        let refuse = |state: &mut State, reason: String| {
            state.refusals.push(format!("executor {}: {reason}", r.executor_id));
            self.changed.notify_all();
            Err(reason)
        };
        if r.binary_sha256 != self.binary {
            let reason = format!(
                "its executable (SHA-256 {}) differs from the driver's ({}): executors must run the driver's own binary",
                auth::hex(&r.binary_sha256),
                auth::hex(&self.binary)
            );
            return refuse(&mut state, reason);
        }
        let known = state.expected.remove(&r.executor_id);
        let removed = state.removed.contains(&r.executor_id);
        if !(known || state.elastic) || removed || state.sessions.contains_key(&r.executor_id) {
            let reason =
                format!("the driver did not start an executor named `{}`, or it already registered", r.executor_id);
            return refuse(&mut state, reason);
        }
        let slots = usize::try_from(r.slots).unwrap_or(0);
        if slots == 0 {
            return refuse(&mut state, "it has no task slots".into());
        }
        let registered = proto::Registered { app_id: self.app_id.clone(), settings: self.settings.clone() };
        let _ = tx.send(Ok(proto::DriverMessage { kind: Some(Out::Registered(registered)) }));
        tracing::info!("executor {} registered from {} (pid {}, {slots} slots)", r.executor_id, r.host, r.pid);
        let data = format!("{}:{}", r.host, r.data_port);
        self.addresses.lock().unwrap_or_else(|p| p.into_inner()).insert(r.executor_id.clone(), data);
        state.sessions.insert(
            r.executor_id.clone(),
            Session {
                tx: tx.clone(),
                slots,
                running: HashSet::new(),
                held: HashSet::new(),
                failures_in_a_row: 0,
                excluded: false,
                given: 0,
                last_heard: Instant::now(),
            },
        );
        Self::send_peers(&state, &self.addresses.lock().unwrap_or_else(|p| p.into_inner()));
        let failed = Self::dispatch(&mut state, self.locality_wait);
        self.changed.notify_all();
        drop(state);
        self.fail(failed);
        Ok(())
    }

    /// Whether a master may still grant executors (see `State::elastic`). Turning it off fails
    /// the queued tasks when no executor is left.
    pub(crate) fn set_elastic(&self, elastic: bool) {
        let failed = {
            let mut state = self.state();
            state.elastic = elastic;
            Self::dispatch(&mut state, self.locality_wait)
        };
        self.changed.notify_all();
        self.fail(failed);
    }

    /// The master took executor `id` away (or it exited): it is lost if it registered, and no
    /// longer awaited if it did not.
    pub(crate) fn executor_removed(&self, id: &str, reason: &str) {
        let failed = {
            let mut state = self.state();
            state.expected.remove(id);
            state.removed.insert(id.to_string());
            Self::dispatch(&mut state, self.locality_wait)
        };
        self.changed.notify_all();
        self.fail(failed);
        self.lost(id, reason);
    }

    /// How many executors are registered now, and how many are awaited.
    pub(crate) fn counts(&self) -> (usize, usize) {
        let state = self.state();
        (state.sessions.len(), state.expected.len())
    }

    /// Whether the application stopped.
    pub(crate) fn is_stopped(&self) -> bool {
        self.state().stopped
    }

    /// Executor `id` reports the cached partitions it gained and lost.
    fn blocks_changed(&self, id: &str, update: proto::BlockUpdate) {
        // Only a registered executor's reports count (a lost one's blocks are gone).
        let Some(executor) = self.state().sessions.get_key_value(id).map(|(k, _)| Arc::<str>::from(k.as_str())) else {
            return;
        };
        let locations = &self.driver_env.block_locations;
        for b in update.added {
            if let Ok(split) = usize::try_from(b.split) {
                locations.added(&executor, ember_core::storage::RddId(b.rdd), split);
            }
        }
        for b in update.removed {
            if let Ok(split) = usize::try_from(b.split) {
                locations.removed(id, ember_core::storage::RddId(b.rdd), split);
            }
        }
    }

    /// Executor `id` was heard from.
    fn heard(&self, id: &str) {
        if let Some(s) = self.state().sessions.get_mut(id) {
            s.last_heard = Instant::now();
        }
    }

    /// Declares lost every executor silent for longer than `timeout` (its session stays open
    /// but it sends neither statuses nor heartbeats: hung, or cut off without a reset).
    pub(crate) fn expire_silent(&self, timeout: Duration) {
        let silent: Vec<String> = {
            let state = self.state();
            state.sessions.iter().filter(|(_, s)| s.last_heard.elapsed() > timeout).map(|(id, _)| id.clone()).collect()
        };
        let reason = format!("it sent nothing for {} ms (ember.network.timeout)", timeout.as_millis());
        for id in silent {
            // Checked again under the lock: it may have spoken since.
            self.lose(&id, &reason, |s| s.last_heard.elapsed() > timeout);
        }
    }

    /// Sends `message` to every executor.
    fn broadcast(&self, message: Out) {
        for s in self.state().sessions.values() {
            let _ = s.tx.send(Ok(proto::DriverMessage { kind: Some(message.clone()) }));
        }
    }

    /// Ends every session (executors exit) and fails whatever is still queued.
    pub(crate) fn shut_down(&self, reason: &str) {
        let queued: Vec<TaskLaunch> = {
            let mut state = self.state();
            state.stopped = true;
            let mut queued: Vec<TaskLaunch> = state.queue.drain(..).map(|(t, _)| t).collect();
            queued.append(&mut state.outbox);
            queued
        };
        self.broadcast(Out::Shutdown(proto::Shutdown { reason: reason.to_string() }));
        for t in queued {
            (self.statuses)(t.failed(Error::Cancelled("the context stopped".into())));
        }
    }
}

/// The executor backend of a cluster application.
pub(crate) struct RemoteBackend {
    pub(crate) cluster: Arc<Cluster>,
    /// Stops what runs the executors (processes, the service) once.
    pub(crate) on_stop: Mutex<Option<Box<dyn FnOnce() + Send>>>,
    /// Runs once before the executors are told to shut down (a standalone application tells
    /// its master that their exits are expected).
    pub(crate) before_stop: Mutex<Option<Box<dyn FnOnce() + Send>>>,
}

impl ExecutorBackend for RemoteBackend {
    fn slots(&self) -> usize {
        self.cluster.state().sessions.values().map(|s| s.slots).sum::<usize>().max(1)
    }

    fn launch(&self, task: TaskLaunch) {
        let mut state = self.cluster.state();
        if state.stopped {
            drop(state);
            (self.cluster.statuses)(task.failed(Error::Cancelled("the context stopped".into())));
            return;
        }
        if task.after.is_some() {
            state.outbox.push(task);
            return;
        }
        state.queue.push_back((task, Instant::now()));
        let failed = Cluster::dispatch(&mut state, self.cluster.locality_wait);
        drop(state);
        self.cluster.fail(failed);
    }

    fn kill(&self, task_ids: &[u64]) {
        let (queued, by_executor) = {
            let mut state = self.cluster.state();
            let wanted: HashSet<u64> = task_ids.iter().copied().collect();
            let (queued, kept): (VecDeque<(TaskLaunch, Instant)>, VecDeque<(TaskLaunch, Instant)>) =
                std::mem::take(&mut state.queue).into_iter().partition(|(t, _)| wanted.contains(&t.task_id));
            state.queue = kept;
            let (unsent, outbox): (Vec<TaskLaunch>, Vec<TaskLaunch>) =
                std::mem::take(&mut state.outbox).into_iter().partition(|t| wanted.contains(&t.task_id));
            state.outbox = outbox;
            let mut queued = queued;
            queued.extend(unsent.into_iter().map(|t| (t, Instant::now())));
            let mut by_executor: HashMap<String, Vec<u64>> = HashMap::new();
            for id in task_ids {
                if let Some((on, _)) = state.running.get(id) {
                    by_executor.entry(on.clone()).or_default().push(*id);
                }
            }
            for (on, ids) in &by_executor {
                if let Some(s) = state.sessions.get(on) {
                    let kill = proto::KillTasks { task_ids: ids.clone() };
                    let _ = s.tx.send(Ok(proto::DriverMessage { kind: Some(Out::Kill(kill)) }));
                }
            }
            (queued, by_executor)
        };
        drop(by_executor);
        for (t, _) in queued {
            (self.cluster.statuses)(t.failed(Error::Cancelled("the task was killed before it started".into())));
        }
    }

    fn executors(&self) -> Vec<Arc<str>> {
        let state = self.cluster.state();
        state.sessions.iter().filter(|(_, s)| !s.excluded).map(|(id, _)| Arc::from(id.as_str())).collect()
    }

    fn flush(&self) {
        let failed = {
            let mut state = self.cluster.state();
            let mut failed = Cluster::send_outbox(&mut state);
            failed.extend(Cluster::dispatch(&mut state, self.cluster.locality_wait));
            failed
        };
        self.cluster.fail(failed);
    }

    fn discard_map_output(&self, status: &MapStatus) {
        let Ok(bytes) = postcard::to_allocvec(status) else { return };
        let state = self.cluster.state();
        if let Some(s) = state.sessions.get(&*status.location) {
            let discard = proto::DiscardOutputs { map_statuses: vec![bytes] };
            let _ = s.tx.send(Ok(proto::DriverMessage { kind: Some(Out::Discard(discard)) }));
        }
    }

    fn stop(&self) {
        let before = self.before_stop.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(before) = before {
            before();
        }
        self.cluster.shut_down("the driver stopped its context");
        let stop = self.on_stop.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(stop) = stop {
            stop();
        }
    }
}

impl Drop for RemoteBackend {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The control service.
pub(crate) struct DriverService {
    pub(crate) cluster: Arc<Cluster>,
}

type OutStream = Pin<Box<dyn tokio_stream::Stream<Item = std::result::Result<proto::DriverMessage, Status>> + Send>>;

type BroadcastStream =
    Pin<Box<dyn tokio_stream::Stream<Item = std::result::Result<proto::BroadcastChunk, Status>> + Send>>;

type BinaryStream = Pin<Box<dyn tokio_stream::Stream<Item = std::result::Result<proto::BinaryChunk, Status>> + Send>>;

type LineageStream = Pin<Box<dyn tokio_stream::Stream<Item = std::result::Result<proto::LineageChunk, Status>> + Send>>;

/// `bytes` as the messages of a stream, at most 1 MiB each (one empty message for no bytes).
fn chunked<C>(bytes: &[u8], message: impl Fn(Vec<u8>) -> C) -> Vec<std::result::Result<C, Status>> {
    if bytes.is_empty() {
        return vec![Ok(message(Vec::new()))];
    }
    bytes.chunks(1 << 20).map(|c| Ok(message(c.to_vec()))).collect()
}

/// Streams the driver's running executable in chunks of 1 MiB, read as they are sent.
fn binary_stream() -> BinaryStream {
    let (tx, rx) = mpsc::channel::<std::result::Result<proto::BinaryChunk, Status>>(4);
    tokio::task::spawn_blocking(move || {
        use std::io::Read;
        let mut file = match std::fs::File::open(auth::SELF_EXE) {
            Ok(f) => f,
            Err(e) => {
                let _ = tx.blocking_send(Err(Status::internal(format!("cannot open the driver's executable: {e}"))));
                return;
            }
        };
        loop {
            let mut chunk = vec![0u8; 1 << 20];
            let n = match file.read(&mut chunk) {
                Ok(0) => return,
                Ok(n) => n,
                Err(e) => {
                    let _ = tx.blocking_send(Err(Status::internal(format!("reading the driver's executable: {e}"))));
                    return;
                }
            };
            chunk.truncate(n);
            if tx.blocking_send(Ok(proto::BinaryChunk { data: chunk })).is_err() {
                return;
            }
        }
    });
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}

#[tonic::async_trait]
impl proto::driver_server::Driver for DriverService {
    type SessionStream = OutStream;
    type BroadcastStream = BroadcastStream;
    type BinaryStream = BinaryStream;
    type LineageStream = LineageStream;

    async fn lineage(
        &self,
        request: Request<proto::LineageRequest>,
    ) -> std::result::Result<Response<Self::LineageStream>, Status> {
        let rdd = ember_core::storage::RddId(request.into_inner().rdd);
        let cluster = self.cluster.clone();
        // Encoding runs user `Serialize` code: off the runtime's threads.
        let bytes = tokio::task::spawn_blocking(move || cluster.driver_env.lineages.encode(rdd))
            .await
            .map_err(|e| Status::internal(format!("encoding the lineage of rdd {} failed: {e}", rdd.0)))?
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(Box::pin(tokio_stream::iter(chunked(&bytes, |data| proto::LineageChunk { data })))))
    }

    async fn binary(
        &self,
        _request: Request<proto::BinaryRequest>,
    ) -> std::result::Result<Response<Self::BinaryStream>, Status> {
        Ok(Response::new(binary_stream()))
    }

    async fn broadcast(
        &self,
        request: Request<proto::BroadcastRequest>,
    ) -> std::result::Result<Response<Self::BroadcastStream>, Status> {
        let id = request.into_inner().id;
        let bytes =
            self.cluster.driver_env.broadcasts.published_bytes(id).map_err(|e| Status::not_found(e.to_string()))?;
        Ok(Response::new(Box::pin(tokio_stream::iter(chunked(&bytes, |data| proto::BroadcastChunk { data })))))
    }

    async fn map_outputs(
        &self,
        request: Request<proto::MapOutputsRequest>,
    ) -> std::result::Result<Response<proto::MapOutputsReply>, Status> {
        let shuffle = ShuffleId(request.into_inner().shuffle);
        let cluster = &self.cluster;
        // The epoch first: statuses registered after it are newer, never older, than it says.
        let epoch = cluster.tracker.epoch();
        let statuses = cluster.tracker.statuses(shuffle);
        let addresses = cluster.addresses.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mut executors = HashMap::new();
        let mut encoded = Vec::with_capacity(statuses.len());
        for s in statuses {
            match s {
                Some(s) => {
                    if let Some(a) = addresses.get(&*s.location) {
                        executors.insert(s.location.to_string(), a.clone());
                    }
                    encoded.push(postcard::to_allocvec(&s).map_err(|e| Status::internal(e.to_string()))?);
                }
                None => encoded.push(Vec::new()),
            }
        }
        Ok(Response::new(proto::MapOutputsReply { epoch, statuses: encoded, executors }))
    }

    async fn session(
        &self,
        request: Request<Streaming<proto::ExecutorMessage>>,
    ) -> std::result::Result<Response<Self::SessionStream>, Status> {
        let peer = request.remote_addr().map_or_else(|| "an unknown address".to_string(), |a| a.to_string());
        let mut inbound = request.into_inner();
        let first = inbound.message().await?;
        let Some(proto::ExecutorMessage { kind: Some(In::Register(register)) }) = first else {
            tracing::warn!("refused a session from {peer}: it did not start by registering");
            return Err(Status::invalid_argument("a session starts with Register"));
        };
        let (tx, rx) = mpsc::unbounded_channel();
        if let Err(reason) = self.cluster.register(&register, &tx) {
            tracing::warn!("refused executor {} from {peer}: {reason}", register.executor_id);
            let _ = tx.send(Ok(proto::DriverMessage { kind: Some(Out::Refused(proto::Refused { reason })) }));
            drop(tx);
            return Ok(Response::new(Box::pin(tokio_stream::wrappers::UnboundedReceiverStream::new(rx))));
        }
        let cluster = self.cluster.clone();
        let id = register.executor_id;
        tokio::spawn(async move {
            let reason = loop {
                match inbound.message().await {
                    Ok(Some(proto::ExecutorMessage { kind: Some(In::Statuses(batch)) })) => {
                        cluster.heard(&id);
                        for s in batch.statuses {
                            cluster.task_ended(&id, wire::status(s));
                        }
                    }
                    Ok(Some(proto::ExecutorMessage { kind: Some(In::Heartbeat(_)) })) => cluster.heard(&id),
                    Ok(Some(proto::ExecutorMessage { kind: Some(In::Blocks(update)) })) => {
                        cluster.heard(&id);
                        cluster.blocks_changed(&id, update);
                    }
                    Ok(Some(other)) => break format!("it sent an unexpected message: {other:?}"),
                    Ok(None) => break "its session ended".to_string(),
                    Err(e) => break format!("its connection failed: {}", e.message()),
                }
            };
            cluster.lost(&id, &reason);
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::UnboundedReceiverStream::new(rx))))
    }
}

/// Checks every call's token.
pub(crate) fn authenticator(token: String) -> impl Fn(Request<()>) -> std::result::Result<Request<()>, Status> + Clone {
    optional_authenticator(Some(token))
}

/// Checks every call's token, when there is one to check (a standalone master without a secret
/// takes every call).
pub(crate) fn optional_authenticator(
    token: Option<String>,
) -> impl Fn(Request<()>) -> std::result::Result<Request<()>, Status> + Clone {
    move |request: Request<()>| {
        let Some(token) = &token else { return Ok(request) };
        let presented = request.metadata().get(auth::AUTH_HEADER).map(|v| v.as_bytes()).unwrap_or_default();
        if auth::token_matches(token, presented) {
            Ok(request)
        } else {
            let peer = request.remote_addr().map_or_else(|| "an unknown address".to_string(), |a| a.to_string());
            tracing::warn!("refused a connection from {peer}: missing or wrong authentication token");
            Err(Status::unauthenticated("missing or wrong authentication token"))
        }
    }
}

/// The driver's control service and the runtime it runs on, with the watchdog that declares
/// silent executors lost.
pub(crate) struct ControlService {
    /// Where executors reach it.
    pub(crate) address: std::net::SocketAddr,
    runtime: tokio::runtime::Runtime,
    shutdown: tokio::sync::oneshot::Sender<()>,
}

impl ControlService {
    /// Serves `cluster` on `ember.driver.host:ember.driver.port`, authenticated with `secret`,
    /// over TLS when `tls` is given.
    pub(crate) fn start(
        cluster: &Arc<Cluster>,
        settings: &ember_core::conf::Settings,
        secret: &auth::Secret,
        tls: Option<&crate::tls::Tls>,
    ) -> Result<ControlService> {
        let mut server = crate::tls::server(tls)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("ember-driver-io")
            .enable_all()
            .build()
            .map_err(|source| ClusterError::Io { path: "the driver's network runtime".into(), source })?;
        let bind = std::net::SocketAddr::new(settings.driver_host, settings.driver_port);
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind(bind))
            .map_err(|source| ClusterError::Io { path: format!("{bind} (the driver's control service)"), source })?;
        let address =
            listener.local_addr().map_err(|source| ClusterError::Io { path: "the control service".into(), source })?;
        let (shutdown, shutdown_rx) = tokio::sync::oneshot::channel::<()>();
        let service = tonic::service::interceptor::InterceptedService::new(
            proto::driver_server::DriverServer::new(DriverService { cluster: cluster.clone() })
                .max_decoding_message_size(crate::MAX_MESSAGE_BYTES)
                .max_encoding_message_size(crate::MAX_MESSAGE_BYTES),
            authenticator(secret.token()),
        );
        runtime.spawn(async move {
            let incoming = crate::incoming(listener);
            let served = server
                .add_service(service)
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = shutdown_rx.await;
                })
                .await;
            if let Err(e) = served {
                tracing::error!("the driver's control service failed: {e}");
            }
        });
        // Executors that stop answering are lost after `ember.network.timeout`.
        let timeout = Duration::from_millis(settings.network_timeout_ms);
        let watched = Arc::downgrade(cluster);
        runtime.spawn(async move {
            let mut tick =
                tokio::time::interval((timeout / 4).clamp(Duration::from_millis(10), Duration::from_secs(1)));
            loop {
                tick.tick().await;
                let Some(cluster) = watched.upgrade() else { break };
                // Declaring a loss reports statuses to the scheduler: not on a runtime thread's time.
                let _ = tokio::task::spawn_blocking(move || cluster.expire_silent(timeout)).await;
            }
        });
        // Tasks waiting for a preferred executor go elsewhere once they have waited long enough.
        let watched = Arc::downgrade(cluster);
        let every = (cluster.locality_wait / 4).clamp(Duration::from_millis(5), Duration::from_millis(100));
        runtime.spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                let Some(cluster) = watched.upgrade() else { break };
                let _ = tokio::task::spawn_blocking(move || cluster.redispatch()).await;
            }
        });
        Ok(ControlService { address, runtime, shutdown })
    }

    /// The runtime, to spawn on.
    pub(crate) fn handle(&self) -> tokio::runtime::Handle {
        self.runtime.handle().clone()
    }

    /// Stops serving; returns the runtime for the caller to shut down once nothing needs it.
    pub(crate) fn stop(self) -> tokio::runtime::Runtime {
        let _ = self.shutdown.send(());
        self.runtime
    }
}
