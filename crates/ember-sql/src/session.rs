//! [`Session`] and [`DataFrame`]: SQL and DataFrames on an Ember [`Context`], planned by
//! DataFusion and run as stages on Ember's scheduler.

use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::util::pretty::pretty_format_batches;
use datafusion::common::JoinType;
use datafusion::dataframe::DataFrame as DfDataFrame;
use datafusion::logical_expr::{DdlStatement, LogicalPlan, SortExpr};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::{CsvReadOptions, Expr, JsonReadOptions, ParquetReadOptions, SessionConfig, SessionContext};
use ember_core::shuffle::ShuffleDependency;
use ember_core::{Accumulator, Context, IndexPartitioner, Rdd};

use datafusion::datasource::TableProvider;
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use ember_core::StorageLevel;

use crate::adaptive::{adapt, AdaptiveConf, AdaptivePlans};
use crate::batch::Batch;
use crate::cache::{partition_stats, CachedTable};
use crate::codec::PlanShip;
use crate::error::{Error, Result};
use crate::exec::ExchangeKind;
use crate::metrics::PlanMetricsSum;
use crate::planner::{cut_stages, display_stages, InputRef, StagePlan};
use crate::rules::{inline_scalar_subqueries, DistributedJoinRule, SetOperationRule};
use crate::runtime::sql_runtime;
use crate::stage::{ExchangeDep, MaterializeRdd, StageOutput, StageRdd};

/// The entry point of Ember SQL, like Spark's `SparkSession`: a catalog of tables and the
/// settings queries are planned with, on an Ember [`Context`] that runs them.
///
/// ```no_run
/// # fn main() -> ember_sql::Result<()> {
/// let ctx = ember_core::Context::local(2)?;
/// let session = ember_sql::Session::new(&ctx);
/// session.register_parquet("lineitem", "data/tpch/lineitem")?;
/// let df = session.sql("SELECT l_returnflag, count(*) FROM lineitem GROUP BY l_returnflag")?;
/// df.show()?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Session {
    inner: Arc<Inner>,
}

struct Inner {
    ctx: Context,
    df: SessionContext,
    /// Adaptive execution's settings.
    adaptive: std::sync::Mutex<AdaptiveConf>,
    /// The plans of the last query adaptive execution ran.
    last_plans: std::sync::Mutex<Option<AdaptivePlans>>,
    /// Tables cached with `CACHE TABLE`: the provider each replaced, put back by `UNCACHE`.
    cached: std::sync::Mutex<std::collections::HashMap<String, (Option<Arc<dyn TableProvider>>, Arc<CachedTable>)>>,
}

impl Session {
    /// A session on `ctx`. Queries are planned for as many partitions as the context's default
    /// parallelism (its cores).
    pub fn new(ctx: &Context) -> Session {
        let parallelism = ctx.default_parallelism().max(1);
        let mut config = SessionConfig::new()
            .with_target_partitions(parallelism)
            .with_batch_size(8192)
            .with_information_schema(true);
        // Dynamic filters are state that an operator (a join's build, an aggregate's running
        // bound, a top-k) shares with the scan below it, through the plan: a task's copy of
        // the plan would share it with other tasks and attempts in the same process.
        config.options_mut().optimizer.enable_dynamic_filter_pushdown = false;
        config.options_mut().optimizer.enable_topk_dynamic_filter_pushdown = false;
        config.options_mut().optimizer.enable_join_dynamic_filter_pushdown = false;
        config.options_mut().optimizer.enable_aggregate_dynamic_filter_pushdown = false;
        Session {
            inner: Arc::new(Inner {
                ctx: ctx.clone(),
                df: SessionContext::new_with_config(config),
                cached: Default::default(),
                adaptive: Default::default(),
                last_plans: Default::default(),
            }),
        }
    }

    /// The Ember context queries run on.
    pub fn context(&self) -> &Context {
        &self.inner.ctx
    }

