//! The columnar cache: a query's result kept as Arrow batches in Ember's block manager (under
//! the same memory budget as every cached RDD), with per-partition statistics that let a scan
//! skip the partitions a filter cannot match.

use std::fmt;
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, BooleanArray, RecordBatch, UInt64Array};
use datafusion::arrow::datatypes::{Field, Schema, SchemaRef};
use datafusion::catalog::Session as CatalogSession;
use datafusion::common::pruning::PruningStatistics;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{Column, DFSchema, ScalarValue};
use datafusion::datasource::{TableProvider, TableType};
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::functions_aggregate::min_max::{MaxAccumulator, MinAccumulator};
use datafusion::logical_expr::utils::conjunction;
use datafusion::logical_expr::{Accumulator, Expr, TableProviderFilterPushDown};
use datafusion::physical_expr::{EquivalenceProperties, Partitioning, PhysicalExpr};
use datafusion::physical_optimizer::pruning::PruningPredicateBuilder;
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::metrics::{BaselineMetrics, ExecutionPlanMetricsSet, MetricBuilder, MetricsSet};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties};
use ember_core::{BoxIter, Rdd};
use serde::{Deserialize, Serialize};

use crate::batch::Batch;
use crate::stage::{Source, TaskBridge};

/// What a cached partition holds, for skipping it: its rows, each column's nulls, and each
/// column's smallest and largest value (a two-row batch, `None` when they could not be
/// computed; a column whose values cannot be ordered has nulls there).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PartitionStats {
    /// Rows in the partition.
    pub rows: u64,
    /// Nulls per column.
    pub nulls: Vec<u64>,
    /// Row 0: each column's minimum; row 1: its maximum.
    pub bounds: Option<Batch>,
}

/// The schema of [`PartitionStats::bounds`]: the table's columns, all nullable.
fn bounds_schema(schema: &Schema) -> SchemaRef {
    Arc::new(Schema::new(
        schema.fields().iter().map(|f| Field::new(f.name(), f.data_type().clone(), true)).collect::<Vec<_>>(),
    ))
}

/// Computes a partition's statistics as it is cached (inside the task that caches it).
pub(crate) fn partition_stats<'a>(batches: BoxIter<'a, Batch>) -> BoxIter<'a, PartitionStats> {
    let mut rows = 0u64;
    let mut nulls: Vec<u64> = Vec::new();
    let mut acc: Option<Vec<(Option<MinAccumulator>, Option<MaxAccumulator>)>> = None;
    let mut schema = None;
    for Batch(b) in batches {
        rows += b.num_rows() as u64;
        let accs = acc.get_or_insert_with(|| {
            schema = Some(b.schema());
            nulls = vec![0; b.num_columns()];
            b.schema()
                .fields()
                .iter()
                .map(|f| (MinAccumulator::try_new(f.data_type()).ok(), MaxAccumulator::try_new(f.data_type()).ok()))
                .collect()
        });
        for (i, col) in b.columns().iter().enumerate() {
            if let Some(n) = nulls.get_mut(i) {
                *n += col.null_count() as u64;
            }
            if let Some((min, max)) = accs.get_mut(i) {
                // A column the accumulators cannot take has no bounds: it is never skipped on.
                if min.as_mut().is_some_and(|m| m.update_batch(std::slice::from_ref(col)).is_err()) {
                    *min = None;
                }
                if max.as_mut().is_some_and(|m| m.update_batch(std::slice::from_ref(col)).is_err()) {
                    *max = None;
                }
            }
        }
    }
    let bounds = match (acc, schema) {
        (Some(accs), Some(schema)) => bounds_batch(&schema, accs),
        _ => None,
    };
    Box::new(std::iter::once(PartitionStats { rows, nulls, bounds }))
}

fn bounds_batch(schema: &Schema, accs: Vec<(Option<MinAccumulator>, Option<MaxAccumulator>)>) -> Option<Batch> {
    let stats_schema = bounds_schema(schema);
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(accs.len());
    for ((mut min, mut max), field) in accs.into_iter().zip(stats_schema.fields()) {
        let null = || ScalarValue::try_from(field.data_type()).ok();
        let lo = min.as_mut().and_then(|m| m.evaluate().ok()).or_else(null)?;
        let hi = max.as_mut().and_then(|m| m.evaluate().ok()).or_else(null)?;
        columns.push(ScalarValue::iter_to_array([lo, hi]).ok()?);
    }
    RecordBatch::try_new(stats_schema, columns).ok().map(Batch)
}

/// A cached query result: the persisted RDD of its batches and each partition's statistics.
pub struct CachedTable {
    pub(crate) rdd: Rdd<Batch>,
    schema: SchemaRef,
    stats: Arc<Vec<PartitionStats>>,
}

