//! `Context`: the driver's entry point. It owns the executor services and the scheduler,
//! creates source RDDs, broadcast variables and accumulators, and runs jobs.

use std::marker::PhantomData;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::accumulator::{Accumulator, AccumulatorParam, LongSum};
use crate::broadcast::Broadcast;
use crate::conf::{EmberConf, Settings};
use crate::data::Data;
use crate::env::Env;
use crate::error::{Error, Result};
use crate::rdd::{PartitionFn, Rdd};
use crate::scheduler::{JobListener, JobSpec, JobSummary, MapOutputTracker, Scheduler};
use crate::ship::{Marker, Ship};
use crate::storage::StorageStatus;
use crate::task::{BoxIter, JobId, TaskBody, TaskContext, TaskOutput};

static CONTEXT_IDS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// The job group of jobs this thread submits.
    static JOB_GROUP: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

struct Inner {
    settings: Settings,
    env: Arc<Env>,
    tracker: Arc<MapOutputTracker>,
    scheduler: Scheduler,
    /// Unique across processes and time: names this application's checkpoint directory.
    app_id: String,
    /// This application's own directory under the checkpoint directory.
    checkpoint_dir: Mutex<Option<PathBuf>>,
}

/// An application id unique across processes and runs: time, process, a counter and a random
/// number (from the standard library's randomly seeded hasher).
fn new_app_id() -> String {
    use std::hash::BuildHasher;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let n = CONTEXT_IDS.fetch_add(1, Ordering::Relaxed);
    let random = std::collections::hash_map::RandomState::new().hash_one((now.as_nanos(), n));
    format!("app-{}-{}-{n}-{random:016x}", now.as_millis(), std::process::id())
}

/// Creates `base` and this application's subdirectory in it, as Spark does, so that
/// applications sharing a checkpoint directory never write to the same files.
fn app_checkpoint_dir(base: &std::path::Path, app_id: &str) -> Result<PathBuf> {
    // Absolute: executors in other directories (or on other hosts) resolve it as the driver does.
    let base = std::path::absolute(base).map_err(|e| Error::io(base, e))?;
    let dir = base.join(app_id);
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    Ok(dir)
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.scheduler.stop();
    }
}

/// The driver's handle on an Ember application. Cheap to clone.
///
/// ```
/// use ember_core::{Context, EmberConf};
/// let ctx = Context::new(EmberConf::new().master("local[2]")?)?;
/// let counts = ctx
///     .parallelize(vec!["a b".to_string(), "b c".into(), "c".into()], 2)
///     .flat_map(|line: String| line.split(' ').map(str::to_string).collect::<Vec<_>>())
///     .map(|w| (w, 1u64))
///     .reduce_by_key(|a, b| a + b, None)
///     .collect_as_map()?;
/// assert_eq!(counts["c"], 2);
/// # Ok::<(), ember_core::Error>(())
/// ```
#[derive(Clone)]
pub struct Context {
    inner: Arc<Inner>,
}

