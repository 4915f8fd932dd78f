//! Per-operator metrics of a query run on Ember: each task collects its plan copy's metrics when
//! its stream ends and adds them to an accumulator, which the driver reads once the job is done
//! (only successful attempts count, as with every accumulator).

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::physical_plan::{displayable, ExecutionPlan};
use ember_core::AccumulatorParam;
use serde::{Deserialize, Serialize};

/// One operator's metrics summed over the tasks that ran it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperatorMetrics {
    /// Tasks that ran it.
    pub tasks: u64,
    /// Each metric by name (`output_rows`, `output_batches`, `elapsed_compute` in nanoseconds,
    /// `spill_count`, `spilled_bytes`, ...), summed.
    pub values: BTreeMap<String, u64>,
}

/// Metrics by (stage, operator's pre-order position in the stage plan).
pub type PlanMetrics = BTreeMap<(u32, u32), OperatorMetrics>;

/// Sums [`PlanMetrics`] from tasks.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct PlanMetricsSum;

impl AccumulatorParam for PlanMetricsSum {
    type Value = PlanMetrics;
    fn zero(&self) -> PlanMetrics {
        BTreeMap::new()
    }
    fn merge(&self, acc: &mut PlanMetrics, update: PlanMetrics) {
        for (k, m) in update {
            let e = acc.entry(k).or_default();
            e.tasks += m.tasks;
            for (name, v) in m.values {
                *e.values.entry(name).or_default() += v;
            }
        }
    }
}

/// The metrics of `plan`'s operators (as one task ran them), by pre-order position.
pub(crate) fn collect(stage: u32, plan: &Arc<dyn ExecutionPlan>) -> PlanMetrics {
    let mut out = BTreeMap::new();
    let mut next = 0u32;
    walk(plan, &mut |node| {
        let mut m = OperatorMetrics { tasks: 1, values: BTreeMap::new() };
        if let Some(set) = node.metrics() {
            for metric in set.aggregate_by_name().iter() {
                let v = metric.value();
                // Instants do not add up over tasks.
                if v.name().contains("timestamp") {
                    continue;
                }
                *m.values.entry(v.name().to_string()).or_default() += v.as_usize() as u64;
            }
        }
        out.insert((stage, next), m);
        next += 1;
    });
    out
}

fn walk(plan: &Arc<dyn ExecutionPlan>, f: &mut dyn FnMut(&Arc<dyn ExecutionPlan>)) {
    f(plan);
    for c in plan.children() {
        walk(c, f);
    }
}

/// How a metric's value reads.
fn show(name: &str, v: u64) -> String {
    if name.contains("time") || name.contains("elapsed") {
        format!("{name}={:.3}ms", v as f64 / 1e6)
    } else if name.contains("bytes") {
        format!("{name}={v}B")
    } else {
        format!("{name}={v}")
    }
}

/// A stage plan as text, each operator followed by its metrics. `skip_root` leaves the root's
/// metrics out (a repartition splitting a map stage's output is not run as an operator).
pub(crate) fn render(stage: u32, plan: &Arc<dyn ExecutionPlan>, metrics: &PlanMetrics, skip_root: bool) -> String {
    let mut out = String::new();
    let mut next = 0u32;
    render_node(stage, plan, metrics, 1, &mut next, skip_root, &mut out);
    out
}

fn render_node(
    stage: u32,
    plan: &Arc<dyn ExecutionPlan>,
    metrics: &PlanMetrics,
    depth: usize,
    next: &mut u32,
    skip: bool,
    out: &mut String,
) {
    let line = displayable(plan.as_ref()).one_line().to_string();
    out.push_str(&"  ".repeat(depth));
    out.push_str(line.trim_end());
    // The executed copy of a stage that splits its output starts below the repartition.
    let index = if skip { None } else { Some(*next) };
    if let Some(m) = index.and_then(|i| metrics.get(&(stage, i))) {
        let shown: Vec<String> = m.values.iter().map(|(k, v)| show(k, *v)).collect();
        out.push_str(&format!(", metrics=[tasks={}, {}]", m.tasks, shown.join(", ")));
    }
    out.push('\n');
    if !skip {
        *next += 1;
    }
    for c in plan.children() {
        render_node(stage, c, metrics, depth + 1, next, false, out);
    }
}
