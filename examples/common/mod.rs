//! Argument handling shared by the examples: positional arguments plus `--master M` and
//! `--memory SIZE`.
#![allow(dead_code)] // each example uses a different part

pub mod sort_lines;

use ember::{Context, EmberConf};

/// Parsed command line: positional arguments and the context settings.
pub struct Args {
    /// Positional arguments, in order.
    pub positional: Vec<String>,
    /// Flags without values (`--sample`).
    pub flags: Vec<String>,
    /// `--trials N`, when given.
    pub trials: Option<usize>,
    conf: EmberConf,
}

impl Args {
    /// Parses `std::env::args`, exiting with a usage message on a bad flag.
    pub fn parse(usage: &str) -> Args {
        let mut positional = Vec::new();
        let mut flags = Vec::new();
        let mut conf = EmberConf::new();
        // `local[*]` unless given here or by `ember submit`.
        let mut master = None;
        let mut trials = None;
        let mut it = std::env::args().skip(1);
        let fail = |msg: String| -> ! {
            eprintln!("error: {msg}\nusage: {usage}");
            std::process::exit(2)
        };
        while let Some(a) = it.next() {
            match a.as_str() {
                "--master" => master = Some(it.next().unwrap_or_else(|| fail("--master needs a value".into()))),
                "--memory" => {
                    let v = it.next().unwrap_or_else(|| fail("--memory needs a value".into()));
                    conf = conf.memory(&v).unwrap_or_else(|e| fail(e.to_string()));
                }
                "--conf" => {
                    let v = it.next().unwrap_or_else(|| fail("--conf needs key=value".into()));
                    let (k, val) = v.split_once('=').unwrap_or_else(|| fail(format!("--conf {v}: expected key=value")));
                    conf = conf.set(k, val).unwrap_or_else(|e| fail(e.to_string()));
                }
                "--trials" => {
                    let v = it.next().unwrap_or_else(|| fail("--trials needs a value".into()));
                    trials = Some(v.parse().unwrap_or_else(|_| fail(format!("--trials {v}: expected a number"))));
                }
                "-h" | "--help" => {
                    println!("usage: {usage}");
                    std::process::exit(0);
                }
                s if s.starts_with("--") => flags.push(s.to_string()),
                _ => positional.push(a),
            }
        }
        if let Some(master) = master {
            conf = conf.master(&master).unwrap_or_else(|e| fail(e.to_string()));
        }
        Args { positional, flags, trials, conf }
    }

    /// Whether a flag was given.
    pub fn flag(&self, name: &str) -> bool {
        self.flags.iter().any(|f| f == name)
    }

    /// Starts the context.
    pub fn context(&self) -> ember::Result<Context> {
        Context::new(self.conf.clone())
    }
}