impl Context {
    /// Starts a context from a configuration.
    pub fn new(conf: EmberConf) -> Result<Context> {
        let settings = conf.settings()?;
        let root = settings.local_dir.clone().unwrap_or_else(std::env::temp_dir);
        let local_dir = root.join(format!(
            "ember-{}-{}-{}",
            std::process::id(),
            CONTEXT_IDS.fetch_add(1, Ordering::Relaxed),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() % 1_000_000)
                .unwrap_or(0)
        ));
        std::fs::create_dir_all(&local_dir).map_err(|e| Error::io(&local_dir, e))?;
        let tracker = Arc::new(MapOutputTracker::new());
        let mut env = Env::new(&settings, local_dir, tracker.clone())?;
        // Executors in other processes decode their own copies of broadcast values.
        env.rehearse_remote |= settings.master.is_cluster();
        let env = Arc::new(env);
        let app_id = new_app_id();
        let cluster = match settings.master.is_cluster() {
            true => Some((crate::runtime::cluster_manager(&settings.master)?, app_id.clone())),
            false => None,
        };
        let scheduler = Scheduler::start(&settings, env.clone(), tracker.clone(), cluster)?;
        tracing::info!("context `{}` ({app_id}) started on {}", settings.app_name, settings.master);
        let checkpoint_dir = match &settings.checkpoint_dir {
            Some(base) => Some(app_checkpoint_dir(base, &app_id)?),
            None => None,
        };
        let checkpoint_dir = Mutex::new(checkpoint_dir);
        Ok(Context { inner: Arc::new(Inner { settings, env, tracker, scheduler, app_id, checkpoint_dir }) })
    }

    /// A context on `local[N]` with default settings.
    pub fn local(slots: usize) -> Result<Context> {
        Context::new(EmberConf::new().master(&format!("local[{slots}]"))?)
    }

    /// The parsed settings.
    pub fn settings(&self) -> &Settings {
        &self.inner.settings
    }

    /// The driver's map output tracker (for inspection and fault injection).
    pub fn map_output_tracker(&self) -> &Arc<MapOutputTracker> {
        &self.inner.tracker
    }

    /// The executor services (in local mode, the driver's own).
    pub fn env(&self) -> &Arc<Env> {
        &self.inner.env
    }

    /// A sizer for the groups of an iterative program, as `ember.scheduler.groupSize` says.
    pub fn group_sizer(&self) -> crate::scheduler::group::GroupSizer {
        crate::scheduler::group::GroupSizer::new(self.inner.settings.group_size)
    }

    /// The default number of partitions: the number of task slots (on a standalone cluster,
    /// of the executors registered now, and at least 2, as in Spark).
    pub fn default_parallelism(&self) -> usize {
        match self.inner.settings.master {
            crate::conf::Master::Standalone { .. } => self.inner.scheduler.slots().max(2),
            ref m => m.slots(),
        }
    }

    // ---- sources -------------------------------------------------------------------------------

    /// Distributes a local collection over `num_slices` partitions (at least 1).
    pub fn parallelize<T: Data>(&self, data: Vec<T>, num_slices: usize) -> Rdd<T> {
        Rdd::from_impl(Some(self.clone()), crate::rdd::ParallelCollection::new(data, num_slices))
    }

    /// The integers `start, start + step, ...` below `end` (above it for a negative step).
    pub fn range(&self, start: i64, end: i64, step: i64, num_slices: usize) -> Result<Rdd<i64>> {
        if step == 0 {
            return Err(Error::InvalidArgument("range step must not be 0".into()));
        }
        Ok(Rdd::from_impl(Some(self.clone()), crate::rdd::source_range(start, end, step, num_slices.max(1))))
    }

    /// An RDD with no partitions.
    pub fn empty<T: Data>(&self) -> Rdd<T> {
        Rdd::from_impl(Some(self.clone()), crate::rdd::source_empty::<T>())
    }

    /// The union of several RDDs.
    pub fn union<T: Data>(&self, rdds: &[Rdd<T>]) -> Rdd<T> {
        Rdd::from_impl(Some(self.clone()), crate::rdd::source_union(rdds.to_vec()))
    }

    /// The split policy of file sources: `ember.files.*` and `min_partitions`.
    fn split_policy(&self, min_partitions: usize) -> crate::rdd::SplitPolicy {
        let s = self.settings();
        crate::rdd::SplitPolicy {
            min_partitions: min_partitions.max(1),
            max_partition_bytes: s.files_max_partition_bytes,
            open_cost: s.files_open_cost_bytes,
        }
    }

    /// The lines of text files, with their `\n` or `\r\n` ends removed. `path` is a file, a
    /// directory of files, a glob (`data/*.txt`), or several of these separated by commas
    /// (`a.txt,logs/,more/*.txt`); lines come out in that order, each directory's or glob's
    /// files in path order.
    ///
    /// Files are cut into byte ranges and packed into partitions as Spark's file sources do: a
    /// partition holds up to `ember.files.maxPartitionBytes` of input, each file counting
    /// `ember.files.openCostInBytes` more than its length, so many small files share a few
    /// partitions. `min_partitions` lowers the target size to `total / min_partitions`, but not
    /// below the open cost. `.gz` files are decompressed and never cut. A line that is not valid
    /// UTF-8, or longer than `ember.input.maxLineLength`, fails the job with an error naming
    /// the file and the byte offset.
    pub fn text_file(&self, path: &str, min_partitions: usize) -> Result<Rdd<String>> {
        let files = crate::rdd::resolve_input(path)?;
        let partitions = crate::rdd::plan_splits(&files, self.split_policy(min_partitions))?;
        Ok(Rdd::from_impl(Some(self.clone()), crate::rdd::source_text(partitions, self.settings().max_line_length)))
    }

    /// (path, content) for each file named by `path` (as for [`Context::text_file`]), files
    /// spread over `min_partitions` partitions by size.
    pub fn whole_text_files(&self, path: &str, min_partitions: usize) -> Result<Rdd<(String, String)>> {
        let files = crate::rdd::resolve_input(path)?;
        Ok(Rdd::from_impl(Some(self.clone()), crate::rdd::source_whole_files(files, min_partitions)?))
    }

    /// (path, bytes) for each file named by `path` (as for [`Context::text_file`]), read as
    /// they are (`.gz` files are not decompressed), files spread over `min_partitions`
    /// partitions by size. Like PySpark's `binaryFiles`.
    pub fn binary_files(&self, path: &str, min_partitions: usize) -> Result<Rdd<(String, Vec<u8>)>> {
        let files = crate::rdd::resolve_input(path)?;
        Ok(Rdd::from_impl(Some(self.clone()), crate::rdd::source_binary_files(files, min_partitions)?))
    }

    /// Fixed-length records of `record_length` bytes from the files named by `path` (as for
    /// [`Context::text_file`]), in file order, read as they are. Files are split into
    /// partitions like `text_file`'s, at record boundaries. A file whose length is not a
    /// multiple of `record_length` is an error naming it. Like PySpark's `binaryRecords`.
    pub fn binary_records(&self, path: &str, record_length: usize) -> Result<Rdd<Vec<u8>>> {
        let files = crate::rdd::resolve_input(path)?;
        let policy = self.split_policy(self.default_parallelism());
        Ok(Rdd::from_impl(Some(self.clone()), crate::rdd::source_binary_records(files, record_length, policy)?))
    }

    // ---- shared variables ----------------------------------------------------------------------

    /// A read-only value shared with every task.
    pub fn broadcast<T: Data>(&self, value: T) -> Broadcast<T> {
        Broadcast::new(value, &self.inner.env)
    }

    /// An `i64` sum accumulator.
    pub fn long_accumulator(&self) -> Accumulator<LongSum> {
        Accumulator::new(LongSum)
    }

    /// An accumulator with custom merging.
    pub fn accumulator<P: AccumulatorParam>(&self, param: P) -> Accumulator<P> {
        Accumulator::new(param)
    }

    /// This application's id, unique across processes and runs (`app-<millis>-<pid>-...`).
    pub fn application_id(&self) -> &str {
        &self.inner.app_id
    }

    /// Sets the directory `Rdd::checkpoint` writes to. Checkpoints go into a subdirectory named
    /// after [`Context::application_id`], so applications sharing `dir` do not collide.
    pub fn set_checkpoint_dir(&self, dir: impl Into<PathBuf>) -> Result<()> {
        let dir = app_checkpoint_dir(&dir.into(), &self.inner.app_id)?;
        *self.inner.checkpoint_dir.lock().unwrap_or_else(|p| p.into_inner()) = Some(dir);
        Ok(())
    }

    pub(crate) fn checkpoint_dir(&self) -> Result<PathBuf> {
        self.inner
            .checkpoint_dir
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| Error::InvalidArgument("no checkpoint directory: call set_checkpoint_dir first".into()))
    }

    // ---- jobs ----------------------------------------------------------------------------------

    fn spec<T: Data, U: Data>(
        &self,
        rdd: &Rdd<T>,
        func: Ship<dyn PartitionFn<T, U>>,
        partitions: Option<Vec<usize>>,
    ) -> Result<(JobSpec, crossbeam_channel::Receiver<Result<Vec<U>>>)> {
        if crate::scheduler::in_task_thread() {
            // A task waiting for a job of its own would hold a slot the job needs.
            return Err(Error::InvalidArgument(
                "actions run only on the driver: an RDD was used inside another RDD's function; \
                 collect or broadcast its data first"
                    .into(),
            ));
        }
        // User code (a partitioner's `num_partitions`) runs here: its panic fails this job only.
        let n = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| rdd.num_partitions())).map_err(|p| {
            Error::UserPanic(format!(
                "a user function panicked on the driver while counting the partitions of {}: {}",
                rdd.as_base().describe(),
                crate::task::panic_message(&*p)
            ))
        })?;
        if n as u64 > crate::conf::MAX_PARTITIONS {
            return Err(Error::InvalidArgument(format!(
                "the RDD has {n} partitions; at most {} are supported",
                crate::conf::MAX_PARTITIONS
            )));
        }
        let partitions = partitions.unwrap_or_else(|| (0..n).collect());
        if let Some(bad) = partitions.iter().find(|&&p| p >= n) {
            return Err(Error::InvalidArgument(format!("partition {bad} out of range: the RDD has {n}")));
        }
        let (tx, rx) = crossbeam_channel::bounded(1);
        let listener = TypedListener::<U> { results: (0..partitions.len()).map(|_| None).collect(), tx };
        let body = result_task(rdd, func);
        let group = JOB_GROUP.with(|g| g.borrow().clone());
        Ok((JobSpec { final_rdd: rdd.as_base(), body, partitions, listener: Box::new(listener), group }, rx))
    }

    /// Runs `func` on the given partitions of `rdd` (all when `None`) and returns one result per
    /// partition, in order.
    pub fn run_job<T: Data, U: Data>(
        &self,
        rdd: &Rdd<T>,
        func: Ship<dyn PartitionFn<T, U>>,
        partitions: Option<Vec<usize>>,
    ) -> Result<Vec<U>> {
        self.submit_job(rdd, func, partitions)?.wait()
    }

    /// Submits a job without waiting; the handle can wait for or cancel it.
    pub fn submit_job<T: Data, U: Data>(
        &self,
        rdd: &Rdd<T>,
        func: Ship<dyn PartitionFn<T, U>>,
        partitions: Option<Vec<usize>>,
    ) -> Result<JobHandle<U>> {
        let (spec, rx) = self.spec(rdd, func, partitions)?;
        let id = self.inner.scheduler.submit(vec![spec])?[0];
        Ok(JobHandle { id, rx, ctx: self.clone() })
    }

    /// Submits a group of jobs at once (Drizzle's `runJobs`): their stages are created and their
    /// tasks scheduled in one round, so per-job driver overhead is lower than submitting them
    /// one at a time. Returns each job's per-partition results, in order.
    pub fn run_jobs<T: Data, U: Data>(&self, jobs: Vec<(Rdd<T>, Ship<dyn PartitionFn<T, U>>)>) -> Result<Vec<Vec<U>>> {
        let mut specs = Vec::with_capacity(jobs.len());
        let mut rxs = Vec::with_capacity(jobs.len());
        for (rdd, f) in jobs {
            let (spec, rx) = self.spec(&rdd, f, None)?;
            specs.push(spec);
            rxs.push(rx);
        }
        self.inner.scheduler.submit(specs)?;
        rxs.into_iter().map(|rx| rx.recv().map_err(|_| Error::Stopped)?).collect()
    }

    /// Counts each RDD of a group, submitted at once (see [`Context::run_jobs`]).
    pub fn count_all<T: Data>(&self, rdds: &[Rdd<T>]) -> Result<Vec<u64>> {
        let jobs = rdds
            .iter()
            .map(|r| (r.clone(), Ship::new(CountAll::<T>(PhantomData)) as Ship<dyn PartitionFn<T, u64>>))
            .collect();
        Ok(self.run_jobs(jobs)?.into_iter().map(|v| v.into_iter().sum()).collect())
    }

    /// Cancels a running job: its tasks stop at their next check and the job returns
    /// `Error::Cancelled`.
    pub fn cancel_job(&self, job: JobId) {
        self.inner.scheduler.cancel(Some(job));
    }

    /// Puts the jobs this thread submits from now on into job group `group` (as Spark's
    /// `setJobGroup`, a per-thread setting), so that [`Context::cancel_job_group`] can cancel
    /// them together.
    pub fn set_job_group(&self, group: &str) {
        JOB_GROUP.with(|g| *g.borrow_mut() = Some(group.to_string()));
    }

    /// Jobs this thread submits from now on belong to no group.
    pub fn clear_job_group(&self) {
        JOB_GROUP.with(|g| *g.borrow_mut() = None);
    }

    /// Cancels the running jobs of a job group: their queued tasks never start and their running
    /// tasks stop at their next check; each job returns `Error::Cancelled`.
    pub fn cancel_job_group(&self, group: &str) {
        self.inner.scheduler.cancel_group(group.to_string());
    }

    /// Cancels every running job.
    pub fn cancel_all_jobs(&self) {
        self.inner.scheduler.cancel(None);
    }

    /// Summaries of recently finished jobs, oldest first.
    pub fn job_summaries(&self) -> Vec<JobSummary> {
        self.inner.scheduler.summaries()
    }

    /// The summary of the most recently finished job.
    pub fn last_job_summary(&self) -> Option<JobSummary> {
        self.job_summaries().pop()
    }

    /// Memory use and cached blocks.
    pub fn storage_status(&self) -> StorageStatus {
        self.inner.env.blocks.status()
    }

    /// Stops the context: running jobs fail with `Error::Stopped`, the task threads end, and
    /// later jobs are refused. Local files go when the last handle is dropped.
    pub fn stop(&self) {
        self.inner.scheduler.stop();
    }
}

