//! `StageRdd`: one stage of a cut SQL plan as a node of Ember's lineage, and the bridge between
//! the Ember task that runs it (on a slot thread) and its DataFusion stream (on the SQL runtime).
//!
//! ```text
//!  slot thread (Ember task)                     SQL runtime (tokio)
//!  ────────────────────────                     ───────────────────
//!  shuffle writer ◄── (partition, batch) ◄───── stage plan.execute(p) ─► split by exchange
//!  shuffle readers ── batch ──────────────────► ShuffleReaderExec (asks through TaskBridge)
//! ```
//!
//! The shuffle readers borrow the task's context, so they stay on the slot thread; the
//! DataFusion stream runs on the runtime, and every request it makes (the next batch of an
//! input) and every batch it produces crosses one channel that the slot thread serves. The slot
//! thread stops the stream when the task is killed, and an error on either side fails the
//! attempt with its class intact (a failed fetch stays a fetch failure).

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use datafusion::arrow::array::RecordBatch;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::TaskContext as DfTaskContext;
use datafusion::physical_plan::execution_plan::reset_plan_states;
use datafusion::physical_plan::metrics;
use datafusion::physical_plan::repartition::{BatchPartitioner, RepartitionExec};
use datafusion::physical_plan::ExecutionPlan;
use ember_core::rdd::{Dependency, RddImpl};
use ember_core::shuffle::{ShuffleDepBase, ShuffleDependency};
use ember_core::{Accumulator, BoxIter, Rdd, TaskContext};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::{oneshot, Semaphore};

use crate::batch::Batch;
use crate::codec::PlanShip;
use crate::error::{from_core, to_task_error};
use crate::exec::ExchangeKind;
use crate::metrics::{PlanMetrics, PlanMetricsSum};
use crate::runtime::sql_runtime;

/// The shuffle between two stages: records are (reduce partition, batch).
pub(crate) type ExchangeDep = ShuffleDependency<u32, Batch, Batch>;

/// Batches a stage's stream may produce ahead of the slot thread taking them.
const OUTPUT_AHEAD: usize = 4;

/// What a stage's tasks do with the batches their plan produces.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub(crate) enum StageOutput {
    /// The final stage: batches go back to the driver.
    Result,
    /// A map stage: batches are split for the exchange above it.
    Exchange(ExchangeKind),
}

/// One stage of a SQL plan, as an RDD of (reduce partition, batch).
///
/// Partition `p` runs partition `p` of the stage plan (for a hash or round-robin exchange, of
/// the repartition's input, split by the repartition's partitioning). Its dependencies are the
/// shuffles its [`ShuffleReaderExec`](crate::exec::ShuffleReaderExec)s read, in input order, so
/// Ember's DAG scheduler runs the stages below it first, and recomputes just the lost map
/// outputs when a fetch fails.
#[derive(Serialize, Deserialize)]
pub(crate) struct StageRdd {
    pub(crate) stage: usize,
    pub(crate) plan: PlanShip,
    pub(crate) output: StageOutput,
    pub(crate) partitions: usize,
    pub(crate) inputs: Vec<Arc<ExchangeDep>>,
    /// Cached tables its scans read, by input index (narrow dependencies: a task reads the
    /// cached partitions its scan names).
    pub(crate) cached: Vec<Rdd<Batch>>,
    /// Where tasks add their operators' metrics, when the query is analyzed.
    pub(crate) metrics: Option<Accumulator<PlanMetricsSum>>,
    /// The session's execution settings (`datafusion.execution.*`: batch size, spilling, ...),
    /// which its tasks run with.
    pub(crate) settings: Vec<(String, String)>,
}

impl RddImpl<(u32, Batch)> for StageRdd {
    fn name(&self) -> &'static str {
        "sql stage"
    }
    fn num_partitions(&self) -> usize {
        self.partitions
    }
    fn dependencies(&self) -> Vec<Dependency> {
        let shuffles = self.inputs.iter().map(|d| Dependency::Shuffle(d.clone() as Arc<dyn ShuffleDepBase>));
        shuffles.chain(self.cached.iter().map(|r| Dependency::Narrow(r.as_base()))).collect()
    }
    fn compute<'a>(&'a self, split: usize, tc: &'a TaskContext) -> BoxIter<'a, (u32, Batch)> {
        match StageTask::start(self, split, tc) {
            Ok(task) => Box::new(task),
            Err(e) => {
                tc.fail(e);
                Box::new(std::iter::empty())
            }
        }
    }
}

/// A job's final RDD that only makes a shuffle's map stage run: one task, which reads nothing.
#[derive(Serialize, Deserialize)]
pub(crate) struct MaterializeRdd {
    pub(crate) dep: Arc<ExchangeDep>,
}