    /// The DataFusion session behind this one: its catalog, configuration and functions.
    pub fn datafusion(&self) -> &SessionContext {
        &self.inner.df
    }

    fn block_on<F: std::future::Future>(&self, f: F) -> Result<F::Output> {
        sql_runtime()?.block_on(f)
    }

    /// Plans one SQL statement. Queries come back as a lazy [`DataFrame`]; DDL (`CREATE
    /// EXTERNAL TABLE`, `CREATE VIEW`, `DROP TABLE`, `SET`) takes effect at once, and `CREATE
    /// TABLE .. AS SELECT` runs its query on Ember and keeps the result in memory.
    pub fn sql(&self, sql: &str) -> Result<DataFrame> {
        if let Some(df) = self.cache_statement(sql)? {
            return Ok(df);
        }
        let state = self.inner.df.state();
        let plan = self.block_on(state.create_logical_plan(sql))??;
        match &plan {
            LogicalPlan::Ddl(DdlStatement::CreateMemoryTable(create)) => return self.create_table_as(create),
            LogicalPlan::Explain(e) => return self.explain(e.plan.as_ref().clone(), e.verbose),
            LogicalPlan::Analyze(a) => return self.explain_analyze(a.input.as_ref().clone()),
            _ => {}
        }
        let df = self.block_on(self.inner.df.execute_logical_plan(plan))??;
        Ok(DataFrame { session: self.clone(), df })
    }

    /// A DataFrame of text rows `(plan_type, plan)`, as `EXPLAIN` returns.
    fn text_rows(&self, rows: Vec<(&str, String)>) -> Result<DataFrame> {
        use datafusion::arrow::array::StringArray;
        use datafusion::arrow::datatypes::{DataType, Field, Schema};
        let schema = Arc::new(Schema::new(vec![
            Field::new("plan_type", DataType::Utf8, false),
            Field::new("plan", DataType::Utf8, false),
        ]));
        let (kinds, texts): (Vec<&str>, Vec<String>) = rows.into_iter().unzip();
        let batch =
            RecordBatch::try_new(schema, vec![Arc::new(StringArray::from(kinds)), Arc::new(StringArray::from(texts))])
                .map_err(datafusion::error::DataFusionError::from)?;
        Ok(DataFrame { session: self.clone(), df: self.inner.df.read_batch(batch)? })
    }

    /// `EXPLAIN query`: the stages the query runs as, with their exchanges (and, verbose,
    /// DataFusion's physical plan before cutting).
    fn explain(&self, plan: LogicalPlan, verbose: bool) -> Result<DataFrame> {
        let df = DataFrame { session: self.clone(), df: DfDataFrame::new(self.inner.df.state(), plan) };
        let physical = DistributedJoinRule::apply(df.physical_plan()?, self.target_partitions())?;
        let mut rows = vec![("stages", display_stages(&cut_stages(physical.clone())?))];
        if verbose {
            rows.push((
                "physical_plan",
                datafusion::physical_plan::displayable(physical.as_ref()).indent(true).to_string(),
            ));
        }
        if self.adaptive().enabled {
            rows.push(("note", "adaptive execution may change joins once their build sides have run".into()));
        }
        self.text_rows(rows)
    }