/// A submitted job.
pub struct JobHandle<U> {
    id: JobId,
    rx: crossbeam_channel::Receiver<Result<Vec<U>>>,
    ctx: Context,
}

impl<U> JobHandle<U> {
    /// The job's id.
    pub fn id(&self) -> JobId {
        self.id
    }
    /// Asks the scheduler to cancel the job.
    pub fn cancel(&self) {
        self.ctx.cancel_job(self.id);
    }
    /// Waits for the job's results.
    pub fn wait(self) -> Result<Vec<U>> {
        self.rx.recv().map_err(|_| Error::Stopped)?
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(bound = "")]
struct CountAll<T>(Marker<T>);

impl<T: Data> PartitionFn<T, u64> for CountAll<T> {
    fn call(&self, _: &TaskContext, _: usize, it: BoxIter<'_, T>) -> Result<u64> {
        Ok(it.count() as u64)
    }
}

/// The body of a result task computing `func` over the partitions of `rdd`.
pub(crate) fn result_task<T: Data, U: Data>(rdd: &Rdd<T>, func: Ship<dyn PartitionFn<T, U>>) -> Ship<dyn TaskBody> {
    Ship::new(ResultTask::<T, U> { rdd: rdd.clone(), func })
}

/// The body of a result task: computes a partition and applies the action's function.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(bound = "T: Data, U: Data")]
struct ResultTask<T, U> {
    rdd: Rdd<T>,
    func: Ship<dyn PartitionFn<T, U>>,
}

impl<T: Data, U: Data> TaskBody for ResultTask<T, U> {
    fn run(&self, partition: usize, tc: &TaskContext) -> Result<TaskOutput> {
        let it = self.rdd.iterator(partition, tc);
        let value = self.func.call(tc, partition, it)?;
        Ok(TaskOutput::Value(Box::new(value)))
    }

