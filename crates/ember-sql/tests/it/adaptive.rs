//! Adaptive execution: a shuffle join whose build side turns out small runs as a broadcast
//! join.

use ember_sql::adaptive::AdaptiveConf;
use ember_sql::Session;

use crate::support::{context, rows};

fn setup(session: &Session) {
    // Plan every join as a shuffle join, whatever the estimates: adaptive execution decides.
    for sql in [
        "SET datafusion.optimizer.hash_join_single_partition_threshold = 0",
        "SET datafusion.optimizer.hash_join_single_partition_threshold_rows = 0",
        "CREATE TABLE facts AS SELECT value AS k, value % 100 AS g FROM generate_series(1, 50000)",
        "CREATE TABLE dims AS SELECT value AS k, concat('d', CAST(value AS VARCHAR)) AS name FROM generate_series(1, 2000)",
    ] {
        session.sql(sql).unwrap().collect().unwrap();
    }
}

const QUERY: &str = "SELECT count(*), sum(f.g) FROM dims d JOIN facts f ON d.k = f.k WHERE d.name LIKE 'd1%'";

fn check(master: &str) {
    let ctx = context(master, &[]);
    let session = Session::new(&ctx);
    setup(&session);
    // Without adaptive execution: a shuffle join.
    session.set_adaptive(AdaptiveConf { enabled: false, ..AdaptiveConf::default() });
    let plain = session.sql(QUERY).unwrap();
    let text = plain.explain_stages().unwrap();
    assert!(text.contains("mode=Partitioned"), "{text}");
    let want = rows(&plain.collect().unwrap());
    // d1, d10-d19, d100-d199, d1000-d1999: 1111 keys.
    let g: u64 = [1u64].into_iter().chain(10..20).chain(100..200).chain(1000..2000).map(|k| k % 100).sum();
    assert_eq!(want, vec![format!("1111 | {g}")]);
    assert!(session.last_adaptive_plans().is_none());

    // With it: the build side is small, the join is broadcast and the probe side not shuffled.
    session.set_adaptive(AdaptiveConf::default());
    let got = rows(&session.sql(QUERY).unwrap().collect().unwrap());
    assert_eq!(got, want);
    let plans = session.last_adaptive_plans().expect("adaptive execution changed the plan");
    assert!(plans.before.contains("mode=Partitioned"), "{}", plans.before);
    assert!(plans.after.contains("mode=CollectLeft"), "{}", plans.after);
    assert!(plans.after.contains("broadcast: all"), "{}", plans.after);
    assert!(!plans.after.contains("mode=Partitioned"), "{}", plans.after);
    assert_eq!(plans.decisions.len(), 1);
    assert!(plans.decisions[0].starts_with("broadcast join"), "{:?}", plans.decisions);
    // The probe side (facts) is read by the join's stage directly: no stage shuffles it.
    let summary = ctx.last_job_summary().unwrap();
    let shuffled: u64 = summary.stages.iter().map(|s| s.metrics.shuffle_records_written).sum();
    assert!(shuffled < 20, "only small results were shuffled: {summary:?}");

    // A broadcast join's output is no longer partitioned on its keys: an aggregate on the key
    // above it must still see each key in one partition.
    let grouped = "SELECT d.k, count(*) AS n FROM dims d JOIN facts f ON d.k = f.g WHERE d.name LIKE 'd1%' GROUP BY d.k ORDER BY d.k";
    session.set_adaptive(AdaptiveConf { enabled: false, ..AdaptiveConf::default() });
    let want_grouped = rows(&session.sql(grouped).unwrap().collect().unwrap());
    // Keys 1 and 10..19 of g = v % 100, 500 rows each.
    assert_eq!(want_grouped.len(), 11);
    assert!(want_grouped.iter().all(|r| r.ends_with("| 500")), "{want_grouped:?}");
    session.set_adaptive(AdaptiveConf::default());
    assert_eq!(rows(&session.sql(grouped).unwrap().collect().unwrap()), want_grouped);
    assert!(session.last_adaptive_plans().unwrap().decisions[0].starts_with("broadcast join"));
    // A query without joins leaves no adaptive plans behind.
    session.sql("SELECT count(*) FROM facts").unwrap().collect().unwrap();
    assert!(session.last_adaptive_plans().is_none());

    // A build side over the threshold keeps the shuffle join (its written shuffle is reused).
    session.set_adaptive(AdaptiveConf { enabled: true, broadcast_threshold: 0 });
    assert_eq!(rows(&session.sql(QUERY).unwrap().collect().unwrap()), want);
    let plans = session.last_adaptive_plans().unwrap();
    assert!(plans.decisions[0].starts_with("shuffle join kept"), "{:?}", plans.decisions);
    assert!(plans.after.contains("mode=Partitioned") && plans.after.contains("(written)"), "{}", plans.after);
    ctx.stop();
}

pub fn a_small_build_side_becomes_a_broadcast_join_on_local() {
    check("local[2]");
}

pub fn a_small_build_side_becomes_a_broadcast_join_on_local_cluster() {
    check("local-cluster[2,1,1024]");
}
