//! Tasks: the unit of work sent to a slot, the context a running task sees, and its metrics.

use std::any::Any;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::env::Env;
use crate::error::{Error, Result};
use crate::ship::Upcast;
use crate::shuffle::MapStatus;

/// A boxed iterator over the records of one partition.
pub type BoxIter<'a, T> = Box<dyn Iterator<Item = T> + 'a>;

/// Identifies a stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct StageId(pub u64);

/// Identifies a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct JobId(pub u64);

/// Counters a task reports. Summed per stage and per job.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskMetrics {
    /// Wall time running the task, in microseconds.
    pub run_micros: u64,
    /// Records written to shuffle files.
    pub shuffle_records_written: u64,
    /// Bytes written to shuffle files.
    pub shuffle_bytes_written: u64,
    /// Records read from shuffle files.
    pub shuffle_records_read: u64,
    /// Bytes read from shuffle files.
    pub shuffle_bytes_read: u64,
    /// Estimated in-memory bytes of data spilled to disk.
    pub memory_bytes_spilled: u64,
    /// Bytes written to spill files.
    pub disk_bytes_spilled: u64,
    /// Number of spill files written.
    pub spill_count: u64,
}

impl TaskMetrics {
    /// Adds another task's counters to these.
    pub fn add(&mut self, o: &TaskMetrics) {
        self.run_micros += o.run_micros;
        self.shuffle_records_written += o.shuffle_records_written;
        self.shuffle_bytes_written += o.shuffle_bytes_written;
        self.shuffle_records_read += o.shuffle_records_read;
        self.shuffle_bytes_read += o.shuffle_bytes_read;
        self.memory_bytes_spilled += o.memory_bytes_spilled;
        self.disk_bytes_spilled += o.disk_bytes_spilled;
        self.spill_count += o.spill_count;
    }
}

#[derive(Default)]
struct AtomicMetrics {
    shuffle_records_written: AtomicU64,
    shuffle_bytes_written: AtomicU64,
    shuffle_records_read: AtomicU64,
    shuffle_bytes_read: AtomicU64,
    memory_bytes_spilled: AtomicU64,
    disk_bytes_spilled: AtomicU64,
    spill_count: AtomicU64,
}

/// What a running task sees: its identity, the executor's services, cancellation, and a slot for
/// the first error raised inside a lazily evaluated iterator.
///
/// Iterators cannot return errors, so an operator that fails while iterating records the error
/// with [`TaskContext::fail`] and ends its iterator; the task runner turns a recorded error into a
/// failed attempt, so no partial result is ever reported as success.
pub struct TaskContext {
    /// The stage this task belongs to.
    pub stage: StageId,
    /// The partition it computes.
    pub partition: usize,
    /// Attempt number of this task, from 0.
    pub attempt: u32,
    /// A process-unique id of this attempt.
    pub task_attempt_id: u64,
    env: Arc<Env>,
    cancelled: Arc<AtomicBool>,
    stop: AtomicBool,
    error: Mutex<Option<Error>>,
    metrics: AtomicMetrics,
    /// Values lent out by [`TaskContext::keep_alive`].
    ///
    /// INVARIANT: only ever appended to; an entry is dropped with the context, never before.
    /// `keep_alive`'s soundness rests on it: no code may remove, clear, drain or replace entries.
    kept: Mutex<Vec<Arc<dyn Any + Send + Sync>>>,
    /// A cached partition the task reads that other executors hold: (rdd, split, holders).
    remote_input: Option<(crate::storage::RddId, usize, Vec<Arc<str>>)>,
}

impl TaskContext {
    pub(crate) fn new(
        stage: StageId,
        partition: usize,
        attempt: u32,
        task_attempt_id: u64,
        env: Arc<Env>,
        cancelled: Arc<AtomicBool>,
    ) -> Self {
        TaskContext {
            stage,
            partition,
            attempt,
            task_attempt_id,
            env,
            cancelled,
            stop: AtomicBool::new(false),
            error: Mutex::new(None),
            metrics: AtomicMetrics::default(),
            kept: Mutex::new(Vec::new()),
            remote_input: None,
        }
    }

    /// Names a cached partition the task reads, held by `holders` (other executors): on a miss
    /// here the block manager reads it from one of them before computing it.
    pub(crate) fn with_remote_input(
        mut self,
        input: Option<(crate::storage::RddId, usize)>,
        holders: &[Arc<str>],
    ) -> Self {
        self.remote_input = input.filter(|_| !holders.is_empty()).map(|(rdd, split)| (rdd, split, holders.to_vec()));
        self
    }

    /// The executors holding partition `split` of `rdd`, when it is the task's remote input.
    pub(crate) fn remote_holders(&self, rdd: crate::storage::RddId, split: usize) -> &[Arc<str>] {
        match &self.remote_input {
            Some((r, s, holders)) if *r == rdd && *s == split => holders,
            _ => &[],
        }
    }

