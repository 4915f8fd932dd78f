//! Scheduling in three layers with one seam.
//!
//! ```text
//!  action ─► JobSpec ─► DAG scheduler (dag.rs): stages cut at shuffles, map output tracking,
//!                          │                   fetch-failure recovery
//!                          ▼
//!                     task sets (taskset.rs): attempts, retries, kills
//!                          │  TaskLaunch (plain data)          ▲ TaskStatus (plain data)
//!                          ▼                                   │
//!                     executor backend (backend.rs): local slot threads, or a cluster runtime's
//!                     executors (runtime.rs is the seam)
//! ```
//!
//! One event loop thread owns all scheduling state; slot threads only run tasks. A group of
//! jobs (`Context::run_jobs`) arrives as one event, so all their stages are created and their
//! runnable tasks queued in one round (Drizzle's group scheduling), instead of one round trip
//! between the caller and the scheduler per job. The map output tracker (tracker.rs) lives on
//! the driver; reduce tasks ask it for their own column of map outputs only.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::Sender;

use crate::conf::Settings;
use crate::env::Env;
use crate::error::{Error, Result};
use crate::rdd::RddBase;
use crate::ship::Ship;
use crate::task::{JobId, StageId, TaskBody, TaskMetrics, TaskOutput};

/// The executor backend seam and the local backend.
pub(crate) mod backend;
/// The DAG scheduler's event loop.
mod dag;
/// Group sizes of iterative programs (`ember.scheduler.groupSize`).
pub mod group;
/// Cached partitions' locations and tasks' preferred executors.
mod locality;
/// Task sets: the tasks of one stage attempt.
mod taskset;
/// The driver's map output tracker.
pub mod tracker;

pub use locality::BlockLocations;
pub use tracker::MapOutputTracker;

use crate::ship::ShipKey;
use backend::{ExecutorBackend, LocalBackend, Mode, TASK_STACK_BYTES};
use dag::{Event, State};

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
    /// The job group it belongs to (`Context::set_job_group`).
    pub(crate) group: Option<String>,
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
    /// Tasks launched, counting every attempt (including retries and killed attempts).
    pub launched: usize,
    /// Failed task attempts (killed attempts are not failures).
    pub failed_attempts: u32,
    /// Fetch failures seen by this stage's tasks.
    pub fetch_failures: u32,
    /// Summed task metrics.
    pub metrics: TaskMetrics,
    /// Most execution memory granted at one time while the stage ran (executor-wide, see
    /// [`JobSummary::peak_memory`]).
    pub peak_execution_memory: u64,
    /// Most storage memory (cached blocks, partitions being unrolled, in-memory map outputs)
    /// at one time while the stage ran.
    pub peak_storage_memory: u64,
    /// Most execution plus storage memory at one time while the stage ran.
    pub peak_memory: u64,
    /// Whether its tasks went out with their group before the stages they read had finished
    /// (Drizzle's pre-scheduling), waiting on their executors for those stages' outputs.
    pub prescheduled: bool,
    /// Speculative copies of slow tasks launched (`ember.speculation`).
    pub speculative_copies: usize,
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
    /// Most execution memory granted at one time between submission and end.
    pub peak_execution_memory: u64,
    /// Most storage memory (cached blocks, partitions being unrolled into the cache, map
    /// outputs held in memory) at one time between submission and end.
    pub peak_storage_memory: u64,
    /// Most execution plus storage memory at one time between submission and end. The block
    /// manager tracks these peaks exactly, under the lock that grants memory, while a watch
    /// is open for the job; they are executor-wide, so jobs running at the same time count in
    /// each other's peaks (an upper bound on what this job used). Every grant comes out of the
    /// budget, so this never exceeds `ember.memory.size`.
    pub peak_memory: u64,
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

/// Finished job summaries kept for inspection.
const SUMMARIES_KEPT: usize = 256;

/// Whether the current thread is a task slot.
pub(crate) fn in_task_thread() -> bool {
    std::thread::current().name().is_some_and(|n| n.starts_with("ember-task-"))
}

