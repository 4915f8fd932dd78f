//! The distributed planner: cuts DataFusion's optimized physical plan into stages at its
//! exchanges, as Ballista's and Sail's planners do.
//!
//! ```text
//!   SortPreservingMergeExec            stage 2 (result): SortPreservingMergeExec
//!     SortExec                                             ShuffleReaderExec(stage 1, identity)
//!       AggregateExec(final)     ──►   stage 1: SortExec, AggregateExec(final)
//!         RepartitionExec(hash)                   ShuffleReaderExec(stage 0, hash)
//!           AggregateExec(partial)     stage 0: RepartitionExec(hash) over AggregateExec(partial)
//!             DataSourceExec                    over DataSourceExec (tasks run the input and split)
//! ```
//!
//! - a hash or round-robin `RepartitionExec` becomes a shuffle: the stage below runs the
//!   repartition's input and splits each batch by its partitioning;
//! - a `CoalescePartitionsExec` over several partitions becomes a shuffle into one partition;
//! - a `SortPreservingMergeExec` over several partitions keeps its merge above a shuffle that
//!   moves each sorted partition as it is (map i to reduce i).
//!
//! What remains between exchanges runs pipelined inside one Ember task per partition.

use std::fmt;
use std::sync::Arc;

use datafusion::physical_expr::{EquivalenceProperties, Partitioning};
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion::physical_plan::displayable;
use datafusion::physical_plan::execution_plan::{ChildrenPropertiesMode, ReplaceChildrenOptions};
use datafusion::physical_plan::recursive_query::RecursiveQueryExec;
use datafusion::physical_plan::repartition::RepartitionExec;
use datafusion::physical_plan::sorts::sort::SortExec;
use datafusion::physical_plan::sorts::sort_preserving_merge::SortPreservingMergeExec;
use datafusion::physical_plan::ExecutionPlan;

use ember_core::Rdd;

use crate::batch::Batch;
use crate::cache::CachedScanExec;
use crate::error::{Error, Result};
use crate::exec::{ExchangeKind, ShuffleReaderExec};
use crate::stage::{ExchangeDep, StageOutput};

/// One stage of a cut plan.
#[derive(Debug, Clone)]
pub struct StagePlan {
    /// The stage's number within its query (stages below come first).
    pub id: usize,
    /// What its tasks run: for a hash or round-robin exchange, the `RepartitionExec` whose input
    /// they execute and whose partitioning splits their output.
    pub plan: Arc<dyn ExecutionPlan>,
    pub(crate) output: StageOutput,
    /// Tasks: partitions of what the stage executes.
    pub partitions: usize,
    /// Partitions of the exchange above it (1 for the result stage).
    pub output_partitions: usize,
    /// What it reads, by input index: stages of this plan, or shuffles an earlier job wrote.
    pub(crate) inputs: Vec<InputRef>,
    /// The cached tables it scans, by cached input index.
    pub(crate) cached: Vec<Rdd<Batch>>,
}

impl StagePlan {
    /// The kind of exchange the stage writes, or `None` for the result stage.
    pub fn exchange(&self) -> Option<ExchangeKind> {
        match self.output {
            StageOutput::Result => None,
            StageOutput::Exchange(k) => Some(k),
        }
    }
}

/// A shuffle a stage reads.
#[derive(Clone)]
pub(crate) enum InputRef {
    /// Written by another stage of the same plan.
    Stage(usize),
    /// Already written (adaptive execution ran its stage first).
    Done(Arc<ExchangeDep>),
}

impl fmt::Debug for InputRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InputRef::Stage(s) => write!(f, "stage {s}"),
            InputRef::Done(d) => write!(f, "shuffle {}", d.shuffle_id.0),
        }
    }
}

/// What one stage reads: the shuffles below it and the cached tables it scans.
#[derive(Default)]
struct Inputs {
    shuffles: Vec<InputRef>,
    cached: Vec<Rdd<Batch>>,
}

/// Cuts `plan` into stages, children first; the last stage is the result stage.
pub fn cut_stages(plan: Arc<dyn ExecutionPlan>) -> Result<Vec<StagePlan>> {
    let mut stages = Vec::new();
    let mut inputs = Inputs::default();
    let root = cut(plan, &mut stages, &mut inputs)?;
    let partitions = root.properties().partitioning.partition_count();
    stages.push(StagePlan {
        id: stages.len(),
        plan: root,
        output: StageOutput::Result,
        partitions,
        output_partitions: 1,
        inputs: inputs.shuffles,
        cached: inputs.cached,
    });
    Ok(stages)
}

/// Adds the stage computing `plan` (below an exchange of `kind` into `out` partitions) and
/// returns its index among the current stage's inputs.
fn add_stage(
    plan: Arc<dyn ExecutionPlan>,
    partitions: usize,
    kind: ExchangeKind,
    out: usize,
    stage_inputs: Inputs,
    stages: &mut Vec<StagePlan>,
    inputs: &mut Inputs,
) -> (usize, usize) {
    let id = stages.len();
    stages.push(StagePlan {
        id,
        plan,
        output: StageOutput::Exchange(kind),
        partitions,
        output_partitions: out,
        inputs: stage_inputs.shuffles,
        cached: stage_inputs.cached,
    });
    inputs.shuffles.push(InputRef::Stage(id));
    (inputs.shuffles.len() - 1, id)
}

