//! Helpers shared by the tests: contexts, TPC-H data made once per run, and results as rows.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ember_core::{Context, EmberConf};
use ember_sql::datafusion::arrow::array::RecordBatch;
use ember_sql::datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};

/// A context on `master` without a progress bar.
pub fn context(master: &str, settings: &[(&str, &str)]) -> Context {
    let mut conf = EmberConf::new().master(master).unwrap().set("ember.ui.showConsoleProgress", "false").unwrap();
    for (k, v) in settings {
        conf = conf.set(k, *v).unwrap();
    }
    Context::new(conf).unwrap()
}

/// TPC-H at scale 0.01, generated once per test run (three files per table, so scans have
/// several partitions).
pub fn tpch_dir() -> &'static Path {
    static DIR: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    let (_, path) = DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_path_buf();
        let generated = ember_sql::tpch::generate(&path, 0.01, 3, 2).unwrap();
        let lineitem = generated.tables.iter().find(|(t, _)| t == "lineitem").unwrap().1;
        assert!(lineitem > 50_000, "lineitem at scale 0.01 has about 60,000 rows, not {lineitem}");
        (dir, path)
    });
    path
}

/// Every row of `batches` as text, one string per row, in order.
pub fn rows(batches: &[RecordBatch]) -> Vec<String> {
    let options = FormatOptions::default().with_null("NULL");
    let mut out = Vec::new();
    for b in batches {
        let formatters: Vec<ArrayFormatter> =
            b.columns().iter().map(|c| ArrayFormatter::try_new(c.as_ref(), &options).unwrap()).collect();
        for r in 0..b.num_rows() {
            let row: Vec<String> = formatters.iter().map(|f| f.value(r).to_string()).collect();
            out.push(row.join(" | "));
        }
    }
    out
}
