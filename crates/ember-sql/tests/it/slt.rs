//! sqllogictest: the `.slt` files under `tests/slt` run on Ember, on `local[2]` and on
//! `local-cluster[2,1,1024]`.

use std::path::PathBuf;

use ember_sql::datafusion::arrow::array::{Array, RecordBatch};
use ember_sql::datafusion::arrow::datatypes::DataType;
use ember_sql::datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use ember_sql::Session;
use sqllogictest::{DBOutput, DefaultColumnType};

use crate::support::context;

/// A sqllogictest database: statements run through an Ember SQL session.
struct EmberDb {
    session: Session,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct SltError(String);

fn column_type(t: &DataType) -> DefaultColumnType {
    match t {
        DataType::Int8
        | DataType::Int16
        | DataType::Int32
        | DataType::Int64
        | DataType::UInt8
        | DataType::UInt16
        | DataType::UInt32
        | DataType::UInt64 => DefaultColumnType::Integer,
        DataType::Float16
        | DataType::Float32
        | DataType::Float64
        | DataType::Decimal32(..)
        | DataType::Decimal64(..)
        | DataType::Decimal128(..)
        | DataType::Decimal256(..) => DefaultColumnType::FloatingPoint,
        _ => DefaultColumnType::Text,
    }
}

/// A value as the `.slt` files write it: `NULL`, `(empty)` for an empty string, floats with at
/// most 12 decimals and no trailing zeros.
fn cell(array: &dyn Array, formatter: &ArrayFormatter, row: usize) -> String {
    if array.is_null(row) {
        return "NULL".into();
    }
    let text = formatter.value(row).to_string();
    match array.data_type() {
        DataType::Float16 | DataType::Float32 | DataType::Float64 => match text.parse::<f64>() {
            Ok(v) if v.is_finite() => {
                let s = format!("{v:.12}");
                let s = s.trim_end_matches('0').trim_end_matches('.');
                if s == "-0" {
                    "0".into()
                } else {
                    s.to_string()
                }
            }
            _ => text,
        },
        _ if text.is_empty() => "(empty)".into(),
        _ => text,
    }
}

fn to_rows(batches: &[RecordBatch]) -> Vec<Vec<String>> {
    let options = FormatOptions::default();
    let mut rows = Vec::new();
    for b in batches {
        let formatters: Vec<ArrayFormatter> =
            b.columns().iter().map(|c| ArrayFormatter::try_new(c.as_ref(), &options).unwrap()).collect();
        for r in 0..b.num_rows() {
            rows.push(b.columns().iter().zip(&formatters).map(|(c, f)| cell(c.as_ref(), f, r)).collect());
        }
    }
    rows
}

impl sqllogictest::DB for EmberDb {
    type Error = SltError;
    type ColumnType = DefaultColumnType;

    fn run(&mut self, sql: &str) -> Result<DBOutput<DefaultColumnType>, SltError> {
        let df = self.session.sql(sql).map_err(|e| SltError(e.to_string()))?;
        let schema = df.arrow_schema();
        let batches = df.collect().map_err(|e| SltError(e.to_string()))?;
        if schema.fields().is_empty() {
            return Ok(DBOutput::StatementComplete(0));
        }
        Ok(DBOutput::Rows {
            types: schema.fields().iter().map(|f| column_type(f.data_type())).collect(),
            rows: to_rows(&batches),
        })
    }
}

fn slt_files() -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/slt");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "slt"))
        .collect();
    files.sort();
    assert!(files.len() >= 8, "the .slt files are there: {files:?}");
    files
}

fn run_all(master: &str) {
    let ctx = context(master, &[]);
    let mut failures = Vec::new();
    for file in slt_files() {
        // Each file gets a fresh session: its tables are its own.
        let session = Session::new(&ctx);
        let mut runner = sqllogictest::Runner::new(move || {
            let session = session.clone();
            async move { Ok(EmberDb { session }) }
        });
        runner.with_column_validator(sqllogictest::strict_column_validator);
        if let Err(e) = runner.run_file(&file) {
            failures.push(format!("{}: {e}", file.display()));
        }
    }
    ctx.stop();
    assert!(failures.is_empty(), "sqllogictest failures on {master}:\n{}", failures.join("\n"));
}

pub fn slt_files_pass_on_local() {
    run_all("local[2]");
}

pub fn slt_files_pass_on_local_cluster() {
    run_all("local-cluster[2,1,1024]");
}
