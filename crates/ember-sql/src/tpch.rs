//! The TPC-H kit: generates the eight tables as Parquet at a scale factor (with the `tpchgen`
//! crates), registers them, and carries the 22 queries (`benchmarks/tpch/queries`).

use std::fs::File;
use std::path::{Path, PathBuf};

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::error::ArrowError;
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::basic::Compression;
use datafusion::parquet::file::properties::WriterProperties;

use crate::error::{Error, Result};
use crate::session::Session;

/// The eight TPC-H tables.
pub const TABLES: [&str; 8] = ["nation", "region", "part", "supplier", "partsupp", "customer", "orders", "lineitem"];

/// Rows per Parquet row group: scans split files by row group into tasks.
const ROW_GROUP_ROWS: usize = 256 * 1024;

/// The 22 queries, `QUERIES[i]` being query `i + 1`.
pub const QUERIES: [&str; 22] = [
    include_str!("../../../benchmarks/tpch/queries/q1.sql"),
    include_str!("../../../benchmarks/tpch/queries/q2.sql"),
    include_str!("../../../benchmarks/tpch/queries/q3.sql"),
    include_str!("../../../benchmarks/tpch/queries/q4.sql"),
    include_str!("../../../benchmarks/tpch/queries/q5.sql"),
    include_str!("../../../benchmarks/tpch/queries/q6.sql"),
    include_str!("../../../benchmarks/tpch/queries/q7.sql"),
    include_str!("../../../benchmarks/tpch/queries/q8.sql"),
    include_str!("../../../benchmarks/tpch/queries/q9.sql"),
    include_str!("../../../benchmarks/tpch/queries/q10.sql"),
    include_str!("../../../benchmarks/tpch/queries/q11.sql"),
    include_str!("../../../benchmarks/tpch/queries/q12.sql"),
    include_str!("../../../benchmarks/tpch/queries/q13.sql"),
    include_str!("../../../benchmarks/tpch/queries/q14.sql"),
    include_str!("../../../benchmarks/tpch/queries/q15.sql"),
    include_str!("../../../benchmarks/tpch/queries/q16.sql"),
    include_str!("../../../benchmarks/tpch/queries/q17.sql"),
    include_str!("../../../benchmarks/tpch/queries/q18.sql"),
    include_str!("../../../benchmarks/tpch/queries/q19.sql"),
    include_str!("../../../benchmarks/tpch/queries/q20.sql"),
    include_str!("../../../benchmarks/tpch/queries/q21.sql"),
    include_str!("../../../benchmarks/tpch/queries/q22.sql"),
];

/// Query `n` (1 to 22).
pub fn query(n: usize) -> Result<&'static str> {
    n.checked_sub(1)
        .and_then(|i| QUERIES.get(i))
        .copied()
        .ok_or_else(|| Error::Plan(format!("TPC-H has queries 1 to 22, not {n}")))
}

/// What [`generate`] wrote.
#[derive(Debug, Clone)]
pub struct Generated {
    /// Each table with its rows.
    pub tables: Vec<(String, u64)>,
    /// Bytes written.
    pub bytes: u64,
}

