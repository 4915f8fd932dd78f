//! Rewrites that make a DataFusion physical plan safe to run as isolated tasks, applied before
//! the plan is cut into stages.
//!
//! DataFusion runs all partitions of a plan in one process and lets partitions share state. A
//! task runs one partition of its own copy of the plan, so what partitions share must be taken
//! apart:
//!
//! - a hash join that collects its build side once (`CollectLeft`) and reports the build
//!   side's unmatched rows (left, full, left semi/anti/mark joins) decides that in the last of
//!   its partitions to finish: distributed, no task is last. [`DistributedJoinRule`] makes such
//!   joins partitioned (both sides shuffled on the join keys), or, for a null-aware anti join
//!   (`NOT IN`), which must see every build row with every probe row, gives it a single probe
//!   partition; a nested-loop join of such a type gets a single probe partition too;
//! - uncorrelated scalar subqueries fill a container their expressions share with the node
//!   that runs them: [`inline_scalar_subqueries`] runs them on the driver first and puts their
//!   values in the plan as literals.

use std::sync::Arc;

use datafusion::arrow::array::{RecordBatch, RecordBatchOptions};
use datafusion::arrow::datatypes::Schema;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{JoinType, ScalarValue};
use datafusion::error::Result as DfResult;
use datafusion::logical_expr::ColumnarValue;
use datafusion::physical_expr::expressions::Literal;
use datafusion::physical_expr::scalar_subquery::ScalarSubqueryExpr;
use datafusion::physical_expr::{Partitioning, PhysicalExpr};
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion::physical_plan::execution_plan::{ChildrenPropertiesMode, ReplaceChildrenOptions};
use datafusion::physical_plan::joins::{HashJoinExec, NestedLoopJoinExec, PartitionMode};
use datafusion::physical_plan::repartition::RepartitionExec;
use datafusion::physical_plan::scalar_subquery::ScalarSubqueryExec;
use datafusion::physical_plan::ExecutionPlan;
use datafusion_proto::physical_plan::{
    DefaultPhysicalProtoConverter, PhysicalExtensionCodec, PhysicalPlanDecodeContext, PhysicalPlanNodeExt,
    PhysicalProtoConverterExtension,
};
use datafusion_proto::protobuf;

use crate::cache::CachedScanExec;
use crate::codec::EmberCodec;
use crate::error::{Error, Result};

/// Whether a join of this type reports rows of its build (left) side that depend on every
/// probe row: matched or unmatched ones.
fn needs_whole_probe(t: &JoinType) -> bool {
    matches!(t, JoinType::Left | JoinType::Full | JoinType::LeftSemi | JoinType::LeftAnti | JoinType::LeftMark)
}

fn partitions(plan: &Arc<dyn ExecutionPlan>) -> usize {
    plan.properties().partitioning.partition_count()
}

fn single(plan: Arc<dyn ExecutionPlan>) -> Arc<dyn ExecutionPlan> {
    if partitions(&plan) > 1 {
        Arc::new(CoalescePartitionsExec::new(plan))
    } else {
        plan
    }
}

/// Makes joins that decide build-side rows across all probe partitions run correctly as
/// isolated tasks (see the module's documentation). `target` is the partition count of a
/// partitioned join.
pub struct DistributedJoinRule;