    fn encode_value(&self, value: Box<dyn std::any::Any + Send>) -> Result<Vec<u8>> {
        let v = value.downcast::<U>().map_err(|_| Error::Internal("result of an unexpected type".into()))?;
        Ok(postcard::to_allocvec(&*v)?)
    }
}

struct TypedListener<U> {
    results: Vec<Option<U>>,
    tx: crossbeam_channel::Sender<Result<Vec<U>>>,
}

impl<U: Data> JobListener for TypedListener<U> {
    fn task_succeeded(&mut self, index: usize, output: TaskOutput) -> Result<()> {
        let value = match output {
            TaskOutput::Value(v) => {
                *v.downcast::<U>().map_err(|_| Error::Internal("result of an unexpected type".into()))?
            }
            TaskOutput::Encoded(bytes) => postcard::from_bytes(&bytes)?,
            TaskOutput::Map(_) => return Err(Error::Internal("a result task returned a map status".into())),
        };
        if let Some(slot) = self.results.get_mut(index) {
            *slot = Some(value);
        }
        Ok(())
    }

    fn job_finished(self: Box<Self>, result: Result<()>) {
        let this = *self;
        let out = result.and_then(|_| {
            this.results
                .into_iter()
                .map(|r| r.ok_or_else(|| Error::Internal("a job finished with a missing result".into())))
                .collect()
        });
        let _ = this.tx.send(out);
    }
}