    /// `EXPLAIN ANALYZE query`: runs the query and shows its stages as run, each operator with
    /// its metrics summed over its tasks, and each stage's tasks and shuffle bytes.
    fn explain_analyze(&self, plan: LogicalPlan) -> Result<DataFrame> {
        let df = DataFrame { session: self.clone(), df: DfDataFrame::new(self.inner.df.state(), plan) };
        let acc = self.inner.ctx.accumulator(PlanMetricsSum);
        let first_job = self.inner.ctx.job_summaries().iter().map(|j| j.id.0 + 1).max().unwrap_or(0);
        let started = std::time::Instant::now();
        let (root, stages, rdd_ids) = self.planned(df.physical_plan()?, Some(acc.clone()))?;
        let rows: usize = root.collect()?.iter().map(|(_, b)| b.num_rows()).sum();
        let elapsed = started.elapsed();
        let metrics = acc.value()?;
        let summaries: Vec<ember_core::StageSummary> =
            self.inner.ctx.job_summaries().into_iter().filter(|j| j.id.0 >= first_job).flat_map(|j| j.stages).collect();
        let mut text = format!("{rows} rows in {:.3} s\n", elapsed.as_secs_f64());
        for (st, rdd) in stages.iter().zip(rdd_ids) {
            let suffix = format!("at rdd {}", rdd.0);
            let ember: Vec<&ember_core::StageSummary> =
                summaries.iter().filter(|s| s.name.ends_with(&suffix)).collect();
            let launched: usize = ember.iter().map(|s| s.launched).sum();
            let written: u64 = ember.iter().map(|s| s.metrics.shuffle_bytes_written).sum();
            let read: u64 = ember.iter().map(|s| s.metrics.shuffle_bytes_read).sum();
            let spilled: u64 = ember.iter().map(|s| s.metrics.disk_bytes_spilled).sum();
            let head = match st.exchange() {
                None => format!("Stage {} (result)", st.id),
                Some(k) => format!("Stage {} (exchange: {k} into {} partitions)", st.id, st.output_partitions),
            };
            text.push_str(&format!(
                "{head}: {} tasks ({launched} attempts), shuffle read {read} B, shuffle written {written} B, spilled {spilled} B\n",
                st.partitions
            ));
            let splits = matches!(st.exchange(), Some(ExchangeKind::Hash | ExchangeKind::RoundRobin));
            text.push_str(&crate::metrics::render(st.id as u32, &st.plan, &metrics, splits));
        }
        let mut out = vec![("Plan with Metrics", text)];
        if let Some(p) = self.last_adaptive_plans().filter(|_| !stages.is_empty()) {
            out.push(("adaptive decisions", p.decisions.join("\n")));
        }
        self.text_rows(out)
    }

    /// `CACHE [LAZY] TABLE name [[AS] query]` and `UNCACHE TABLE [IF EXISTS] name`, Spark's
    /// statements, which DataFusion's parser does not know. Caching is eager either way.
    fn cache_statement(&self, sql: &str) -> Result<Option<DataFrame>> {
        let text = sql.trim().trim_end_matches(';').trim();
        // Words with their byte offsets, so that what follows a word is found by position.
        let mut words: Vec<(usize, &str)> = Vec::new();
        let mut start = None;
        for (i, c) in text.char_indices().chain(std::iter::once((text.len(), ' '))) {
            match (c.is_whitespace(), start) {
                (true, Some(s)) => {
                    words.push((s, &text[s..i]));
                    start = None;
                    if words.len() == 6 {
                        break;
                    }
                }
                (false, None) => start = Some(i),
                _ => {}
            }
        }
        let word = |i: usize| words.get(i).map(|(_, w)| w.to_ascii_uppercase());
        let is = |i: usize, w: &str| word(i).as_deref() == Some(w);
        if is(0, "CACHE") && (is(1, "TABLE") || is(1, "LAZY")) {
            let at = if is(1, "LAZY") { 2 } else { 1 };
            if !is(at, "TABLE") {
                return Err(Error::Plan("expected CACHE [LAZY] TABLE name [AS query]".into()));
            }
            let &(offset, name) =
                words.get(at + 1).ok_or_else(|| Error::Plan("CACHE TABLE needs a table name".into()))?;
            // The query, if any, follows the name (and an optional AS).
            let rest = text[offset + name.len()..].trim_start();
            let query = match rest.get(..2) {
                Some(kw) if kw.eq_ignore_ascii_case("AS") && rest[2..].starts_with(char::is_whitespace) => &rest[2..],
                _ => rest,
            };
            self.cache_table(&table_name(name), (!query.trim().is_empty()).then_some(query))?;
            return Ok(Some(self.empty()?));
        }
        if is(0, "UNCACHE") && is(1, "TABLE") {
            let if_exists = is(2, "IF") && is(3, "EXISTS");
            let &(_, name) = words
                .get(if if_exists { 4 } else { 2 })
                .ok_or_else(|| Error::Plan("UNCACHE TABLE needs a table name".into()))?;
            self.uncache_table(&table_name(name), if_exists)?;
            return Ok(Some(self.empty()?));
        }
        Ok(None)
    }