impl DistributedJoinRule {
    /// Applies the rule to every join of `plan`.
    pub fn apply(plan: Arc<dyn ExecutionPlan>, target: usize) -> Result<Arc<dyn ExecutionPlan>> {
        let target = target.max(1);
        let rewritten = plan.transform_up(|node| {
            if let Some(join) = node.downcast_ref::<HashJoinExec>() {
                if *join.partition_mode() == PartitionMode::CollectLeft
                    && needs_whole_probe(join.join_type())
                    && partitions(join.right()) > 1
                {
                    let builder = join.builder();
                    if join.null_aware {
                        let children = vec![join.left().clone(), single(join.right().clone())];
                        let new = builder.with_new_children(children)?.recompute_properties().build_exec()?;
                        return Ok(Transformed::yes(new));
                    }
                    let left = match join.left().downcast_ref::<CoalescePartitionsExec>() {
                        Some(c) if c.fetch().is_none() => c.input().clone(),
                        _ => join.left().clone(),
                    };
                    let (lk, rk): (Vec<_>, Vec<_>) = join.on().iter().cloned().unzip();
                    let left: Arc<dyn ExecutionPlan> =
                        Arc::new(RepartitionExec::try_new(left, Partitioning::Hash(lk, target))?);
                    let right: Arc<dyn ExecutionPlan> =
                        Arc::new(RepartitionExec::try_new(join.right().clone(), Partitioning::Hash(rk, target))?);
                    let new = builder
                        .with_partition_mode(PartitionMode::Partitioned)
                        .with_new_children(vec![left, right])?
                        .recompute_properties()
                        .build_exec()?;
                    return Ok(Transformed::yes(new));
                }
            }
            if let Some(join) = node.downcast_ref::<NestedLoopJoinExec>() {
                if needs_whole_probe(join.join_type()) && partitions(join.right()) > 1 {
                    let children = vec![join.left().clone(), single(join.right().clone())];
                    let new = node
                        .clone()
                        .replace_children(children, ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute))?;
                    return Ok(Transformed::yes(new));
                }
            }
            Ok(Transformed::no(node))
        });
        Ok(rewritten.map_err(Error::from)?.data)
    }
}

/// The ScalarSubqueryExec nodes of `plan`, outermost first, not looking inside subqueries.
fn subquery_nodes(plan: &Arc<dyn ExecutionPlan>, out: &mut Vec<Arc<dyn ExecutionPlan>>) {
    if let Some(exec) = plan.downcast_ref::<ScalarSubqueryExec>() {
        out.push(plan.clone());
        subquery_nodes(exec.input(), out);
        return;
    }
    for c in plan.children() {
        subquery_nodes(c, out);
    }
}

/// Runs the uncorrelated scalar subqueries of `plan` with `run` (on Ember), innermost first,
/// and returns the plan with their values as literals and without the nodes that ran them.
pub fn inline_scalar_subqueries(
    plan: Arc<dyn ExecutionPlan>,
    run: &dyn Fn(Arc<dyn ExecutionPlan>) -> Result<Vec<RecordBatch>>,
) -> Result<Arc<dyn ExecutionPlan>> {
    let mut nodes = Vec::new();
    subquery_nodes(&plan, &mut nodes);
    if nodes.is_empty() {
        return Ok(plan);
    }
    for node in &nodes {
        let Some(exec) = node.downcast_ref::<ScalarSubqueryExec>() else { continue };
        for link in exec.subqueries() {
            let sub = inline_scalar_subqueries(link.plan.clone(), run)?;
            let schema = sub.schema();
            let batches = run(sub)?;
            let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
            let field = schema.fields().first().ok_or_else(|| Error::Plan("a scalar subquery has no column".into()))?;
            let value = match rows {
                0 => ScalarValue::try_from(field.data_type())?,
                1 => {
                    let b =
                        batches.iter().find(|b| b.num_rows() == 1).ok_or_else(|| Error::Internal("lost row".into()))?;
                    ScalarValue::try_from_array(b.column(0), 0)?
                }
                _ => return Err(Error::Plan("Scalar subquery returned more than one row".into())),
            };
            // Only this plan's copy holds the container: filled once per plan.
            exec.results().set(link.index, value)?;
        }
    }
    // Re-encode the plan with each subquery expression as its value, then decode it: every
    // operator's expressions are rewritten without knowing each operator's constructor.
    let codec = KeepTables::default();
    let proto = SubqueryInliner.execution_plan_to_proto(&plan, &codec)?;
    let rt = crate::runtime::sql_runtime()?;
    let ctx = PhysicalPlanDecodeContext::new(&rt.base, &codec);
    Ok(DefaultPhysicalProtoConverter {}.proto_to_execution_plan(&proto, &ctx)?)
}

