//! Ember SQL's integration tests. Executors of `local-cluster` masters are this very binary
//! started again in executor mode, so `main` calls the executor entry first and then runs the
//! tests itself.

mod adaptive;
mod cache;
mod features;
#[path = "../../../ember-cluster/tests/it/harness.rs"]
mod harness;
mod recovery;
mod slt;
mod support;
mod tpch;

/// The named test functions, as `(name, fn)` pairs.
macro_rules! tests {
    ($($module:ident :: $test:ident),* $(,)?) => {
        &[$((concat!(stringify!($module), "::", stringify!($test)), $module::$test as fn())),*]
    };
}

fn main() {
    ember_cluster::entry();
    harness::run(tests![
        tpch::answers_match_datafusion_on_local,
        tpch::answers_match_datafusion_on_local_cluster,
        tpch::answers_match_datafusion_with_adaptive_joins,
        tpch::queries_are_cut_at_exchanges,
        features::recursive_queries_run_in_one_task,
        features::session_settings_reach_the_tasks,
        features::dataframe_operations_run_on_ember,
        slt::slt_files_pass_on_local,
        slt::slt_files_pass_on_local_cluster,
        recovery::a_query_survives_a_killed_executor,
        cache::cached_partitions_are_skipped_by_statistics_on_local,
        cache::cached_partitions_are_skipped_by_statistics_on_local_cluster,
        adaptive::a_small_build_side_becomes_a_broadcast_join_on_local,
        adaptive::a_small_build_side_becomes_a_broadcast_join_on_local_cluster,
    ]);
}