    /// Caches table `name` (or the result of `query`, registered as `name`): its batches are
    /// kept in Ember's block manager with per-partition statistics, and later queries read
    /// them, skipping partitions their filters cannot match.
    pub fn cache_table(&self, name: &str, query: Option<&str>) -> Result<()> {
        let df = match query {
            Some(q) => self.sql(q)?,
            None => self.table(name)?,
        };
        let table = self.cache_dataframe(&df)?;
        let previous = self.inner.df.deregister_table(name)?;
        self.inner.df.register_table(name, table.clone())?;
        let mut cached = self.inner.cached.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((original, old)) = cached.remove(name) {
            old.unpersist();
            cached.insert(name.to_string(), (original, table));
        } else {
            cached.insert(name.to_string(), (if query.is_some() { None } else { previous }, table));
        }
        Ok(())
    }

    /// Drops table `name`'s cache and puts back what it cached (a table cached from a query
    /// goes away).
    pub fn uncache_table(&self, name: &str, if_exists: bool) -> Result<()> {
        let entry = self.inner.cached.lock().unwrap_or_else(|p| p.into_inner()).remove(name);
        let Some((original, table)) = entry else {
            if if_exists {
                return Ok(());
            }
            return Err(Error::Plan(format!("table '{name}' is not cached")));
        };
        table.unpersist();
        self.inner.df.deregister_table(name)?;
        if let Some(original) = original {
            self.inner.df.register_table(name, original)?;
        }
        Ok(())
    }

    /// Runs `df` on Ember and keeps its result cached.
    fn cache_dataframe(&self, df: &DataFrame) -> Result<Arc<CachedTable>> {
        let plan = df.physical_plan()?;
        // The partitions are what statistics skip: a final gather into one would leave one.
        let plan = match plan.downcast_ref::<CoalescePartitionsExec>() {
            Some(c) if c.fetch().is_none() => c.input().clone(),
            _ => plan,
        };
        let schema = plan.schema();
        let root = self.rdd_of(plan)?;
        let rdd = root.map(|(_, b): (u32, Batch)| b).persist(StorageLevel::MemoryAndDisk)?;
        let stats = rdd.map_partitions(partition_stats).collect()?;
        Ok(Arc::new(CachedTable::new(rdd, schema, stats)))
    }

    /// `CREATE TABLE name AS SELECT ..`: runs the query on Ember and registers its result.
    fn create_table_as(&self, create: &datafusion::logical_expr::CreateMemoryTable) -> Result<DataFrame> {
        let name = create.name.clone();
        let exists = self.inner.df.table_exist(name.clone())?;
        if exists && !create.or_replace {
            if create.if_not_exists {
                return self.empty();
            }
            return Err(Error::Plan(format!("table '{name}' already exists")));
        }
        let query = DataFrame {
            session: self.clone(),
            df: DfDataFrame::new(self.inner.df.state(), create.input.as_ref().clone()),
        };
        let schema = query.arrow_schema();
        let batches = query.collect()?;
        let table = datafusion::datasource::MemTable::try_new(schema, vec![batches])?;
        if exists {
            self.inner.df.deregister_table(name.clone())?;
        }
        self.inner.df.register_table(name, Arc::new(table))?;
        self.empty()
    }

