//! `ember sql`: a SQL shell (a REPL), or the statements of `-e` / `-f` run in order.

use std::io::Write;
use std::process::ExitCode;

use ember_sql::datafusion::arrow::array::RecordBatch;
use ember_sql::datafusion::arrow::util::pretty::pretty_format_batches;
use ember_sql::script::{is_complete, split_statements, Statement};
use ember_sql::Session;

use crate::args::{Args, CliError, Result};

/// How query results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// An aligned text table.
    Table,
    /// CSV with one header line; NULL is an empty field.
    Csv,
    /// One JSON object per row and line.
    Json,
}

impl Format {
    fn parse(s: &str) -> Result<Format> {
        match s {
            "table" => Ok(Format::Table),
            "csv" => Ok(Format::Csv),
            "json" => Ok(Format::Json),
            other => Err(CliError::Usage(format!("--format {other}: expected table, csv or json"))),
        }
    }
}

/// The context `ember sql` runs on: `--master` (default `local[*]`) and the settings given.
pub fn context(args: &Args) -> Result<ember_core::Context> {
    let mut conf = args.conf()?;
    conf = conf.master(args.value("--master").unwrap_or("local[*]"))?;
    Ok(ember_core::Context::new(conf)?)
}

/// `ember sql [--master M] [-e SQL] [-f FILE] [--format table|csv|json]`.
pub fn run(args: Args) -> Result<ExitCode> {
    let format = Format::parse(args.value("--format").unwrap_or("table"))?;
    let script = match (args.value("-e"), args.value("-f")) {
        (Some(_), Some(_)) => return Err(CliError::Usage("give -e or -f, not both".into())),
        (Some(sql), None) => Some(sql.to_string()),
        (None, Some(path)) => Some(
            std::fs::read_to_string(path).map_err(|source| CliError::Io { what: format!("reading {path}"), source })?,
        ),
        (None, None) => None,
    };
    let ctx = context(&args)?;
    let session = Session::new(&ctx);
    let code = match script {
        Some(text) => run_script(&session, &text, format),
        None => repl(&session, format),
    };
    ctx.stop();
    code
}