impl RddImpl<u8> for MaterializeRdd {
    fn name(&self) -> &'static str {
        "sql exchange"
    }
    fn num_partitions(&self) -> usize {
        1
    }
    fn dependencies(&self) -> Vec<Dependency> {
        vec![Dependency::Shuffle(self.dep.clone() as Arc<dyn ShuffleDepBase>)]
    }
    fn compute<'a>(&'a self, _split: usize, _tc: &'a TaskContext) -> BoxIter<'a, u8> {
        Box::new(std::iter::empty())
    }
}

/// A message from a stage's DataFusion stream to the slot thread running its task.
enum Msg {
    /// The next batch of partition `partition` of input `input` from `source`, please.
    Read { source: Source, input: usize, partition: usize, reply: oneshot::Sender<DfResult<Option<RecordBatch>>> },
    /// A batch for reduce partition (or, in the result stage, for the driver).
    Out(u32, RecordBatch),
    /// The stream ended, cleanly or not, with its operators' metrics when they are wanted.
    Done(DfResult<()>, Option<PlanMetrics>),
}

/// The task's end of the bridge, in the DataFusion task context of the stage's stream: how a
/// [`ShuffleReaderExec`](crate::exec::ShuffleReaderExec) asks for its input.
pub struct TaskBridge {
    tx: Sender<Msg>,
}

impl std::fmt::Debug for TaskBridge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TaskBridge")
    }
}

impl TaskBridge {
    /// The next batch of partition `partition` of the stage's input `input` from `source`;
    /// `None` at its end.
    pub(crate) async fn read(&self, source: Source, input: usize, partition: usize) -> DfResult<Option<RecordBatch>> {
        let ended = || DataFusionError::Execution("the Ember task reading this stage's input has ended".into());
        let (reply, answer) = oneshot::channel();
        self.tx.send(Msg::Read { source, input, partition, reply }).map_err(|_| ended())?;
        answer.await.map_err(|_| ended())?
    }
}

/// Aborts the stage's stream when the task lets go of it.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A running stage task, as the iterator of (partition, batch) records its Ember task yields.
struct StageTask<'a> {
    rdd: &'a StageRdd,
    tc: &'a TaskContext,
    rx: Receiver<Msg>,
    room: Arc<Semaphore>,
    readers: HashMap<(Source, usize, usize), BoxIter<'a, Batch>>,
    _stream: AbortOnDrop,
    done: bool,
}

impl<'a> StageTask<'a> {
    fn start(rdd: &'a StageRdd, split: usize, tc: &'a TaskContext) -> ember_core::Result<Self> {
        let rt = sql_runtime().map_err(|e| ember_core::Error::Internal(e.to_string()))?;
        // A fresh copy of the plan's state: operators that build once and share (a collected
        // join side) must not share it with another attempt or another task.
        let plan = reset_plan_states(rdd.plan.plan().clone()).map_err(to_task_error)?;
        let (tx, rx) = crossbeam_channel::unbounded();
        let ctx = rt.task_context(Arc::new(TaskBridge { tx: tx.clone() }), &rdd.settings);
        let room = Arc::new(Semaphore::new(OUTPUT_AHEAD));
        let (exec, route) = match rdd.output {
            StageOutput::Result => (plan, Route::To(0)),
            StageOutput::Exchange(ExchangeKind::Single) => (plan, Route::To(0)),
            StageOutput::Exchange(ExchangeKind::Identity) => (plan, Route::To(split as u32)),
            StageOutput::Exchange(ExchangeKind::Hash | ExchangeKind::RoundRobin) => {
                let rep = plan.downcast_ref::<RepartitionExec>().ok_or_else(|| {
                    ember_core::Error::Internal(format!("stage {} splits its output but is no repartition", rdd.stage))
                })?;
                let partitioner =
                    BatchPartitioner::try_new(rep.partitioning().clone(), metrics::Time::new(), split, rdd.partitions)
                        .map_err(to_task_error)?;
                (rep.input().clone(), Route::Split(Box::new(partitioner)))
            }
        };
        let want_metrics = rdd.metrics.is_some().then_some(rdd.stage as u32);
        let handle = rt.tokio.spawn(run_stream(exec, split, ctx, route, tx, room.clone(), want_metrics));
        Ok(StageTask { rdd, tc, rx, room, readers: HashMap::new(), _stream: AbortOnDrop(handle), done: false })
    }