    /// Holds `value` until this context is dropped and lends it for as long as the context is
    /// borrowed. An iterator of the task can so borrow a value whose other owners may let go of
    /// it while the task runs: the node implementation an RDD's partition is computed by, which
    /// a checkpoint on another thread releases.
    pub(crate) fn keep_alive<V: Send + Sync + 'static>(&self, value: Arc<V>) -> &V {
        let ptr = Arc::as_ptr(&value);
        self.kept.lock().unwrap_or_else(|p| p.into_inner()).push(value);
        // SAFETY: `ptr` points into the heap allocation of the `Arc` just moved into `self.kept`,
        // which holds a strong reference to it: the allocation never moves (growing the vector
        // moves the `Arc` handles, not what they point to) and is not freed while that reference
        // lives. Nothing removes entries from `kept` (no method takes them out, and a poisoned
        // lock is recovered without clearing it), so the reference lives until `self` is dropped,
        // which cannot happen while the returned borrow of `self` lasts. The reference is shared
        // and `V` is `Sync`, so handing it to any thread that can see `&self` is sound.
        unsafe { &*ptr }
    }

    /// The executor's services.
    pub fn env(&self) -> &Arc<Env> {
        &self.env
    }

    /// Records an error; iterators stop and the attempt fails. The first error wins.
    pub fn fail(&self, err: Error) {
        let mut slot = self.error.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            *slot = Some(err);
        }
        self.stop.store(true, Ordering::Release);
    }

    /// Whether iteration should stop: an error was recorded or the job was cancelled.
    #[inline]
    pub fn should_stop(&self) -> bool {
        self.stop.load(Ordering::Relaxed) || self.cancelled.load(Ordering::Relaxed)
    }

    /// Whether this attempt was killed (its job cancelled or its stage abandoned).
    pub(crate) fn is_killed(&self) -> bool {
        self.cancelled.load(Ordering::Relaxed)
    }

    /// Takes the recorded error, or a cancellation error.
    pub(crate) fn take_error(&self) -> Option<Error> {
        let taken = self.error.lock().unwrap_or_else(|p| p.into_inner()).take();
        taken.or_else(|| {
            self.cancelled.load(Ordering::Relaxed).then(|| Error::Cancelled("the job was cancelled".into()))
        })
    }

    /// Unwraps a result inside an iterator: on error, records it and returns `None`.
    pub fn ok<T>(&self, r: Result<T>) -> Option<T> {
        match r {
            Ok(v) => Some(v),
            Err(e) => {
                self.fail(e);
                None
            }
        }
    }

    pub(crate) fn add_shuffle_write(&self, records: u64, bytes: u64) {
        self.metrics.shuffle_records_written.fetch_add(records, Ordering::Relaxed);
        self.metrics.shuffle_bytes_written.fetch_add(bytes, Ordering::Relaxed);
    }

    pub(crate) fn add_shuffle_read(&self, records: u64, bytes: u64) {
        self.metrics.shuffle_records_read.fetch_add(records, Ordering::Relaxed);
        self.metrics.shuffle_bytes_read.fetch_add(bytes, Ordering::Relaxed);
    }

    pub(crate) fn add_spill(&self, memory_bytes: u64, disk_bytes: u64) {
        self.metrics.memory_bytes_spilled.fetch_add(memory_bytes, Ordering::Relaxed);
        self.metrics.disk_bytes_spilled.fetch_add(disk_bytes, Ordering::Relaxed);
        self.metrics.spill_count.fetch_add(1, Ordering::Relaxed);
    }

    /// A snapshot of this task's metrics.
    pub fn metrics(&self) -> TaskMetrics {
        let m = &self.metrics;
        TaskMetrics {
            run_micros: 0,
            shuffle_records_written: m.shuffle_records_written.load(Ordering::Relaxed),
            shuffle_bytes_written: m.shuffle_bytes_written.load(Ordering::Relaxed),
            shuffle_records_read: m.shuffle_records_read.load(Ordering::Relaxed),
            shuffle_bytes_read: m.shuffle_bytes_read.load(Ordering::Relaxed),
            memory_bytes_spilled: m.memory_bytes_spilled.load(Ordering::Relaxed),
            disk_bytes_spilled: m.disk_bytes_spilled.load(Ordering::Relaxed),
            spill_count: m.spill_count.load(Ordering::Relaxed),
        }
    }
}

/// Stops an iterator when its task must stop (error recorded or job cancelled). Checked before
/// every record: two relaxed atomic loads cost nothing measurable next to producing a record,
/// and a task whose records are slow (a user function that sleeps or calls out) still stops
/// within one record of being killed.
pub(crate) struct Interruptible<'a, I> {
    inner: I,
    tc: &'a TaskContext,
}

impl<'a, I> Interruptible<'a, I> {
    pub(crate) fn new(inner: I, tc: &'a TaskContext) -> Self {
        Interruptible { inner, tc }
    }
}

impl<I: Iterator> Iterator for Interruptible<'_, I> {
    type Item = I::Item;
    #[inline]
    fn next(&mut self) -> Option<I::Item> {
        if self.tc.should_stop() {
            return None;
        }
        self.inner.next()
    }
}

/// What a successful task produced.
pub enum TaskOutput {
    /// A shuffle map task's output location and sizes.
    Map(MapStatus),
    /// A result task's value, in memory.
    Value(Box<dyn Any + Send>),
    /// A result task's value, encoded (as a remote executor returns it).
    Encoded(Vec<u8>),
}

/// The untyped body of a task: runs on one partition. Implemented by result tasks and shuffle
/// map tasks; shipped to executors inside a [`crate::ship::Ship`].
pub trait TaskBody: Send + Sync + 'static {
    /// Runs the task on `partition`.
    fn run(&self, partition: usize, tc: &TaskContext) -> Result<TaskOutput>;

    /// Encodes a value this body returned (for results that cross a process boundary).
    fn encode_value(&self, value: Box<dyn Any + Send>) -> Result<Vec<u8>>;
}

impl<R: TaskBody> Upcast<dyn TaskBody> for R {
    fn upcast(this: Arc<Self>) -> Arc<dyn TaskBody> {
        this
    }
}

/// Extracts a readable message from a panic payload.
pub(crate) fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic with a non-string payload".to_string()
    }
}