/// Runs every statement of a script; stops at the first error (reported on standard error with
/// the statement and where in the script it failed) with a non-zero exit status.
fn run_script(session: &Session, text: &str, format: Format) -> Result<ExitCode> {
    for (i, stmt) in split_statements(text).iter().enumerate() {
        if let Err(e) = run_statement(session, stmt, format) {
            eprintln!("{}", describe_error(i + 1, stmt, &e));
            return Ok(ExitCode::from(1));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The error of statement `n` with its first line and, when the parser named one, the position
/// in the script.
fn describe_error(n: usize, stmt: &Statement, e: &ember_sql::Error) -> String {
    let first = stmt.text.lines().next().unwrap_or("");
    let more = if stmt.text.lines().nth(1).is_some() { " ..." } else { "" };
    let message = e.to_string();
    let position = match parser_position(&message) {
        Some((line, col)) => {
            // The parser counts from the statement's first character.
            let col = if line <= 1 { col + stmt.column - 1 } else { col };
            format!("line {}, column {col}", stmt.line + line.saturating_sub(1))
        }
        None => format!("line {}", stmt.line),
    };
    format!("error in statement {n} at {position}: {first}{more}\n  {message}")
}

/// `Line: L, Column: C` in a parser error message.
fn parser_position(message: &str) -> Option<(usize, usize)> {
    let rest = &message[message.find("Line: ")? + 6..];
    let (line, rest) = rest.split_once(", Column: ")?;
    let col: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    Some((line.trim().parse().ok()?, col.parse().ok()?))
}

fn run_statement(session: &Session, stmt: &Statement, format: Format) -> ember_sql::Result<()> {
    let df = session.sql(&stmt.text)?;
    let schema = df.arrow_schema();
    let batches = df.collect()?;
    if schema.fields().is_empty() {
        // DDL and other statements without results print nothing.
        return Ok(());
    }
    print_batches(&schema, &batches, format)
}

fn print_batches(
    schema: &ember_sql::datafusion::arrow::datatypes::SchemaRef,
    batches: &[RecordBatch],
    format: Format,
) -> ember_sql::Result<()> {
    // Formatted whole before anything is printed: a value the format cannot hold (a nested
    // type in CSV) fails the statement without half a result on standard output.
    let mut out: Vec<u8> = Vec::new();
    let io = |e: std::io::Error| ember_sql::Error::io("standard output", e);
    let arrow = |e: ember_sql::datafusion::arrow::error::ArrowError| ember_sql::Error::DataFusion(e.into());
    match format {
        Format::Table => {
            let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
            if batches.is_empty() {
                let empty = RecordBatch::new_empty(schema.clone());
                writeln!(out, "{}", pretty_format_batches(&[empty]).map_err(arrow)?).map_err(io)?;
            } else {
                writeln!(out, "{}", pretty_format_batches(batches).map_err(arrow)?).map_err(io)?;
            }
            writeln!(out, "{rows} row{}", if rows == 1 { "" } else { "s" }).map_err(io)?;
        }
        Format::Csv => {
            let mut w = arrow_csv::WriterBuilder::new().with_header(true).with_null(String::new()).build(&mut out);
            if batches.is_empty() {
                w.write(&RecordBatch::new_empty(schema.clone())).map_err(arrow)?;
            }
            for b in batches {
                w.write(b).map_err(arrow)?;
            }
        }
        Format::Json => {
            let mut w = arrow_json::LineDelimitedWriter::new(&mut out);
            for b in batches {
                w.write(b).map_err(arrow)?;
            }
            w.finish().map_err(arrow)?;
        }
    }
    let stdout = std::io::stdout();
    let mut lock = stdout.lock();
    lock.write_all(&out).map_err(io)?;
    lock.flush().map_err(io)
}

/// The interactive shell: line editing and history; a statement runs once a line ends it with
/// `;` (outside strings and comments); errors are reported and the shell goes on.
fn repl(session: &Session, format: Format) -> Result<ExitCode> {
    use rustyline::error::ReadlineError;
    let mut editor =
        rustyline::DefaultEditor::new().map_err(|e| CliError::Usage(format!("cannot start the shell: {e}")))?;
    let history = std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".ember_sql_history"));
    if let Some(h) = &history {
        let _ = editor.load_history(h);
    }
    let mut buffer = String::new();
    let mut count = 0;
    loop {
        let prompt = if buffer.is_empty() { "ember> " } else { "    -> " };
        match editor.readline(prompt) {
            Ok(line) => {
                if buffer.is_empty() && matches!(line.trim(), "quit" | "exit" | "\\q") {
                    break;
                }
                buffer.push_str(&line);
                buffer.push('\n');
                if !is_complete(&buffer) {
                    continue;
                }
                let _ = editor.add_history_entry(buffer.trim_end());
                for stmt in split_statements(&buffer) {
                    count += 1;
                    let started = std::time::Instant::now();
                    match run_statement(session, &stmt, format) {
                        Ok(()) => eprintln!("({:.3} s)", started.elapsed().as_secs_f64()),
                        Err(e) => eprintln!("{}", describe_error(count, &stmt, &e)),
                    }
                }
                buffer.clear();
            }
            Err(ReadlineError::Interrupted) => buffer.clear(),
            Err(ReadlineError::Eof) => break,
            Err(e) => return Err(CliError::Usage(format!("the shell failed: {e}"))),
        }
    }
    if let Some(h) = &history {
        let _ = editor.save_history(h);
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parser_positions_are_found_in_messages() {
        assert_eq!(parser_position("sql parser error: Expected x, found: y at Line: 3, Column: 14"), Some((3, 14)));
        assert_eq!(parser_position("no position here"), None);
    }
}