    fn empty(&self) -> Result<DataFrame> {
        Ok(DataFrame { session: self.clone(), df: self.inner.df.read_empty()? })
    }

    /// A DataFrame over the named table.
    pub fn table(&self, name: &str) -> Result<DataFrame> {
        let df = self.block_on(self.inner.df.table(name))??;
        Ok(DataFrame { session: self.clone(), df })
    }

    /// Reads Parquet: a file, a directory (Hive-style `key=value` directories become
    /// columns), or a glob.
    pub fn read_parquet(&self, path: &str) -> Result<DataFrame> {
        let df = self.block_on(self.inner.df.read_parquet(path, ParquetReadOptions::default()))??;
        Ok(DataFrame { session: self.clone(), df })
    }

    /// Reads CSV with a header line, inferring the schema.
    pub fn read_csv(&self, path: &str) -> Result<DataFrame> {
        let df = self.block_on(self.inner.df.read_csv(path, CsvReadOptions::new()))??;
        Ok(DataFrame { session: self.clone(), df })
    }

    /// Reads newline-delimited JSON, inferring the schema.
    pub fn read_json(&self, path: &str) -> Result<DataFrame> {
        let df = self.block_on(self.inner.df.read_json(path, JsonReadOptions::default()))??;
        Ok(DataFrame { session: self.clone(), df })
    }

    /// Registers Parquet data as a table.
    pub fn register_parquet(&self, name: &str, path: &str) -> Result<()> {
        self.block_on(self.inner.df.register_parquet(name, path, ParquetReadOptions::default()))??;
        Ok(())
    }

    /// Registers CSV data (with a header line) as a table.
    pub fn register_csv(&self, name: &str, path: &str) -> Result<()> {
        self.block_on(self.inner.df.register_csv(name, path, CsvReadOptions::new()))??;
        Ok(())
    }

    /// Registers newline-delimited JSON as a table.
    pub fn register_json(&self, name: &str, path: &str) -> Result<()> {
        self.block_on(self.inner.df.register_json(name, path, JsonReadOptions::default()))??;
        Ok(())
    }

    /// Registers a DataFrame's plan as a view.
    pub fn register_view(&self, name: &str, df: &DataFrame) -> Result<()> {
        self.inner.df.register_table(name, df.df.clone().into_view())?;
        Ok(())
    }