/// Panics in user functions are task failures, reported through the job's error; the default
/// hook would also print each one to standard error. Task threads and the scheduler thread (which
/// runs user partitioners and `Serialize` impls, and turns their panics into job errors) log them
/// at debug level instead; other threads keep the previous hook.
fn install_panic_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let quiet = in_task_thread() || std::thread::current().name() == Some(dag::THREAD_NAME);
            if quiet {
                tracing::debug!("panic caught by the scheduler: {info}");
            } else {
                previous(info);
            }
        }));
    });
}

/// Handle held by the context: submits events, owns the event loop and the backend.
pub(crate) struct Scheduler {
    events: Sender<Event>,
    next_job: AtomicU64,
    loop_thread: Mutex<Option<JoinHandle<()>>>,
    backend: Arc<dyn ExecutorBackend>,
    summaries: Arc<Mutex<VecDeque<JobSummary>>>,
}

impl Scheduler {
    /// The task slots of the executors the backend reaches now.
    pub(crate) fn slots(&self) -> usize {
        self.backend.slots()
    }

    /// Starts the event loop and the backend: local slot threads, or for a cluster master the
    /// backend its cluster manager starts for the application `cluster.1`.
    pub(crate) fn start(
        settings: &Settings,
        env: Arc<Env>,
        tracker: Arc<MapOutputTracker>,
        cluster: Option<(Arc<dyn crate::runtime::ClusterManager>, String)>,
    ) -> Result<Scheduler> {
        install_panic_hook();
        let (events_tx, events_rx) = crossbeam_channel::unbounded::<Event>();
        let sink_tx = events_tx.clone();
        let sink: backend::StatusSink = Box::new(move |status| {
            let _ = sink_tx.send(Event::TaskEnd(Box::new(status)));
        });
        let (backend, encode_with): (Arc<dyn ExecutorBackend>, Option<ShipKey>) = match cluster {
            Some((manager, app_id)) => {
                let start = crate::runtime::ClusterStart {
                    app_id,
                    settings: settings.clone(),
                    statuses: sink,
                    tracker: tracker.clone(),
                    driver_env: env.clone(),
                };
                let c = manager.start(start)?;
                (c.backend, Some(c.key))
            }
            None => {
                let (mode, key) = match settings.serialize_tasks {
                    true => (Mode::Rehearse, Some(ShipKey::local().clone())),
                    false => (Mode::InMemory, None),
                };
                let local =
                    LocalBackend::start(settings.master.slots(), env.clone(), mode, ShipKey::local().clone(), sink)?;
                (Arc::new(local), key)
            }
        };
        let summaries = Arc::new(Mutex::new(VecDeque::new()));
        let mut state = State::new(settings.clone(), env, (backend.clone(), encode_with), tracker, summaries.clone());
        let loop_thread = std::thread::Builder::new()
            .name(dag::THREAD_NAME.into())
            // Encoding a task walks its lineage recursively.
            .stack_size(TASK_STACK_BYTES)
            .spawn(move || state.run(events_rx))
            .map_err(|e| Error::ResourcesExhausted(format!("cannot start scheduler thread: {e}")))?;
        Ok(Scheduler {
            events: events_tx,
            next_job: AtomicU64::new(0),
            loop_thread: Mutex::new(Some(loop_thread)),
            backend,
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

    /// Cancels one job, or all when `None`.
    pub(crate) fn cancel(&self, job: Option<JobId>) {
        let _ = self.events.send(Event::Cancel(job));
    }

    /// Cancels the jobs of a job group.
    pub(crate) fn cancel_group(&self, group: String) {
        let _ = self.events.send(Event::CancelGroup(group));
    }

    pub(crate) fn summaries(&self) -> Vec<JobSummary> {
        self.summaries.lock().unwrap_or_else(|p| p.into_inner()).iter().cloned().collect()
    }

    /// Stops the event loop (failing running jobs) and the backend. Safe on any thread,
    /// including the scheduler's own and task threads, which are then not waited for.
    pub(crate) fn stop(&self) {
        let _ = self.events.send(Event::Stop);
        let handle = self.loop_thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(h) = handle {
            if h.thread().id() != std::thread::current().id() {
                let _ = h.join();
            }
        }
        self.backend.stop();
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        self.stop();
    }
}
