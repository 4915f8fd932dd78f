//! `ember sql` and `ember tpch` end to end: scripts, output formats, errors, the shell.

use std::io::Write;
use std::process::{Command, Output, Stdio};

fn ember() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ember"));
    c.env_remove("RUST_LOG");
    c
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn run(args: &[&str]) -> Output {
    ember().args(args).output().unwrap()
}

/// A CSV file of three people, one with no city.
fn people(dir: &std::path::Path) -> String {
    let path = dir.join("people.csv");
    std::fs::write(&path, "name,age,city\nada,36,london\nalan,41,\ngrace,85,new york\n").unwrap();
    path.display().to_string()
}

#[test]
fn a_script_prints_only_query_results_as_csv() {
    let dir = tempfile::tempdir().unwrap();
    let csv = people(dir.path());
    let script = format!(
        "CREATE EXTERNAL TABLE people STORED AS CSV LOCATION '{csv}' OPTIONS ('format.has_header' 'true');\n\
         -- a comment; with a semicolon\n\
         SELECT name, city, 'a;b' AS s FROM people\n  WHERE age > 40 ORDER BY name;\n"
    );
    let path = dir.path().join("q.sql");
    std::fs::write(&path, script).unwrap();
    let out = run(&["sql", "-f", path.to_str().unwrap(), "--format", "csv"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // One header line, NULL as an empty field, nothing from the DDL.
    assert_eq!(text(&out.stdout), "name,city,s\nalan,,a;b\ngrace,new york,a;b\n");
}

#[test]
fn json_output_has_one_object_per_row() {
    let out = run(&["sql", "-e", "SELECT 1 AS a, 'x' AS b UNION ALL SELECT 2, NULL ORDER BY a", "--format", "json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "{\"a\":1,\"b\":\"x\"}\n{\"a\":2}\n");
}

#[test]
fn an_error_names_the_statement_and_position_and_fails_the_run() {
    let out = run(&["sql", "-e", "SELECT 1 AS ok;\nSELECT 2;\n  SELEC 3;\nSELECT 4 AS never", "--format", "csv"]);
    assert_eq!(out.status.code(), Some(1));
    // The statements before the error ran; none after it.
    assert_eq!(text(&out.stdout), "ok\n1\nInt64(2)\n2\n");
    let err = text(&out.stderr);
    assert!(err.contains("error in statement 3 at line 3, column 3: SELEC 3"), "{err}");
    assert!(err.contains("SELEC"), "{err}");
    let out = run(&["sql", "-e", "SELECT * FROM nowhere", "--format", "csv"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stdout).is_empty());
    assert!(text(&out.stderr).contains("nowhere"), "{}", text(&out.stderr));
}

#[test]
fn the_shell_reads_statements_over_lines_and_survives_errors() {
    let mut child = ember()
        .args(["sql", "--format", "csv"])
        .env("HOME", tempfile::tempdir().unwrap().path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"SELECT 'x;\ny' AS a\n -- ; not the end\n;\nSELECT nope;\nSELECT 7 AS b;\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "a\n\"x;\ny\"\nb\n7\n");
    assert!(text(&out.stderr).contains("nope"), "{}", text(&out.stderr));
}

#[test]
fn bad_options_are_usage_errors() {
    let out = run(&["sql", "--format", "xml", "-e", "SELECT 1"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("--format xml"), "{}", text(&out.stderr));
    let out = run(&["tpch", "run", "--data", "x", "--queries", "23"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn tpch_data_is_generated_and_queries_run_on_a_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("tpch");
    let out = run(&["tpch", "generate", "--scale", "0.01", "--out", data.to_str().unwrap(), "--files", "2"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(data.join("lineitem/part-00002.parquet").is_file());
    let out = run(&[
        "tpch",
        "run",
        "--data",
        data.to_str().unwrap(),
        "--queries",
        "1,6",
        "--master",
        "local-cluster[2,1,1024]",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let lines: Vec<String> = text(&out.stdout).lines().map(str::to_string).collect();
    assert_eq!(lines[0], "query,iteration,seconds,rows");
    assert!(lines[1].starts_with("1,0,") && lines[1].ends_with(",4"), "q1 has four groups: {lines:?}");
    assert!(lines[2].starts_with("6,0,") && lines[2].ends_with(",1"), "{lines:?}");
}