    /// Serves a read of an input: the next batch of partition `partition` of shuffle input
    /// `input`, or of cached input `input`. Each (input, partition) has one reader for the task.
    fn serve(&mut self, source: Source, input: usize, partition: usize) -> DfResult<Option<RecordBatch>> {
        let (tc, rdd) = (self.tc, self.rdd);
        let reader = match self.readers.entry((source, input, partition)) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => e.insert(open(rdd, source, input, partition, tc)?),
        };
        match reader.next() {
            Some(batch) => Ok(Some(batch.0)),
            // A reader ends early on a failed fetch or a kill, recorded in the task's context:
            // stop the stream rather than let it run on a partial input.
            None if tc.should_stop() => {
                Err(from_core(ember_core::Error::Cancelled("the task's input failed or the task was killed".into())))
            }
            None => Ok(None),
        }
    }
}

/// Where a stage reads from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Source {
    /// A shuffle written by a stage below.
    Shuffle,
    /// A cached table.
    Cached,
}

/// Opens the reader of partition `partition` of input `input` of `source`.
fn open<'a>(
    rdd: &'a StageRdd,
    source: Source,
    input: usize,
    partition: usize,
    tc: &'a TaskContext,
) -> DfResult<BoxIter<'a, Batch>> {
    let (count, partitions) = match source {
        Source::Shuffle => (rdd.inputs.len(), rdd.inputs.get(input).map(|d| d.num_partitions())),
        Source::Cached => (rdd.cached.len(), rdd.cached.get(input).map(|r| r.num_partitions())),
    };
    let Some(partitions) = partitions else {
        return Err(DataFusionError::Internal(format!(
            "stage {} has {count} {source:?} inputs; input {input} was asked for",
            rdd.stage
        )));
    };
    if partition >= partitions {
        return Err(DataFusionError::Internal(format!(
            "partition {partition} of a {source:?} input of {partitions} asked for"
        )));
    }
    Ok(match source {
        Source::Shuffle => Box::new(rdd.inputs[input].read_partition(partition, tc).map(|(_, b)| b)),
        Source::Cached => rdd.cached[input].read_partition(partition, tc),
    })
}

impl Iterator for StageTask<'_> {
    type Item = (u32, Batch);

    fn next(&mut self) -> Option<(u32, Batch)> {
        while !self.done {
            match self.rx.recv_timeout(Duration::from_millis(50)) {
                Ok(Msg::Out(p, batch)) => {
                    self.room.add_permits(1);
                    return Some((p, Batch(batch)));
                }
                Ok(Msg::Read { source, input, partition, reply }) => {
                    let answer = self.serve(source, input, partition);
                    // The stream may have stopped waiting (aborted): nothing to answer then.
                    let _ = reply.send(answer);
                }
                Ok(Msg::Done(result, metrics)) => {
                    self.done = true;
                    if let (Some(acc), Some(m)) = (&self.rdd.metrics, metrics) {
                        acc.add(m);
                    }
                    if let Err(e) = result {
                        // A failure the task already recorded (a failed fetch) is the cause:
                        // the first error wins.
                        self.tc.fail(to_task_error(e));
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    if self.tc.should_stop() {
                        self.done = true;
                    }
                }
                Err(RecvTimeoutError::Disconnected) => {
                    self.done = true;
                    self.tc.fail(ember_core::Error::Internal(format!(
                        "the stream of SQL stage {} ended without a result (it panicked)",
                        self.rdd.stage
                    )));
                }
            }
        }
        None
    }
}

/// Where a stage's output batches go.
enum Route {
    /// All to one partition.
    To(u32),
    /// Split by the exchange's partitioning.
    Split(Box<BatchPartitioner>),
}

/// Runs partition `split` of `plan` and sends its batches, routed, to the task's slot thread.
async fn run_stream(
    plan: Arc<dyn ExecutionPlan>,
    split: usize,
    ctx: Arc<DfTaskContext>,
    mut route: Route,
    tx: Sender<Msg>,
    room: Arc<Semaphore>,
    want_metrics: Option<u32>,
) {
    let result = async {
        let mut stream = plan.execute(split, ctx.clone())?;
        while let Some(batch) = stream.next().await {
            let batch = batch?;
            if batch.num_rows() == 0 {
                continue;
            }
            let mut pieces = Vec::new();
            match &mut route {
                Route::To(p) => pieces.push((*p, batch)),
                Route::Split(partitioner) => partitioner.partition(batch, |p, piece| {
                    if piece.num_rows() > 0 {
                        pieces.push((p as u32, piece));
                    }
                    Ok(())
                })?,
            }
            for (p, piece) in pieces {
                let permit = room
                    .acquire()
                    .await
                    .map_err(|_| DataFusionError::Execution("the Ember task of this stage has ended".into()))?;
                permit.forget();
                tx.send(Msg::Out(p, piece))
                    .map_err(|_| DataFusionError::Execution("the Ember task of this stage has ended".into()))?;
            }
        }
        Ok(())
    }
    .await;
    let metrics = want_metrics.map(|stage| crate::metrics::collect(stage, &plan));
    let _ = tx.send(Msg::Done(result, metrics));
}