    /// Adaptive execution's settings (on by default, broadcasting build sides of up to 10 MiB).
    pub fn adaptive(&self) -> AdaptiveConf {
        *self.inner.adaptive.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Changes adaptive execution's settings.
    pub fn set_adaptive(&self, conf: AdaptiveConf) {
        *self.inner.adaptive.lock().unwrap_or_else(|p| p.into_inner()) = conf;
    }

    /// The stages of the last query that adaptive execution changed, before and after, with
    /// its decisions.
    pub fn last_adaptive_plans(&self) -> Option<AdaptivePlans> {
        self.inner.last_plans.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Runs an exchange's stages (a plan whose root is the exchange) and returns its shuffle and
    /// the bytes it wrote.
    fn run_exchange(&self, exchange: Arc<dyn ExecutionPlan>) -> Result<(Arc<ExchangeDep>, u64)> {
        let stages = cut_stages(exchange)?;
        let (_, deps, _) = build_rdds(&self.inner.ctx, &stages, None, self.task_settings())?;
        // The last stage only reads the exchange; the one before it writes it.
        let dep = stages
            .len()
            .checked_sub(2)
            .and_then(|i| deps.get(i).cloned().flatten())
            .ok_or_else(|| Error::Internal("an exchange cut into no map stage".into()))?;
        Rdd::from_node(&self.inner.ctx, MaterializeRdd { dep: dep.clone() }).count()?;
        let bytes = self
            .inner
            .ctx
            .map_output_tracker()
            .statuses(dep.shuffle_id)
            .iter()
            .flatten()
            .map(|s| s.segments.total())
            .sum();
        Ok((dep, bytes))
    }

    /// When tasks are encoded (executors in other processes), checks that every stage plan can
    /// be, so that an operator executors cannot take is named here rather than lost in a
    /// serialization error.
    fn check_shippable(&self, stages: &[StagePlan]) -> Result<()> {
        let settings = self.inner.ctx.settings();
        if matches!(settings.master, ember_core::conf::Master::Local { .. }) && !settings.serialize_tasks {
            return Ok(());
        }
        for st in stages {
            datafusion_proto::bytes::physical_plan_to_bytes_with_extension_codec(
                st.plan.clone(),
                &crate::codec::EmberCodec,
            )
            .map_err(|e| Error::Plan(format!("stage {} cannot run on executors: {e}", st.id)))?;
        }
        Ok(())
    }

    /// The session's execution settings, which its tasks run with.
    fn task_settings(&self) -> Vec<(String, String)> {
        let state = self.inner.df.state();
        state
            .config_options()
            .entries()
            .into_iter()
            .filter(|e| e.key.starts_with("datafusion.execution."))
            .filter_map(|e| Some((e.key, e.value?)))
            .collect()
    }

    /// The partition count queries are planned for.
    fn target_partitions(&self) -> usize {
        self.inner.df.state().config().target_partitions()
    }

    /// Runs a physical plan as stages on Ember and returns its batches: scalar subqueries
    /// first, then the plan with their values.
    fn run(&self, plan: Arc<dyn ExecutionPlan>) -> Result<Vec<RecordBatch>> {
        let root = self.rdd_of(plan)?;
        Ok(root.collect()?.into_iter().map(|(_, b)| b.0).collect())
    }

    /// The RDD of a physical plan's result: scalar subqueries run (on Ember) and inlined,
    /// joins made safe for isolated tasks, stages cut.
    fn rdd_of(&self, plan: Arc<dyn ExecutionPlan>) -> Result<Rdd<(u32, Batch)>> {
        Ok(self.planned(plan, None)?.0)
    }

    /// The RDD of a physical plan's result with the stages it was cut into and the RDD of each,
    /// its tasks adding their metrics to `metrics` when given.
    fn planned(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        metrics: Option<Accumulator<PlanMetricsSum>>,
    ) -> Result<(Rdd<(u32, Batch)>, Vec<StagePlan>, Vec<ember_core::storage::RddId>)> {
        let plan = inline_scalar_subqueries(plan, &|p| self.run(p))?;
        let plan = DistributedJoinRule::apply(plan, self.target_partitions())?;
        let before = self.adaptive().enabled.then(|| cut_stages(plan.clone()).map(|s| display_stages(&s)));
        let options = self.inner.df.state().config_options().clone();
        let (plan, decisions) = adapt(plan, self.adaptive(), &options, &|exchange| self.run_exchange(exchange))?;
        let stages = cut_stages(plan)?;
        let plans = if decisions.is_empty() {
            None
        } else {
            let before = before.transpose()?.unwrap_or_default();
            Some(AdaptivePlans { before, after: display_stages(&stages), decisions })
        };
        *self.inner.last_plans.lock().unwrap_or_else(|p| p.into_inner()) = plans;
        self.check_shippable(&stages)?;
        let (root, _, ids) = build_rdds(&self.inner.ctx, &stages, metrics, self.task_settings())?;
        Ok((root, stages, ids))
    }
}

/// A table name as SQL names it: folded to lower case unless quoted.
fn table_name(word: &str) -> String {
    match word.strip_prefix('"').and_then(|w| w.strip_suffix('"')) {
        Some(quoted) => quoted.to_string(),
        None => word.to_ascii_lowercase(),
    }
}

/// The RDDs of a cut plan: one stage RDD per stage, joined by shuffle dependencies, its tasks
/// running with `settings` and adding their operators' metrics to `metrics` when given. Returns
/// the result stage's RDD, each map stage's shuffle and each stage's RDD id.
fn build_rdds(
    ctx: &Context,
    stages: &[StagePlan],
    metrics: Option<Accumulator<PlanMetricsSum>>,
    settings: Vec<(String, String)>,
) -> Result<(Rdd<(u32, Batch)>, Vec<Option<Arc<ExchangeDep>>>, Vec<ember_core::storage::RddId>)> {
    let mut ids = Vec::with_capacity(stages.len());
    let mut deps: Vec<Option<Arc<ExchangeDep>>> = vec![None; stages.len()];
    let mut root = None;
    for st in stages {
        let inputs = st
            .inputs
            .iter()
            .map(|i| match i {
                InputRef::Stage(i) => deps.get(*i).cloned().flatten(),
                InputRef::Done(dep) => Some(dep.clone()),
            })
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| Error::Internal(format!("stage {} reads a stage not planned before it", st.id)))?;
        let rdd = Rdd::from_node(
            ctx,
            StageRdd {
                stage: st.id,
                plan: PlanShip::new(st.plan.clone()),
                output: st.output,
                partitions: st.partitions,
                inputs,
                cached: st.cached.clone(),
                metrics: metrics.clone(),
                settings: settings.clone(),
            },
        );
        ids.push(rdd.id());
        match st.output {
            StageOutput::Exchange(_) => {
                deps[st.id] =
                    Some(Arc::new(ShuffleDependency::plain(&rdd, IndexPartitioner::new(st.output_partitions))));
            }
            StageOutput::Result => root = Some(rdd),
        }
    }
    let root = root.ok_or_else(|| Error::Internal("a cut plan without a result stage".into()))?;
    Ok((root, deps, ids))
}

/// A lazy query: a DataFusion logical plan bound to a [`Session`]. Transformations return new
/// DataFrames; actions (`collect`, `count`, `show`) plan it, cut it into stages and run them on
/// Ember.
#[derive(Clone)]
pub struct DataFrame {
    session: Session,
    df: DfDataFrame,
}

impl DataFrame {
    /// Wraps a DataFusion DataFrame built on this session's DataFusion context.
    pub fn from_datafusion(session: &Session, df: DfDataFrame) -> DataFrame {
        DataFrame { session: session.clone(), df }
    }

