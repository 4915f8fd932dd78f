//! `ShuffleReaderExec`: the leaf of a stage plan that reads an exchange's data from Ember's
//! shuffle, through the running task's bridge.

use std::fmt;
use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::{EquivalenceProperties, Partitioning, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::metrics::{BaselineMetrics, ExecutionPlanMetricsSet, MetricsSet};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties};

use crate::stage::{ExchangeDep, Source, TaskBridge};

/// How the stage below an exchange split its output, which decides what a reduce partition
/// holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ExchangeKind {
    /// Rows hashed on the exchange's keys into N partitions.
    Hash,
    /// Batches dealt round-robin into N partitions.
    RoundRobin,
    /// Everything into one partition (below a coalesce).
    Single,
    /// Map partition i into reduce partition i, in order (below a sort-preserving merge).
    Identity,
}

impl fmt::Display for ExchangeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ExchangeKind::Hash => "hash",
            ExchangeKind::RoundRobin => "round robin",
            ExchangeKind::Single => "single",
            ExchangeKind::Identity => "identity",
        })
    }
}

/// Reads one input of a stage: partition `p` of this node is reduce partition `p` of the
/// shuffle written by the child stage, batch by batch in map order.
///
/// The node is a leaf of the stage's DataFusion plan. It does not read the shuffle itself: the
/// Ember task running the stage serves its reads (the task's slot thread owns the shuffle
/// readers, which borrow the task's context), and this node asks for the next batch through
/// the [`TaskBridge`] in the task's DataFusion context. Executed outside an Ember task it fails.
pub struct ShuffleReaderExec {
    /// Which input of the stage (an index into the stage's shuffle dependencies).
    pub(crate) input: usize,
    /// The id of the stage that writes this input, for EXPLAIN.
    pub(crate) from_stage: usize,
    pub(crate) kind: ExchangeKind,
    /// Reduce partitions of the shuffle: partition `p` reads reduce partition `p`, or, when the
    /// reader gathers (a broadcast side), its one partition reads all of them.
    pub(crate) reduce_partitions: usize,
    pub(crate) gather: bool,
    /// On the driver, a shuffle already written (adaptive execution ran its stage first).
    pub(crate) done: Option<Arc<ExchangeDep>>,
    schema: SchemaRef,
    properties: Arc<PlanProperties>,
    metrics: ExecutionPlanMetricsSet,
}

impl ShuffleReaderExec {
    /// A reader of `input` with `partitioning` as its output partitioning (the exchange's) and
    /// `eq` as what it knows about its rows (orderings survive an identity exchange).
    pub(crate) fn new(
        input: usize,
        from_stage: usize,
        kind: ExchangeKind,
        partitioning: Partitioning,
        eq: EquivalenceProperties,
    ) -> Self {
        let schema = eq.schema().clone();
        let reduce_partitions = partitioning.partition_count();
        let properties = PlanProperties::new(eq, partitioning, EmissionType::Incremental, Boundedness::Bounded);
        ShuffleReaderExec {
            input,
            from_stage,
            kind,
            reduce_partitions,
            gather: false,
            done: None,
            schema,
            properties: Arc::new(properties),
            metrics: ExecutionPlanMetricsSet::new(),
        }
    }

    /// A reader of a shuffle already written, as partitioned as it was written.
    pub(crate) fn written(
        dep: Arc<ExchangeDep>,
        kind: ExchangeKind,
        partitioning: Partitioning,
        eq: EquivalenceProperties,
    ) -> Self {
        let shuffle = dep.shuffle_id.0 as usize;
        ShuffleReaderExec { done: Some(dep), ..ShuffleReaderExec::new(0, shuffle, kind, partitioning, eq) }
    }