/// [`EmberCodec`] for a plan re-encoded in the driver: cached scans keep their tables (which
/// on the way to an executor travel with the stage instead).
#[derive(Debug, Default)]
struct KeepTables {
    tables: std::sync::Mutex<Vec<ember_core::Rdd<crate::batch::Batch>>>,
}

impl PhysicalExtensionCodec for KeepTables {
    fn try_decode(
        &self,
        buf: &[u8],
        inputs: &[Arc<dyn ExecutionPlan>],
        ctx: &datafusion::execution::TaskContext,
        proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let node = EmberCodec.try_decode(buf, inputs, ctx, proto_converter)?;
        let Some(scan) = node.downcast_ref::<CachedScanExec>() else { return Ok(node) };
        let tables = self.tables.lock().unwrap_or_else(|p| p.into_inner());
        let table = tables.get(scan.input).cloned().ok_or_else(|| {
            datafusion::error::DataFusionError::Internal("a re-encoded cached scan lost its table".into())
        })?;
        Ok(Arc::new(scan.with_table(table)))
    }

    fn try_encode(
        &self,
        node: Arc<dyn ExecutionPlan>,
        buf: &mut Vec<u8>,
        proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> DfResult<()> {
        if let Some(scan) = node.downcast_ref::<CachedScanExec>() {
            if let Some(table) = &scan.rdd {
                let mut tables = self.tables.lock().unwrap_or_else(|p| p.into_inner());
                tables.push(table.clone());
                let stashed: Arc<dyn ExecutionPlan> = Arc::new(scan.with_input(tables.len() - 1));
                return EmberCodec.try_encode(stashed, buf, proto_converter);
            }
        }
        EmberCodec.try_encode(node, buf, proto_converter)
    }
}

/// Encodes a plan with every scalar subquery expression replaced by its (filled) value and
/// every node that ran subqueries replaced by its input.
struct SubqueryInliner;

impl PhysicalProtoConverterExtension for SubqueryInliner {
    fn proto_to_execution_plan(
        &self,
        proto: &protobuf::PhysicalPlanNode,
        ctx: &PhysicalPlanDecodeContext<'_>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        DefaultPhysicalProtoConverter {}.proto_to_execution_plan(proto, ctx)
    }

    fn execution_plan_to_proto(
        &self,
        plan: &Arc<dyn ExecutionPlan>,
        codec: &dyn PhysicalExtensionCodec,
    ) -> DfResult<protobuf::PhysicalPlanNode> {
        if let Some(exec) = plan.downcast_ref::<ScalarSubqueryExec>() {
            return self.execution_plan_to_proto(exec.input(), codec);
        }
        protobuf::PhysicalPlanNode::try_from_physical_plan_with_converter(plan.clone(), codec, self)
    }

    fn proto_to_physical_expr(
        &self,
        proto: &protobuf::PhysicalExprNode,
        input_schema: &Schema,
        ctx: &PhysicalPlanDecodeContext<'_>,
    ) -> DfResult<Arc<dyn PhysicalExpr>> {
        DefaultPhysicalProtoConverter {}.proto_to_physical_expr(proto, input_schema, ctx)
    }

