//! Adaptive execution (Shark's partial DAG execution): map stages run first, and the rest of
//! the plan is re-planned with their real output sizes.
//!
//! A partitioned hash join whose build side turns out small becomes a broadcast join: the build
//! side's shuffle, already written, is read whole by every task of the join (its readers gather
//! every partition), and the probe side is not shuffled at all (its exchange had not run yet, so
//! it is simply dropped). Joins are taken deepest first, so a join above another sees the other's
//! decision.

use std::sync::Arc;

use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::JoinType;
use datafusion::physical_expr::{EquivalenceProperties, Partitioning};
use datafusion::physical_optimizer::ensure_requirements::EnsureRequirements;
use datafusion::physical_optimizer::output_requirements::OutputRequirements;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::joins::{HashJoinExec, PartitionMode};
use datafusion::physical_plan::repartition::RepartitionExec;
use datafusion::physical_plan::ExecutionPlan;

use crate::error::{Error, Result};
use crate::exec::{ExchangeKind, ShuffleReaderExec};
use crate::stage::ExchangeDep;

/// How adaptive execution is set.
#[derive(Debug, Clone, Copy)]
pub struct AdaptiveConf {
    /// Whether map stages run first and the rest is re-planned.
    pub enabled: bool,
    /// A join's build side of at most this many shuffle bytes is broadcast.
    pub broadcast_threshold: u64,
}

impl Default for AdaptiveConf {
    fn default() -> Self {
        AdaptiveConf { enabled: true, broadcast_threshold: 10 << 20 }
    }
}

/// A query's plan before and after adaptive execution changed it, and why.
#[derive(Debug, Clone)]
pub struct AdaptivePlans {
    /// The stages as first planned.
    pub before: String,
    /// The stages as run.
    pub after: String,
    /// Each decision taken, in order.
    pub decisions: Vec<String>,
}

fn is_hash_exchange(plan: &Arc<dyn ExecutionPlan>) -> bool {
    plan.downcast_ref::<RepartitionExec>()
        .is_some_and(|r| matches!(r.partitioning(), Partitioning::Hash(..)) && !r.preserve_order())
}

/// The deepest partitioned hash join whose two sides are still unrun hash exchanges and whose
/// type lets the build side be broadcast (the build side's rows are not reported on their own).
fn candidate(plan: &Arc<dyn ExecutionPlan>) -> Option<Arc<dyn ExecutionPlan>> {
    for c in plan.children() {
        if let Some(found) = candidate(c) {
            return Some(found);
        }
    }
    let join = plan.downcast_ref::<HashJoinExec>()?;
    let broadcastable = matches!(
        join.join_type(),
        JoinType::Inner | JoinType::Right | JoinType::RightSemi | JoinType::RightAnti | JoinType::RightMark
    );
    (*join.partition_mode() == PartitionMode::Partitioned
        && broadcastable
        && !join.null_aware
        && is_hash_exchange(join.left())
        && is_hash_exchange(join.right()))
    .then(|| plan.clone())
}

fn replace(
    plan: Arc<dyn ExecutionPlan>,
    target: &Arc<dyn ExecutionPlan>,
    new: Arc<dyn ExecutionPlan>,
) -> Result<Arc<dyn ExecutionPlan>> {
    let mut new = Some(new);
    let replaced = plan.transform_up(|node| {
        if Arc::ptr_eq(&node, target) {
            if let Some(n) = new.take() {
                return Ok(Transformed::yes(n));
            }
        }
        Ok(Transformed::no(node))
    })?;
    Ok(replaced.data)
}

/// Re-plans `plan` join by join: `run_exchange` writes an exchange's shuffle (running its
/// stages) and returns it with its size in bytes. Returns the new plan and the decisions taken.
pub(crate) fn adapt(
    mut plan: Arc<dyn ExecutionPlan>,
    conf: AdaptiveConf,
    options: &ConfigOptions,
    run_exchange: &dyn Fn(Arc<dyn ExecutionPlan>) -> Result<(Arc<ExchangeDep>, u64)>,
) -> Result<(Arc<dyn ExecutionPlan>, Vec<String>)> {
    let mut decisions = Vec::new();
    if !conf.enabled {
        return Ok((plan, decisions));
    }
    while let Some(node) = candidate(&plan) {
        let join = node.downcast_ref::<HashJoinExec>().ok_or_else(|| Error::Internal("lost a join".into()))?;
        let (left, right) = (join.left().clone(), join.right().clone());
        let (dep, bytes) = run_exchange(left.clone())?;
        let schema = left.schema();
        let new = if bytes <= conf.broadcast_threshold {
            decisions.push(format!(
                "broadcast join on {:?}: its build side is {bytes} bytes (at most {}); the probe side is not shuffled",
                join.on().iter().map(|(l, _)| l.to_string()).collect::<Vec<_>>(),
                conf.broadcast_threshold
            ));
            let gather: Arc<dyn ExecutionPlan> =
                Arc::new(ShuffleReaderExec::gathering(dep, ExchangeKind::Hash, schema));
            let probe = right
                .downcast_ref::<RepartitionExec>()
                .map(|r| r.input().clone())
                .ok_or_else(|| Error::Internal("lost a join's exchange".into()))?;
            join.builder()
                .with_partition_mode(PartitionMode::CollectLeft)
                .with_new_children(vec![gather, probe])?
                .recompute_properties()
                .build_exec()?
        } else {
            decisions.push(format!(
                "shuffle join kept: its build side is {bytes} bytes (more than {})",
                conf.broadcast_threshold
            ));
            let partitioning = left.properties().partitioning.clone();
            let written: Arc<dyn ExecutionPlan> = Arc::new(ShuffleReaderExec::written(
                dep,
                ExchangeKind::Hash,
                partitioning,
                EquivalenceProperties::new(schema),
            ));
            join.builder().with_new_children(vec![written, right])?.build_exec()?
        };
        plan = replace(plan, &node, new)?;
        // A broadcast join's output is partitioned as its probe side was, not on its keys:
        // what above relied on the shuffle join's partitioning gets an exchange of its own.
        // The result's own ordering (a final merge) is kept as a requirement meanwhile, as
        // DataFusion's optimizer does, or the merge would be dropped as unneeded.
        plan = OutputRequirements::new_add_mode().optimize(plan, options)?;
        plan = EnsureRequirements::new().optimize(plan, options)?;
        plan = OutputRequirements::new_remove_mode().optimize(plan, options)?;
    }
    Ok((plan, decisions))
}
