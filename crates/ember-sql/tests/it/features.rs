//! SQL features beyond the TPC-H queries: recursive queries, task settings, DataFrames.

use ember_sql::datafusion::prelude::{col, lit};
use ember_sql::Session;

use crate::support::{context, rows};

const RECURSIVE: &str = "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 100) \
                         SELECT count(*), sum(n) FROM r";

pub fn recursive_queries_run_in_one_task() {
    let ctx = context("local[2]", &[]);
    let session = Session::new(&ctx);
    assert_eq!(rows(&session.sql(RECURSIVE).unwrap().collect().unwrap()), vec!["100 | 5050"]);
    ctx.stop();
    // Executors cannot take a recursive query's operators: a clear error, not a wrong answer.
    let ctx = context("local-cluster[1,1,1024]", &[]);
    let session = Session::new(&ctx);
    let err = session.sql(RECURSIVE).unwrap().collect().unwrap_err().to_string();
    assert!(err.contains("RecursiveQueryExec"), "{err}");
    ctx.stop();
}

pub fn session_settings_reach_the_tasks() {
    let ctx = context("local-cluster[1,1,1024]", &[]);
    let session = Session::new(&ctx);
    // A batch size of 7: every batch a task produces has at most 7 rows.
    session.sql("SET datafusion.execution.batch_size = 7").unwrap().collect().unwrap();
    let batches = session.sql("SELECT value FROM generate_series(1, 100)").unwrap().collect().unwrap();
    assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 100);
    assert!(
        batches.iter().all(|b| b.num_rows() <= 7),
        "{:?}",
        batches.iter().map(|b| b.num_rows()).collect::<Vec<_>>()
    );
    ctx.stop();
}

pub fn dataframe_operations_run_on_ember() {
    let ctx = context("local[2]", &[]);
    let session = Session::new(&ctx);
    let nums = session.sql("SELECT value AS v, value % 3 AS g FROM generate_series(1, 30)").unwrap();
    let out = nums
        .filter(col("v").gt(lit(3)))
        .unwrap()
        .with_column("w", col("v") * lit(2))
        .unwrap()
        .aggregate(vec![col("g")], vec![ember_sql::datafusion::functions_aggregate::sum::sum(col("w")).alias("s")])
        .unwrap()
        .sort(vec![col("g").sort(true, false)])
        .unwrap();
    // v from 4 to 30 by residue: g=0: 6..30 step 3 (9 values, sum 162); g=1: 4..28 (9, 144);
    // g=2: 5..29 (9, 153); doubled.
    assert_eq!(rows(&out.collect().unwrap()), vec!["0 | 324", "1 | 288", "2 | 306"]);
    assert_eq!(nums.count().unwrap(), 30);
    let distinct = nums.select_columns(&["g"]).unwrap().distinct().unwrap();
    assert_eq!(distinct.count().unwrap(), 3);
    let both = nums.union(&nums).unwrap();
    assert_eq!(both.count().unwrap(), 60);
    let limited = nums.sort(vec![col("v").sort(false, false)]).unwrap().limit(0, Some(2)).unwrap();
    assert_eq!(rows(&limited.select_columns(&["v"]).unwrap().collect().unwrap()), vec!["30", "29"]);
    ctx.stop();
}