impl fmt::Debug for CachedTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CachedTable(rdd {}, {} partitions)", self.rdd.id().0, self.stats.len())
    }
}

impl CachedTable {
    pub(crate) fn new(rdd: Rdd<Batch>, schema: SchemaRef, stats: Vec<PartitionStats>) -> Self {
        CachedTable { rdd, schema, stats: Arc::new(stats) }
    }

    /// The statistics of each cached partition.
    pub fn partition_stats(&self) -> &[PartitionStats] {
        &self.stats
    }

    /// Drops the cached blocks.
    pub fn unpersist(&self) {
        self.rdd.unpersist();
    }

    /// Which partitions can hold rows matching all of `filters` (by their statistics).
    fn keep(&self, state: &dyn CatalogSession, filters: &[Expr]) -> Vec<usize> {
        let all: Vec<usize> = (0..self.stats.len()).collect();
        let Some(predicate) = conjunction(filters.iter().cloned()) else { return all };
        let Ok(df_schema) = DFSchema::try_from(self.schema.as_ref().clone()) else { return all };
        let Ok(physical) = state.create_physical_expr(predicate, &df_schema) else { return all };
        let Ok(pruning) = PruningPredicateBuilder::new().with_file_schema(self.schema.clone()).try_build(physical)
        else {
            return all;
        };
        match pruning.prune(&StatsView { schema: &self.schema, stats: &self.stats }) {
            Ok(keep) => all.into_iter().filter(|&p| keep.get(p).copied().unwrap_or(true)).collect(),
            Err(_) => all,
        }
    }
}

/// The partitions' statistics as DataFusion's pruning reads them: one container per partition.
struct StatsView<'a> {
    schema: &'a Schema,
    stats: &'a [PartitionStats],
}

impl StatsView<'_> {
    fn bound(&self, column: &Column, row: usize) -> Option<ArrayRef> {
        let i = self.schema.index_of(&column.name).ok()?;
        let values: Vec<ScalarValue> = self
            .stats
            .iter()
            .map(|s| {
                s.bounds
                    .as_ref()
                    .and_then(|b| ScalarValue::try_from_array(b.0.column(i), row).ok())
                    .or_else(|| ScalarValue::try_from(self.schema.field(i).data_type()).ok())
            })
            .collect::<Option<Vec<_>>>()?;
        ScalarValue::iter_to_array(values).ok()
    }
}

impl PruningStatistics for StatsView<'_> {
    fn min_values(&self, column: &Column) -> Option<ArrayRef> {
        self.bound(column, 0)
    }
    fn max_values(&self, column: &Column) -> Option<ArrayRef> {
        self.bound(column, 1)
    }
    fn num_containers(&self) -> usize {
        self.stats.len()
    }
    fn null_counts(&self, column: &Column) -> Option<ArrayRef> {
        let i = self.schema.index_of(&column.name).ok()?;
        let counts: Option<Vec<u64>> = self.stats.iter().map(|s| s.nulls.get(i).copied()).collect();
        Some(Arc::new(UInt64Array::from(counts?)))
    }
    fn row_counts(&self) -> Option<ArrayRef> {
        Some(Arc::new(UInt64Array::from(self.stats.iter().map(|s| s.rows).collect::<Vec<_>>())))
    }
    fn contained(&self, _column: &Column, _values: &std::collections::HashSet<ScalarValue>) -> Option<BooleanArray> {
        None
    }
}

#[async_trait::async_trait]
impl TableProvider for CachedTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Temporary
    }

    fn supports_filters_pushdown(&self, filters: &[&Expr]) -> DfResult<Vec<TableProviderFilterPushDown>> {
        // Filters only choose partitions; they are applied to the rows above the scan.
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    async fn scan(
        &self,
        state: &dyn CatalogSession,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        _limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let keep = self.keep(state, filters);
        let skipped = self.stats.len() - keep.len();
        let projection = projection.cloned();
        let schema = match &projection {
            Some(p) => Arc::new(self.schema.project(p)?),
            None => self.schema.clone(),
        };
        Ok(Arc::new(CachedScanExec::new(Some(self.rdd.clone()), 0, keep, skipped, projection, schema)))
    }
}

/// Scans a cached table: partition `i` reads cached partition `partitions[i]` (the ones its
/// filters may match) through the task's bridge, and projects its columns.
pub struct CachedScanExec {
    /// The cached RDD, on the driver: the planner makes it an input of the stage.
    pub(crate) rdd: Option<Rdd<Batch>>,
    /// Which cached input of its stage this scan reads.
    pub(crate) input: usize,
    pub(crate) partitions: Vec<usize>,
    pub(crate) skipped: usize,
    pub(crate) projection: Option<Vec<usize>>,
    schema: SchemaRef,
    properties: Arc<PlanProperties>,
    metrics: ExecutionPlanMetricsSet,
}

