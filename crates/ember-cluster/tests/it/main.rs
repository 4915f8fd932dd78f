//! The cluster runtime's integration tests. Executors are this very test binary started again
//! in executor mode, so `main` calls the executor entry first and then runs the tests itself
//! (the standard harness would run every test in each executor instead).

mod certs;
mod harness;
mod local_cluster;
mod tls;

/// The named test functions, as `(name, fn)` pairs.
macro_rules! tests {
    ($($module:ident :: $test:ident),* $(,)?) => {
        &[$((concat!(stringify!($module), "::", stringify!($test)), $module::$test as fn())),*]
    };
}

fn main() {
    ember_cluster::entry();
    // The program's own code, which an executor must never reach (see
    // `driver_code_before_the_context_runs_once`).
    if let Some(path) = std::env::var_os(local_cluster::MARKER) {
        local_cluster::mark(std::path::Path::new(&path));
    }
    if let Some(path) = std::env::var_os(local_cluster::SLEEPING_DRIVER) {
        local_cluster::sleeping_driver(std::path::Path::new(&path));
    }
    harness::run(tests![
        local_cluster::narrow_jobs_run_in_executor_processes,
        local_cluster::driver_code_before_the_context_runs_once,
        local_cluster::task_errors_keep_their_class_across_processes,
        local_cluster::accumulators_count_once_across_processes,
        local_cluster::an_executor_with_a_wrong_secret_is_refused,
        local_cluster::an_executor_of_another_binary_is_refused,
        local_cluster::a_killed_executor_fails_its_tasks_over,
        local_cluster::executors_exit_when_the_context_stops,
        local_cluster::executors_die_with_a_killed_driver,
        local_cluster::shuffles_run_across_executor_processes,
        local_cluster::broadcasts_reach_executor_processes,
        local_cluster::a_killed_executor_mid_shuffle_recomputes_only_its_outputs,
        local_cluster::a_job_fails_when_no_executor_is_left,
        local_cluster::a_silent_executor_is_lost_after_the_network_timeout,
        local_cluster::executors_delete_the_outputs_of_a_removed_shuffle,
        local_cluster::tasks_run_where_their_cached_input_is,
        local_cluster::a_cut_node_cached_nowhere_is_computed_from_the_drivers_lineage,
        local_cluster::a_group_of_jobs_is_prescheduled_across_executors,
        local_cluster::a_prescheduled_group_survives_a_lost_executor,
        local_cluster::a_lost_chain_of_cached_partitions_is_recomputed,
        local_cluster::a_straggler_is_overtaken_by_its_speculative_copy,
        local_cluster::an_executor_that_keeps_failing_tasks_is_excluded,
        local_cluster::damaged_shuffle_files_on_executors_are_recomputed,
        local_cluster::a_replicated_partition_survives_the_loss_of_an_executor,
        local_cluster::a_task_away_from_its_cached_input_reads_it_from_a_holder,
        tls::a_cluster_runs_over_tls_on_both_planes,
        tls::bad_tls_files_are_reported_by_name,
        tls::a_self_signed_certificate_is_trusted_by_default,
    ]);
}
