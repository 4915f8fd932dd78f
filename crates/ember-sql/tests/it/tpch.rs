//! The 22 TPC-H queries on Ember give DataFusion's single-node answers.

use ember_sql::datafusion::prelude::{ParquetReadOptions, SessionConfig, SessionContext};
use ember_sql::{tpch, Session};

use crate::support::{context, rows, tpch_dir};

/// DataFusion's own answers, single-node with two partitions.
fn reference() -> Vec<Vec<String>> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).build().unwrap();
    let ctx = SessionContext::new_with_config(SessionConfig::new().with_target_partitions(2));
    rt.block_on(async {
        for t in tpch::TABLES {
            let path = format!("{}/", tpch_dir().join(t).display());
            ctx.register_parquet(t, &path, ParquetReadOptions::default()).await.unwrap();
        }
        let mut out = Vec::new();
        for q in tpch::QUERIES {
            let batches = ctx.sql(q).await.unwrap().collect().await.unwrap();
            out.push(rows(&batches));
        }
        out
    })
}

fn check_all(master: &str) {
    check_with(master, &[]);
}

fn check_with(master: &str, settings: &[&str]) {
    let want = reference();
    let ctx = context(master, &[]);
    let session = Session::new(&ctx);
    for s in settings {
        session.sql(s).unwrap().collect().unwrap();
    }
    tpch::register(&session, tpch_dir()).unwrap();
    let mut nonempty = 0;
    let mut wrong = Vec::new();
    let mut adapted = 0;
    for (i, q) in tpch::QUERIES.iter().enumerate() {
        match session.sql(q).and_then(|df| df.collect()) {
            Ok(batches) => {
                adapted += usize::from(session.last_adaptive_plans().is_some());
                let got = rows(&batches);
                if got != want[i] {
                    wrong.push(format!(
                        "q{}: got {:?}\n  want {:?}",
                        i + 1,
                        &got[..got.len().min(3)],
                        &want[i][..want[i].len().min(3)]
                    ));
                }
                nonempty += usize::from(!got.is_empty());
            }
            Err(e) => wrong.push(format!("q{} failed: {e}", i + 1)),
        }
    }
    assert!(wrong.is_empty(), "on {master}, answers differ from DataFusion's:\n{}", wrong.join("\n"));
    // At this scale a few queries select nothing; most must have answers to compare.
    assert!(nonempty >= 18, "only {nonempty} queries returned rows");
    if !settings.is_empty() {
        assert!(adapted >= 10, "adaptive execution re-planned only {adapted} queries");
    }
    ctx.stop();
}

pub fn answers_match_datafusion_on_local() {
    check_all("local[2]");
}

pub fn answers_match_datafusion_on_local_cluster() {
    check_all("local-cluster[2,1,2048]");
}

/// Every join planned as a shuffle join: adaptive execution turns the ones with small build
/// sides into broadcast joins, and re-plans what was above them.
pub fn answers_match_datafusion_with_adaptive_joins() {
    check_with(
        "local[2]",
        &[
            "SET datafusion.optimizer.hash_join_single_partition_threshold = 0",
            "SET datafusion.optimizer.hash_join_single_partition_threshold_rows = 0",
        ],
    );
}

pub fn queries_are_cut_at_exchanges() {
    let ctx = context("local[2]", &[]);
    let session = Session::new(&ctx);
    tpch::register(&session, tpch_dir()).unwrap();
    // Q3 joins three tables and aggregates: several shuffle stages below a result stage that
    // merges sorted partitions.
    if std::env::var_os("EMBER_PRINT_STAGES").is_some() {
        for q in 1..=22 {
            println!("== q{q}\n{}", session.sql(tpch::query(q).unwrap()).unwrap().explain_stages().unwrap());
        }
    }
    let stages = session.sql(tpch::query(3).unwrap()).unwrap().stages().unwrap();
    assert!(stages.len() >= 4, "q3 runs as several stages: {stages:#?}");
    assert!(stages.last().unwrap().exchange().is_none(), "the last stage returns the result");
    let text = session.sql(tpch::query(3).unwrap()).unwrap().explain_stages().unwrap();
    assert!(text.contains("ShuffleReaderExec"), "{text}");
    assert!(!text.contains("RepartitionExec: partitioning=Hash") || text.contains("exchange: hash"), "{text}");

    // EXPLAIN shows the stages; EXPLAIN ANALYZE runs the query and shows each operator's
    // metrics and each stage's shuffle bytes.
    let explained = rows(&session.sql(&format!("EXPLAIN {}", tpch::query(3).unwrap())).unwrap().collect().unwrap());
    assert!(explained[0].starts_with("stages | Stage 0"), "{explained:?}");
    let analyzed =
        rows(&session.sql(&format!("EXPLAIN ANALYZE {}", tpch::query(3).unwrap())).unwrap().collect().unwrap());
    let text = analyzed.join("\n");
    assert!(text.contains("10 rows in"), "{text}");
    for needle in
        ["Stage 0", "shuffle written", "output_rows=", "spill_count=", "elapsed_compute=", "ShuffleReaderExec"]
    {
        assert!(text.contains(needle), "{needle} in {text}");
    }
    let written: u64 =
        text.split("shuffle written ").skip(1).filter_map(|s| s.split(' ').next()?.parse::<u64>().ok()).sum();
    assert!(written > 0, "{text}");
    ctx.stop();
}