impl fmt::Debug for CachedScanExec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CachedScanExec(input {}, partitions {:?})", self.input, self.partitions)
    }
}

impl CachedScanExec {
    pub(crate) fn new(
        rdd: Option<Rdd<Batch>>,
        input: usize,
        partitions: Vec<usize>,
        skipped: usize,
        projection: Option<Vec<usize>>,
        schema: SchemaRef,
    ) -> Self {
        // At least one partition, empty when every one was skipped: operators above expect one.
        let count = partitions.len().max(1);
        let properties = PlanProperties::new(
            EquivalenceProperties::new(schema.clone()),
            Partitioning::UnknownPartitioning(count),
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        let metrics = ExecutionPlanMetricsSet::new();
        MetricBuilder::new(&metrics).global_counter("partitions_skipped").add(skipped);
        MetricBuilder::new(&metrics).global_counter("partitions_scanned").add(partitions.len());
        CachedScanExec {
            rdd,
            input,
            partitions,
            skipped,
            projection,
            schema,
            properties: Arc::new(properties),
            metrics,
        }
    }

    /// The cached partitions this scan reads.
    pub fn partitions(&self) -> &[usize] {
        &self.partitions
    }

    /// How many cached partitions its filters let it skip.
    pub fn skipped(&self) -> usize {
        self.skipped
    }

    /// A copy scanning `table`, as the planner finds it before cutting.
    pub(crate) fn with_table(&self, table: Rdd<Batch>) -> Self {
        CachedScanExec { rdd: Some(table), ..self.with_input(0) }
    }

    /// A copy reading input `input` of its stage.
    pub(crate) fn with_input(&self, input: usize) -> Self {
        CachedScanExec::new(
            self.rdd.clone(),
            input,
            self.partitions.clone(),
            self.skipped,
            self.projection.clone(),
            self.schema.clone(),
        )
    }
}

impl DisplayAs for CachedScanExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "CachedScanExec: partitions={} of {} ({} skipped by statistics)",
            self.partitions.len(),
            self.partitions.len() + self.skipped,
            self.skipped
        )
    }
}

impl ExecutionPlan for CachedScanExec {
    fn name(&self) -> &'static str {
        "CachedScanExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DfResult<TreeNodeRecursion>,
    ) -> DfResult<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(self: Arc<Self>, children: Vec<Arc<dyn ExecutionPlan>>) -> DfResult<Arc<dyn ExecutionPlan>> {
        if children.is_empty() {
            Ok(self)
        } else {
            Err(DataFusionError::Internal("CachedScanExec has no children".into()))
        }
    }

    fn reset_state(self: Arc<Self>) -> DfResult<Arc<dyn ExecutionPlan>> {
        Ok(Arc::new(self.with_input(self.input)))
    }

    fn execute(&self, partition: usize, context: Arc<TaskContext>) -> DfResult<SendableRecordBatchStream> {
        let count = self.properties.partitioning.partition_count();
        if partition >= count {
            return Err(DataFusionError::Internal(format!(
                "CachedScanExec: partition {partition} asked of a scan of {count}"
            )));
        }
        let schema = self.schema.clone();
        let Some(&cached) = self.partitions.get(partition) else {
            // Every partition was skipped.
            return Ok(Box::pin(RecordBatchStreamAdapter::new(schema, futures::stream::empty())));
        };
        let bridge = context.session_config().get_extension::<TaskBridge>().ok_or_else(|| {
            DataFusionError::Execution("a cached scan runs only inside an Ember task of its stage".into())
        })?;
        let baseline = BaselineMetrics::new(&self.metrics, partition);
        let (input, projection) = (self.input, self.projection.clone());
        let stream = futures::stream::unfold(Some((bridge, baseline)), move |state| {
            let projection = projection.clone();
            async move {
                let (bridge, baseline) = state?;
                match bridge.read(Source::Cached, input, cached).await {
                    Ok(Some(batch)) => {
                        let batch = match &projection {
                            Some(p) => match batch.project(p) {
                                Ok(b) => b,
                                Err(e) => return Some((Err(e.into()), None)),
                            },
                            None => batch,
                        };
                        baseline.record_output(batch.num_rows());
                        Some((Ok(batch), Some((bridge, baseline))))
                    }
                    Ok(None) => {
                        baseline.done();
                        None
                    }
                    Err(e) => Some((Err(e), None)),
                }
            }
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, stream)))
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }
}
