//! `pipe`: each partition's records through an external command, one record per line.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};

use serde::{Deserialize, Serialize};

use super::{Dependency, Rdd, RddImpl};
use crate::data::Data;
use crate::error::{Error, Result};
use crate::task::{BoxIter, Interruptible, TaskContext};

/// Pipes each partition of `parent` through `argv`: records written to the command's standard
/// input as lines (their `Display` form), its standard output's lines are the records of the
/// result.
#[derive(Serialize, Deserialize)]
#[serde(bound = "T: Data")]
pub(crate) struct PipedRdd<T> {
    parent: Rdd<T>,
    argv: Vec<String>,
    env: Vec<(String, String)>,
}

impl<T: Data> Rdd<T> {
    /// Pipes each partition through an external command, as Spark's `pipe`: the command runs
    /// once per partition (`argv[0]` with arguments `argv[1..]`, no shell), receives the
    /// partition's records on its standard input, one per line in their `Display` form, and
    /// the lines of its standard output are the records of the result (their `\n` or `\r\n`
    /// ends removed). `env` adds variables to the command's environment. A command that cannot
    /// be started or exits with a failure status fails the task, naming the command and, for a
    /// failure, the end of its standard error. The output of a partition is held in memory
    /// until its input has been written.
    pub fn pipe(&self, argv: &[&str], env: &[(&str, &str)]) -> Result<Rdd<String>>
    where
        T: std::fmt::Display,
    {
        if argv.is_empty() {
            return Err(Error::InvalidArgument("pipe needs a command".into()));
        }
        Ok(self.derive(PipedRdd {
            parent: self.clone(),
            argv: argv.iter().map(|s| s.to_string()).collect(),
            env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        }))
    }
}

impl<T: Data + std::fmt::Display> RddImpl<String> for PipedRdd<T> {
    fn name(&self) -> &'static str {
        "pipe"
    }
    fn num_partitions(&self) -> usize {
        self.parent.num_partitions()
    }
    fn dependencies(&self) -> Vec<Dependency> {
        vec![Dependency::Narrow(self.parent.as_base())]
    }
    fn compute<'a>(&'a self, split: usize, tc: &'a TaskContext) -> BoxIter<'a, String> {
        match self.run(split, tc) {
            Ok(lines) => Box::new(Interruptible::new(lines.into_iter(), tc)),
            Err(e) => {
                tc.fail(e);
                Box::new(std::iter::empty())
            }
        }
    }
}

impl<T: Data + std::fmt::Display> PipedRdd<T> {
    fn command_error(&self, what: String) -> Error {
        Error::Io { path: self.argv.join(" ").into(), source: std::io::Error::other(what) }
    }

    fn run(&self, split: usize, tc: &TaskContext) -> Result<Vec<String>> {
        let mut child = Command::new(&self.argv[0])
            .args(&self.argv[1..])
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| self.command_error(format!("cannot start the command: {e}")))?;
        let result = self.feed(&mut child, split, tc);
        if result.is_err() {
            let _ = child.kill();
        }
        let output = child.wait_with_output().map_err(|e| self.command_error(format!("waiting for it: {e}")));
        let lines = result?;
        let output = output?;
        if tc.is_killed() {
            return Err(Error::Cancelled("the task was killed".into()));
        }
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            let tail: String = stderr.chars().rev().take(500).collect::<Vec<_>>().into_iter().rev().collect();
            return Err(self.command_error(format!("{} (standard error: {})", output.status, tail.trim())));
        }
        Ok(lines)
    }

    /// Writes the partition to the command while a thread reads its output lines.
    fn feed(&self, child: &mut Child, split: usize, tc: &TaskContext) -> Result<Vec<String>> {
        let stdout = child.stdout.take().ok_or_else(|| self.command_error("no standard output".into()))?;
        let reader = std::thread::Builder::new()
            .name("ember-pipe-reader".into())
            .spawn(move || -> std::io::Result<Vec<String>> {
                let mut lines = Vec::new();
                for line in BufReader::new(stdout).lines() {
                    let mut line = line?;
                    if line.ends_with('\r') {
                        line.pop();
                    }
                    lines.push(line);
                }
                Ok(lines)
            })
            .map_err(|e| Error::ResourcesExhausted(format!("cannot start a pipe reader thread: {e}")))?;
        let written = (|| -> Result<()> {
            let stdin = child.stdin.take().ok_or_else(|| self.command_error("no standard input".into()))?;
            let mut w = std::io::BufWriter::new(stdin);
            for record in self.parent.iterator(split, tc) {
                // A command that stops reading early (as `head` does) is not an error of ours.
                if writeln!(w, "{record}").is_err() {
                    break;
                }
            }
            let _ = w.flush();
            Ok(())
        })();
        if let Some(e) = tc.take_error() {
            return Err(e);
        }
        written?;
        match reader.join() {
            Ok(Ok(lines)) => Ok(lines),
            Ok(Err(e)) => Err(self.command_error(format!("reading its output: {e}"))),
            Err(_) => Err(Error::Internal("the pipe reader thread panicked".into())),
        }
    }
}