    /// The DataFusion DataFrame behind this one.
    pub fn datafusion(&self) -> &DfDataFrame {
        &self.df
    }

    fn with(&self, df: datafusion::error::Result<DfDataFrame>) -> Result<DataFrame> {
        Ok(DataFrame { session: self.session.clone(), df: df? })
    }

    /// The output schema.
    pub fn arrow_schema(&self) -> SchemaRef {
        Arc::new(self.df.schema().as_arrow().clone())
    }

    /// Projects expressions.
    pub fn select(&self, exprs: Vec<Expr>) -> Result<DataFrame> {
        self.with(self.df.clone().select(exprs))
    }

    /// Projects columns by name.
    pub fn select_columns(&self, columns: &[&str]) -> Result<DataFrame> {
        self.with(self.df.clone().select_columns(columns))
    }

    /// Keeps rows where `predicate` is true.
    pub fn filter(&self, predicate: Expr) -> Result<DataFrame> {
        self.with(self.df.clone().filter(predicate))
    }

    /// Groups by `group` and computes `aggregates`.
    pub fn aggregate(&self, group: Vec<Expr>, aggregates: Vec<Expr>) -> Result<DataFrame> {
        self.with(self.df.clone().aggregate(group, aggregates))
    }

    /// Joins with `right` on equal columns.
    pub fn join(
        &self,
        right: &DataFrame,
        join_type: JoinType,
        left_cols: &[&str],
        right_cols: &[&str],
    ) -> Result<DataFrame> {
        self.with(self.df.clone().join(right.df.clone(), join_type, left_cols, right_cols, None))
    }

