//! Cached tables: results kept in Ember's block manager, and partitions skipped by their
//! statistics.

use std::sync::Arc;

use ember_sql::cache::CachedScanExec;
use ember_sql::datafusion::arrow::array::{Int64Array, RecordBatch, StringArray};
use ember_sql::datafusion::arrow::datatypes::{DataType, Field, Schema};
use ember_sql::datafusion::parquet::arrow::ArrowWriter;
use ember_sql::datafusion::physical_plan::ExecutionPlan;
use ember_sql::Session;

use crate::support::{context, rows};

/// Eight Parquet files; file i holds v from 1000 i to 1000 i + 999.
fn ranges(dir: &std::path::Path) -> String {
    let schema =
        Arc::new(Schema::new(vec![Field::new("v", DataType::Int64, false), Field::new("s", DataType::Utf8, true)]));
    for i in 0..8i64 {
        let v: Vec<i64> = (i * 1000..i * 1000 + 1000).collect();
        let s: Vec<Option<String>> = v.iter().map(|x| (x % 10 != 0).then(|| format!("s{x}"))).collect();
        let batch =
            RecordBatch::try_new(schema.clone(), vec![Arc::new(Int64Array::from(v)), Arc::new(StringArray::from(s))])
                .unwrap();
        let file = std::fs::File::create(dir.join(format!("part-{i}.parquet"))).unwrap();
        let mut w = ArrowWriter::try_new(file, schema.clone(), None).unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
    }
    format!("{}/", dir.display())
}

/// The cached scans of a plan.
fn cached_scans(plan: &Arc<dyn ExecutionPlan>, out: &mut Vec<(Vec<usize>, usize)>) {
    if let Some(scan) = plan.downcast_ref::<CachedScanExec>() {
        out.push((scan.partitions().to_vec(), scan.skipped()));
    }
    for c in plan.children() {
        cached_scans(c, out);
    }
}

fn check(master: &str) {
    let dir = tempfile::tempdir().unwrap();
    let path = ranges(dir.path());
    let ctx = context(master, &[]);
    let session = Session::new(&ctx);
    // One partition per file.
    session.sql("SET datafusion.execution.target_partitions = 8").unwrap().collect().unwrap();
    session.register_parquet("t", &path).unwrap();
    let query = "SELECT count(*), sum(v), count(s) FROM t WHERE v >= 1500 AND v < 2600";
    let want = rows(&session.sql(query).unwrap().collect().unwrap());
    assert_eq!(want, vec!["1100 | 2254450 | 990"]);

    session.sql("cache table T").unwrap();
    let df = session.sql(query).unwrap();
    let mut scans = Vec::new();
    cached_scans(&df.physical_plan().unwrap(), &mut scans);
    assert_eq!(scans, vec![(vec![1, 2], 6)], "partitions 1 and 2 hold v in [1000, 3000)");
    assert_eq!(rows(&df.collect().unwrap()), want);
    // The scan's stage ran one task per partition read, not per partition cached.
    let summary = ctx.last_job_summary().unwrap();
    let scan = summary.stages.iter().find(|s| s.metrics.shuffle_bytes_read == 0).unwrap();
    assert_eq!(scan.tasks, 2, "{summary:?}");
    // A filter no partition can match reads none; one on another column reads all.
    let none = session.sql("SELECT count(*) FROM t WHERE v > 100000").unwrap();
    let mut scans = Vec::new();
    cached_scans(&none.physical_plan().unwrap(), &mut scans);
    assert_eq!(scans, vec![(vec![], 8)]);
    assert_eq!(rows(&none.collect().unwrap()), vec!["0"]);
    let all = session.sql("SELECT count(*) FROM t WHERE s IS NULL").unwrap();
    assert_eq!(rows(&all.collect().unwrap()), vec!["800"]);

    // A scalar subquery over the cached table.
    let above = "SELECT count(*) FROM t WHERE v > (SELECT avg(v) FROM t)";
    assert_eq!(rows(&session.sql(above).unwrap().collect().unwrap()), vec!["4000"]);

    session.sql("uncache table T").unwrap();
    let df = session.sql(query).unwrap();
    let mut scans = Vec::new();
    cached_scans(&df.physical_plan().unwrap(), &mut scans);
    assert!(scans.is_empty(), "uncached: the table is read from its files again");
    assert_eq!(rows(&df.collect().unwrap()), want);
    assert!(session.sql("UNCACHE TABLE t").is_err());
    session.sql("UNCACHE TABLE IF EXISTS t").unwrap();

    // A DataFrame cached directly, and a query cached under a name.
    let small = session.sql("SELECT v, s FROM t WHERE v % 2 = 0").unwrap().cache().unwrap();
    assert_eq!(
        rows(
            &small
                .aggregate(vec![], vec![ember_sql::datafusion::functions_aggregate::count::count_all()])
                .unwrap()
                .collect()
                .unwrap()
        ),
        vec!["4000"]
    );
    session.sql("CACHE TABLE evens AS SELECT v FROM t WHERE v % 2 = 0").unwrap();
    assert_eq!(
        rows(&session.sql("SELECT count(*), max(v) FROM evens WHERE v < 10").unwrap().collect().unwrap()),
        vec!["5 | 8"]
    );
    ctx.stop();
}

pub fn cached_partitions_are_skipped_by_statistics_on_local() {
    check("local[2]");
}

pub fn cached_partitions_are_skipped_by_statistics_on_local_cluster() {
    check("local-cluster[2,1,1024]");
}