fn cut(
    plan: Arc<dyn ExecutionPlan>,
    stages: &mut Vec<StagePlan>,
    inputs: &mut Inputs,
) -> Result<Arc<dyn ExecutionPlan>> {
    if let Some(scan) = plan.downcast_ref::<CachedScanExec>() {
        let Some(rdd) = &scan.rdd else {
            return Err(Error::Internal("a cached scan without its table reached the planner".into()));
        };
        inputs.cached.push(rdd.clone());
        return Ok(Arc::new(scan.with_input(inputs.cached.len() - 1)));
    }
    if let Some(reader) = plan.downcast_ref::<ShuffleReaderExec>() {
        // A shuffle written before this plan was cut: the stage reads it as it is.
        let Some(dep) = &reader.done else {
            return Err(Error::Internal("a shuffle reader without its shuffle reached the planner".into()));
        };
        inputs.shuffles.push(InputRef::Done(dep.clone()));
        return Ok(Arc::new(reader.with_input(inputs.shuffles.len() - 1)));
    }
    if let Some(rep) = plan.downcast_ref::<RepartitionExec>() {
        let kind = match rep.partitioning() {
            Partitioning::Hash(..) => ExchangeKind::Hash,
            Partitioning::RoundRobinBatch(_) => ExchangeKind::RoundRobin,
            other => return Err(Error::Plan(format!("Ember cannot run a repartition by {other:?} yet"))),
        };
        let mut child_inputs = Inputs::default();
        let child = cut(rep.input().clone(), stages, &mut child_inputs)?;
        let partitions = child.properties().partitioning.partition_count();
        let stage_plan = with_children(plan.clone(), vec![child.clone()])?;
        let out = rep.partitioning().partition_count();
        let (input, id) = add_stage(stage_plan, partitions, kind, out, child_inputs, stages, inputs);
        let reader: Arc<dyn ExecutionPlan> = Arc::new(ShuffleReaderExec::new(
            input,
            id,
            kind,
            rep.partitioning().clone(),
            EquivalenceProperties::new(rep.schema()),
        ));
        if rep.preserve_order() {
            // The shuffle concatenates map outputs; a partition sorted on the way in is sorted
            // again here.
            if let Some(ordering) = child.properties().output_ordering() {
                return Ok(Arc::new(SortExec::new(ordering.clone(), reader).with_preserve_partitioning(true)));
            }
        }
        return Ok(reader);
    }
    // Cutting keeps partition counts (a reader has its exchange's), so a merge of one
    // partition is known before cutting below it: nothing to gather, the stage goes on.
    let gathers = |input: &Arc<dyn ExecutionPlan>| input.properties().partitioning.partition_count() > 1;
    if let Some(coalesce) = plan.downcast_ref::<CoalescePartitionsExec>().filter(|c| gathers(c.input())) {
        let mut child_inputs = Inputs::default();
        let child = cut(coalesce.input().clone(), stages, &mut child_inputs)?;
        let partitions = child.properties().partitioning.partition_count();
        let (input, id) = add_stage(child.clone(), partitions, ExchangeKind::Single, 1, child_inputs, stages, inputs);
        let reader: Arc<dyn ExecutionPlan> = Arc::new(ShuffleReaderExec::new(
            input,
            id,
            ExchangeKind::Single,
            Partitioning::UnknownPartitioning(1),
            EquivalenceProperties::new(child.schema()),
        ));
        return with_children(plan.clone(), vec![reader]);
    }
    if let Some(merge) = plan.downcast_ref::<SortPreservingMergeExec>().filter(|m| gathers(m.input())) {
        let mut child_inputs = Inputs::default();
        let child = cut(merge.input().clone(), stages, &mut child_inputs)?;
        let partitions = child.properties().partitioning.partition_count();
        let (input, id) =
            add_stage(child.clone(), partitions, ExchangeKind::Identity, partitions, child_inputs, stages, inputs);
        let reader: Arc<dyn ExecutionPlan> = Arc::new(ShuffleReaderExec::new(
            input,
            id,
            ExchangeKind::Identity,
            Partitioning::UnknownPartitioning(partitions),
            child.properties().equivalence_properties().clone(),
        ));
        return with_children(plan.clone(), vec![reader]);
    }
    if plan.is::<RecursiveQueryExec>() {
        // A recursive query runs its recursive term again and again inside one task: its
        // exchanges stay in the task (DataFusion runs them in process), where they can be run
        // again.
        return Ok(plan);
    }
    let children: Vec<Arc<dyn ExecutionPlan>> = plan.children().into_iter().cloned().collect();
    if children.is_empty() {
        return Ok(plan);
    }
    let mut new_children = Vec::with_capacity(children.len());
    for c in children {
        new_children.push(cut(c, stages, inputs)?);
    }
    with_children(plan, new_children)
}

/// `plan` over new children, its properties computed afresh.
pub(crate) fn with_children(
    plan: Arc<dyn ExecutionPlan>,
    children: Vec<Arc<dyn ExecutionPlan>>,
) -> Result<Arc<dyn ExecutionPlan>> {
    Ok(plan.replace_children(children, ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute))?)
}

/// The stages of a cut plan as text: each stage with its exchange and plan, children first.
pub fn display_stages(stages: &[StagePlan]) -> String {
    let mut out = String::new();
    for s in stages {
        let head = match s.exchange() {
            None => format!("Stage {} (result, {} tasks)", s.id, s.partitions),
            Some(k) => format!(
                "Stage {} ({} tasks, exchange: {k} into {} partitions)",
                s.id, s.partitions, s.output_partitions
            ),
        };
        out.push_str(&head);
        out.push('\n');
        for line in displayable(s.plan.as_ref()).indent(false).to_string().lines() {
            out.push_str("  ");
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}
