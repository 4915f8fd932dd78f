//! `ember tpch`: generates TPC-H data as Parquet and runs the 22 queries, timing each.

use std::process::ExitCode;
use std::time::Instant;

use ember_sql::{tpch, Session};

use crate::args::{Args, CliError, Result};

/// `ember tpch generate --scale S --out DIR [--files N]`.
pub fn generate(args: Args) -> Result<ExitCode> {
    let scale: f64 = args
        .value("--scale")
        .unwrap_or("1")
        .parse()
        .ok()
        .filter(|s: &f64| *s > 0.0 && s.is_finite())
        .ok_or_else(|| CliError::Usage("--scale: expected a positive number".into()))?;
    let out = args.value("--out").ok_or_else(|| CliError::Usage("--out DIR is required".into()))?;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let files = positive(&args, "--files")?.unwrap_or_else(|| (scale.ceil() as usize).clamp(1, 64).max(threads));
    let started = Instant::now();
    let generated = tpch::generate(std::path::Path::new(out), scale, files, threads).map_err(CliError::Sql)?;
    for (table, rows) in &generated.tables {
        eprintln!("{table}: {rows} rows");
    }
    eprintln!("{} bytes of Parquet in {out} in {:.1} s", generated.bytes, started.elapsed().as_secs_f64());
    Ok(ExitCode::SUCCESS)
}

/// A flag's value as a positive whole number, if given.
fn positive(args: &Args, flag: &str) -> Result<Option<usize>> {
    args.value(flag)
        .map(|v| {
            v.parse::<usize>()
                .ok()
                .filter(|&n| n > 0)
                .ok_or_else(|| CliError::Usage(format!("{flag}: expected a positive number")))
        })
        .transpose()
}

/// The queries of `--queries`: `1,3,5-7` (default all 22).
fn parse_queries(spec: Option<&str>) -> Result<Vec<usize>> {
    let Some(spec) = spec else { return Ok((1..=22).collect()) };
    let bad = || CliError::Usage(format!("--queries {spec}: expected numbers from 1 to 22 like 1,3,5-7"));
    let mut out = Vec::new();
    for part in spec.split(',') {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        let (a, b): (usize, usize) = (a.trim().parse().map_err(|_| bad())?, b.trim().parse().map_err(|_| bad())?);
        if a < 1 || b > 22 || a > b {
            return Err(bad());
        }
        out.extend(a..=b);
    }
    Ok(out)
}

/// `ember tpch run --data DIR [--master M] [--queries 1,3-5] [--iterations N]`: prints
/// `query,iteration,seconds,rows` lines (CSV with a header) on standard output.
pub fn run(args: Args) -> Result<ExitCode> {
    let data = args.value("--data").ok_or_else(|| CliError::Usage("--data DIR is required".into()))?;
    let queries = parse_queries(args.value("--queries"))?;
    let iterations = positive(&args, "--iterations")?.unwrap_or(1);
    let ctx = crate::sql::context(&args)?;
    let session = Session::new(&ctx);
    tpch::register(&session, std::path::Path::new(data)).map_err(CliError::Sql)?;
    println!("query,iteration,seconds,rows");
    for q in queries {
        let text = tpch::query(q).map_err(CliError::Sql)?;
        for i in 0..iterations {
            let started = Instant::now();
            let batches = session.sql(text).and_then(|df| df.collect()).map_err(CliError::Sql)?;
            let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
            println!("{q},{i},{:.6},{rows}", started.elapsed().as_secs_f64());
        }
    }
    ctx.stop();
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_lists_parse_and_bad_ones_are_refused() {
        assert_eq!(parse_queries(Some("1,3,5-7")).unwrap(), vec![1, 3, 5, 6, 7]);
        assert_eq!(parse_queries(None).unwrap().len(), 22);
        for bad in ["0", "23", "5-3", "x", "1,,2"] {
            assert!(parse_queries(Some(bad)).is_err(), "{bad}");
        }
    }
}