    fn physical_expr_to_proto(
        &self,
        expr: &Arc<dyn PhysicalExpr>,
        codec: &dyn PhysicalExtensionCodec,
    ) -> DfResult<protobuf::PhysicalExprNode> {
        if expr.is::<ScalarSubqueryExpr>() {
            // The expression evaluates to its filled value whatever the batch.
            let one_row = RecordBatch::try_new_with_options(
                Arc::new(Schema::empty()),
                vec![],
                &RecordBatchOptions::new().with_row_count(Some(1)),
            )?;
            let value = match expr.evaluate(&one_row)? {
                ColumnarValue::Scalar(v) => v,
                ColumnarValue::Array(a) => ScalarValue::try_from_array(&a, 0)?,
            };
            let lit: Arc<dyn PhysicalExpr> = Arc::new(Literal::new(value));
            return datafusion_proto::physical_plan::to_proto::serialize_physical_expr_with_converter(
                &lit, codec, self,
            );
        }
        datafusion_proto::physical_plan::to_proto::serialize_physical_expr_with_converter(expr, codec, self)
    }
}

/// The column numbering copies of a row in [`SetOperationRule`]'s rewrite.
const COPY_COLUMN: &str = "__ember_copy";

/// Corrects `INTERSECT ALL` and `EXCEPT ALL`, which DataFusion plans as a plain semi or anti
/// join on all columns (apache/datafusion#12955, #12956): that keeps every copy of a left row
/// that has any match (`INTERSECT ALL` must keep `min(l, r)` copies) and drops every copy that
/// has one (`EXCEPT ALL` must keep `max(l - r, 0)`).
///
/// The rewrite numbers the copies of each distinct row on both sides (`row_number()` over a
/// partition by every column) and joins on the columns and that number: the k-th copy on the
/// left is kept by `INTERSECT ALL` when the right has a k-th copy, and by `EXCEPT ALL` when it
/// has not. The joins DataFusion builds for these operators are recognized right after SQL
/// planning, before the optimizer: a left semi or anti join with `NULL` equal to `NULL` on
/// every column, without a filter, whose left side is not made distinct (the distinct forms
/// are correct).
pub struct SetOperationRule;

impl SetOperationRule {
    /// Applies the rule to an unoptimized logical plan.
    pub fn apply(plan: datafusion::logical_expr::LogicalPlan) -> Result<datafusion::logical_expr::LogicalPlan> {
        use datafusion::common::NullEquality;
        use datafusion::logical_expr::{ExprFunctionExt, LogicalPlan, LogicalPlanBuilder};
        use datafusion::prelude::Expr;

        let rewritten = plan.transform_up(|node| {
            let LogicalPlan::Join(j) = &node else { return Ok(Transformed::no(node)) };
            let width = j.left.schema().fields().len();
            let is_all_set_op = matches!(j.join_type, JoinType::LeftSemi | JoinType::LeftAnti)
                && j.null_equality == NullEquality::NullEqualsNull
                && j.filter.is_none()
                && j.on.len() == width
                && j.right.schema().fields().len() == width
                && !matches!(j.left.as_ref(), LogicalPlan::Distinct(_))
                && j.left.schema().fields().iter().all(|f| f.name() != COPY_COLUMN);
            if !is_all_set_op {
                return Ok(Transformed::no(node));
            }
            let number = |side: &LogicalPlan, alias: &str| -> DfResult<LogicalPlan> {
                let cols: Vec<Expr> = side.schema().columns().into_iter().map(Expr::Column).collect();
                let copy =
                    datafusion::functions_window::expr_fn::row_number().partition_by(cols).build()?.alias(COPY_COLUMN);
                LogicalPlanBuilder::from(side.clone()).window(vec![copy])?.alias(alias)?.build()
            };
            let left = number(&j.left, "__ember_left")?;
            let right = number(&j.right, "__ember_right")?;
            let names =
                |p: &LogicalPlan| -> Vec<String> { p.schema().fields().iter().map(|f| f.name().clone()).collect() };
            let (lnames, rnames) = (names(&left), names(&right));
            let lkeys: Vec<datafusion::common::Column> =
                lnames.iter().map(|n| datafusion::common::Column::new(Some("__ember_left"), n)).collect();
            let rkeys: Vec<datafusion::common::Column> =
                rnames.iter().map(|n| datafusion::common::Column::new(Some("__ember_right"), n)).collect();
            // The join's output keeps the original left columns under their own qualifiers, so
            // the plan above still resolves them.
            let restore: Vec<Expr> = j
                .left
                .schema()
                .iter()
                .map(|(q, f)| {
                    Expr::Column(datafusion::common::Column::new(Some("__ember_left"), f.name()))
                        .alias_qualified(q.cloned(), f.name())
                })
                .collect();
            let fixed = LogicalPlanBuilder::from(left)
                .join_detailed(right, j.join_type, (lkeys, rkeys), None, NullEquality::NullEqualsNull)?
                .project(restore)?
                .build()?;
            Ok(Transformed::yes(fixed))
        });
        Ok(rewritten.map_err(Error::from)?.data)
    }
}