    /// A reader of a shuffle already written that gathers all its partitions into one: the
    /// build side of a broadcast join.
    pub(crate) fn gathering(dep: Arc<ExchangeDep>, kind: ExchangeKind, schema: SchemaRef) -> Self {
        let reduce_partitions = dep.num_partitions();
        let from_stage = dep.shuffle_id.0 as usize;
        ShuffleReaderExec {
            reduce_partitions,
            gather: true,
            done: Some(dep),
            ..ShuffleReaderExec::new(
                0,
                from_stage,
                kind,
                Partitioning::UnknownPartitioning(1),
                EquivalenceProperties::new(schema),
            )
        }
    }

    /// A copy reading input `input` of its stage.
    pub(crate) fn with_input(&self, input: usize) -> Self {
        ShuffleReaderExec {
            input,
            from_stage: self.from_stage,
            kind: self.kind,
            reduce_partitions: self.reduce_partitions,
            gather: self.gather,
            done: self.done.clone(),
            schema: self.schema.clone(),
            properties: self.properties.clone(),
            metrics: ExecutionPlanMetricsSet::new(),
        }
    }
}

impl std::fmt::Debug for ShuffleReaderExec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ShuffleReaderExec(input {}, stage {}, {})", self.input, self.from_stage, self.kind)
    }
}

impl DisplayAs for ShuffleReaderExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        if let (Some(dep), false) = (&self.done, self.gather) {
            return write!(f, "ShuffleReaderExec: shuffle={} (written), exchange={}", dep.shuffle_id.0, self.kind);
        }
        if self.gather {
            return write!(
                f,
                "ShuffleReaderExec: shuffle={} (written), exchange={}, broadcast: all {} partitions in one",
                self.from_stage, self.kind, self.reduce_partitions
            );
        }
        write!(
            f,
            "ShuffleReaderExec: stage={}, exchange={}, partitions={}",
            self.from_stage,
            self.kind,
            self.properties.partitioning.partition_count()
        )
    }
}

impl ExecutionPlan for ShuffleReaderExec {
    fn name(&self) -> &'static str {
        "ShuffleReaderExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(self: Arc<Self>, children: Vec<Arc<dyn ExecutionPlan>>) -> Result<Arc<dyn ExecutionPlan>> {
        if children.is_empty() {
            Ok(self)
        } else {
            Err(DataFusionError::Internal("ShuffleReaderExec has no children".into()))
        }
    }

    fn reset_state(self: Arc<Self>) -> Result<Arc<dyn ExecutionPlan>> {
        Ok(Arc::new(self.with_input(self.input)))
    }

    fn execute(&self, partition: usize, context: Arc<TaskContext>) -> Result<SendableRecordBatchStream> {
        let parts = self.properties.partitioning.partition_count();
        if partition >= parts {
            return Err(DataFusionError::Internal(format!(
                "ShuffleReaderExec: partition {partition} asked of an exchange of {parts}"
            )));
        }
        let bridge = context.session_config().get_extension::<TaskBridge>().ok_or_else(|| {
            DataFusionError::Execution("a shuffle reader runs only inside an Ember task of its stage".into())
        })?;
        let baseline = BaselineMetrics::new(&self.metrics, partition);
        let input = self.input;
        // The reduce partitions this partition reads, in order.
        let (first, end) = if self.gather { (0, self.reduce_partitions) } else { (partition, partition + 1) };
        let stream = futures::stream::unfold(Some((bridge, baseline, first)), move |state| async move {
            let (bridge, baseline, mut reduce) = state?;
            loop {
                if reduce >= end {
                    baseline.done();
                    return None;
                }
                let timer = baseline.elapsed_compute().timer();
                let next = bridge.read(Source::Shuffle, input, reduce).await;
                timer.done();
                match next {
                    Ok(Some(batch)) => {
                        baseline.record_output(batch.num_rows());
                        return Some((Ok(batch), Some((bridge, baseline, reduce))));
                    }
                    Ok(None) => reduce += 1,
                    Err(e) => return Some((Err(e), None)),
                }
            }
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(self.schema.clone(), stream)))
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }
}