    /// Joins with `right` on arbitrary conditions.
    pub fn join_on(&self, right: &DataFrame, join_type: JoinType, on: Vec<Expr>) -> Result<DataFrame> {
        self.with(self.df.clone().join_on(right.df.clone(), join_type, on))
    }

    /// Sorts by `exprs`.
    pub fn sort(&self, exprs: Vec<SortExpr>) -> Result<DataFrame> {
        self.with(self.df.clone().sort(exprs))
    }

    /// Skips `skip` rows and keeps at most `fetch`.
    pub fn limit(&self, skip: usize, fetch: Option<usize>) -> Result<DataFrame> {
        self.with(self.df.clone().limit(skip, fetch))
    }

    /// Adds (or replaces) a column.
    pub fn with_column(&self, name: &str, expr: Expr) -> Result<DataFrame> {
        self.with(self.df.clone().with_column(name, expr))
    }

    /// Appends `other`'s rows (`UNION ALL`).
    pub fn union(&self, other: &DataFrame) -> Result<DataFrame> {
        self.with(self.df.clone().union(other.df.clone()))
    }

    /// Removes duplicate rows.
    pub fn distinct(&self) -> Result<DataFrame> {
        self.with(self.df.clone().distinct())
    }

    /// Adds window expressions as columns.
    pub fn window(&self, exprs: Vec<Expr>) -> Result<DataFrame> {
        self.with(self.df.clone().window(exprs))
    }

    /// The optimized physical plan DataFusion made (with Ember's corrections to the logical
    /// plan applied first: [`SetOperationRule`]).
    pub fn physical_plan(&self) -> Result<Arc<dyn ExecutionPlan>> {
        let logical = SetOperationRule::apply(self.df.logical_plan().clone())?;
        let state = self.session.inner.df.state();
        self.session.block_on(state.create_physical_plan(&logical))?.map_err(Error::from)
    }

    /// The stages this query runs as, with their exchanges. (Scalar subqueries, which run
    /// first, are not shown.)
    pub fn stages(&self) -> Result<Vec<StagePlan>> {
        cut_stages(DistributedJoinRule::apply(self.physical_plan()?, self.session.target_partitions())?)
    }

    /// `EXPLAIN`: the stages and their plans, as text.
    pub fn explain_stages(&self) -> Result<String> {
        Ok(display_stages(&self.stages()?))
    }

    /// Runs the query and keeps its result in Ember's block manager (memory, spilling to disk),
    /// with per-partition statistics: the DataFrame returned reads the cache, skipping the
    /// partitions a filter cannot match.
    pub fn cache(&self) -> Result<DataFrame> {
        let table = self.session.cache_dataframe(self)?;
        self.with(self.session.inner.df.read_table(table))
    }

    /// Runs the query and returns its batches.
    pub fn collect(&self) -> Result<Vec<RecordBatch>> {
        let plan = self.physical_plan()?;
        self.session.run(plan)
    }

    /// Runs the query and counts its rows.
    pub fn count(&self) -> Result<usize> {
        let counted =
            self.with(self.df.clone().aggregate(vec![], vec![datafusion::functions_aggregate::count::count_all()]))?;
        let batches = counted.collect()?;
        let n = batches
            .first()
            .and_then(|b| b.column(0).as_any().downcast_ref::<datafusion::arrow::array::Int64Array>())
            .map(|a| a.value(0))
            .ok_or_else(|| Error::Internal("count(*) returned no value".into()))?;
        Ok(n as usize)
    }

    /// The query's result as a text table.
    pub fn to_table_string(&self) -> Result<String> {
        let batches = self.collect()?;
        Ok(pretty_format_batches(&batches).map_err(datafusion::error::DataFusionError::from)?.to_string())
    }

    /// Prints the query's result as a table on standard output.
    pub fn show(&self) -> Result<()> {
        println!("{}", self.to_table_string()?);
        Ok(())
    }
}