/// Generates the tables at `scale` (1.0 is about 1 GB of raw data) under `dir`, one directory
/// per table holding `files` Parquet files (nation and region: one), Snappy-compressed.
/// Generation runs on `threads` threads. Existing table directories are replaced.
pub fn generate(dir: &Path, scale: f64, files: usize, threads: usize) -> Result<Generated> {
    if !(scale > 0.0 && scale.is_finite()) {
        return Err(Error::Plan(format!("the scale factor must be a positive number, not {scale}")));
    }
    let files = files.max(1);
    let mut jobs: Vec<(&'static str, usize, usize)> = Vec::new();
    for table in TABLES {
        let parts = if matches!(table, "nation" | "region") { 1 } else { files };
        let dir_t = dir.join(table);
        if dir_t.exists() {
            std::fs::remove_dir_all(&dir_t).map_err(|e| Error::io(&dir_t, e))?;
        }
        std::fs::create_dir_all(&dir_t).map_err(|e| Error::io(&dir_t, e))?;
        for part in 1..=parts {
            jobs.push((table, part, parts));
        }
    }
    // Largest tables first, so the threads finish together.
    jobs.sort_by_key(|(t, _, _)| TABLES.iter().position(|x| x == t).map(std::cmp::Reverse));
    let jobs = std::sync::Mutex::new(jobs.into_iter());
    let results = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..threads.max(1) {
            s.spawn(|| loop {
                let next = jobs.lock().unwrap_or_else(|p| p.into_inner()).next();
                let Some((table, part, parts)) = next else { break };
                let path = dir.join(table).join(format!("part-{part:05}.parquet"));
                let r = write_part(table, scale, part, parts, &path).map(|rows| (table, rows, path));
                results.lock().unwrap_or_else(|p| p.into_inner()).push(r);
            });
        }
    });
    let mut tables: Vec<(String, u64)> = TABLES.iter().map(|t| (t.to_string(), 0)).collect();
    let mut bytes = 0;
    for r in results.into_inner().unwrap_or_else(|p| p.into_inner()) {
        let (table, rows, path) = r?;
        if let Some(t) = tables.iter_mut().find(|(n, _)| n == table) {
            t.1 += rows;
        }
        // An empty part (a tiny scale split many ways) has no file.
        if rows > 0 {
            bytes += std::fs::metadata(&path).map_err(|e| Error::io(&path, e))?.len();
        }
    }
    Ok(Generated { tables, bytes })
}

/// Writes part `part` of `parts` of `table` to `path`; returns its rows.
fn write_part(table: &str, scale: f64, part: usize, parts: usize, path: &PathBuf) -> Result<u64> {
    use tpchgen::generators::*;
    use tpchgen_arrow::*;
    let (p, n) = (part as i32, parts as i32);
    let batches: Box<dyn Iterator<Item = std::result::Result<RecordBatch, ArrowError>>> = match table {
        "nation" => Box::new(NationArrow::new(NationGenerator::new(scale, p, n))),
        "region" => Box::new(RegionArrow::new(RegionGenerator::new(scale, p, n))),
        "part" => Box::new(PartArrow::new(PartGenerator::new(scale, p, n))),
        "supplier" => Box::new(SupplierArrow::new(SupplierGenerator::new(scale, p, n))),
        "partsupp" => Box::new(PartSuppArrow::new(PartSuppGenerator::new(scale, p, n))),
        "customer" => Box::new(CustomerArrow::new(CustomerGenerator::new(scale, p, n))),
        "orders" => Box::new(OrderArrow::new(OrderGenerator::new(scale, p, n))),
        "lineitem" => Box::new(LineItemArrow::new(LineItemGenerator::new(scale, p, n))),
        other => return Err(Error::Plan(format!("no TPC-H table named {other}"))),
    };
    let mut batches = batches.peekable();
    let schema = match batches.peek() {
        Some(Ok(b)) => b.schema(),
        Some(Err(_)) | None => match batches.next() {
            Some(Err(e)) => return Err(Error::DataFusion(e.into())),
            _ => {
                // An empty part (a tiny scale split many ways): write nothing.
                return Ok(0);
            }
        },
    };
    let tmp = path.with_extension("parquet.tmp");
    let file = File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        .build();
    let mut writer = ArrowWriter::try_new(file, schema, Some(props)).map_err(|e| Error::DataFusion(e.into()))?;
    let mut rows = 0u64;
    for b in batches {
        let b = b.map_err(|e| Error::DataFusion(e.into()))?;
        rows += b.num_rows() as u64;
        writer.write(&b).map_err(|e| Error::DataFusion(e.into()))?;
    }
    writer.close().map_err(|e| Error::DataFusion(e.into()))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))?;
    Ok(rows)
}

/// Registers the tables generated under `dir` in `session`.
pub fn register(session: &Session, dir: &Path) -> Result<()> {
    for table in TABLES {
        let path = dir.join(table);
        let path = path.to_str().ok_or_else(|| Error::Plan(format!("{} is not UTF-8", path.display())))?;
        session.register_parquet(table, &format!("{path}/"))?;
    }
    Ok(())
}
