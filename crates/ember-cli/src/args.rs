//! The command line: flags with values, `--conf`, `--properties-file`, and positional arguments.

use ember_core::EmberConf;

/// What went wrong.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The command line is malformed.
    #[error("{0}")]
    Usage(String),
    /// A setting is invalid, or the engine failed.
    #[error(transparent)]
    Core(#[from] ember_core::Error),
    /// The cluster runtime failed.
    #[error(transparent)]
    Cluster(#[from] ember_cluster::ClusterError),
    /// A SQL statement or the TPC-H kit failed.
    #[error(transparent)]
    Sql(ember_sql::Error),
    /// A program could not be started.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

/// The CLI's result type.
pub type Result<T, E = CliError> = std::result::Result<T, E>;

/// A subcommand's parsed arguments.
pub struct Args {
    values: Vec<(String, String)>,
    confs: Vec<String>,
    properties: Option<String>,
    /// Positional arguments (for `submit`: the program and its arguments, untouched).
    pub positional: Vec<String>,
}

impl Args {
    /// Parses `argv`: the flags in `flags` take a value; with `program_follows`, the first
    /// positional argument and everything after it are the program's.
    pub fn parse(argv: &[String], flags: &[&str], program_follows: bool) -> Result<Args> {
        let mut args = Args { values: Vec::new(), confs: Vec::new(), properties: None, positional: Vec::new() };
        let mut it = argv.iter();
        while let Some(a) = it.next() {
            let mut value =
                |flag: &str| it.next().cloned().ok_or_else(|| CliError::Usage(format!("{flag} needs a value")));
            match a.as_str() {
                "--conf" => {
                    let v = value("--conf")?;
                    args.confs.push(v);
                }
                "--properties-file" => args.properties = Some(value("--properties-file")?),
                f if flags.contains(&f) => {
                    let v = value(f)?;
                    args.values.push((f.to_string(), v));
                }
                f if f.starts_with("--") => return Err(CliError::Usage(format!("unknown option `{f}`"))),
                _ if program_follows => {
                    args.positional.push(a.clone());
                    args.positional.extend(it.by_ref().cloned());
                }
                _ => return Err(CliError::Usage(format!("unexpected argument `{a}`"))),
            }
        }
        Ok(args)
    }

    /// The last value of `flag`.
    pub fn value(&self, flag: &str) -> Option<&str> {
        self.values.iter().rev().find(|(f, _)| f == flag).map(|(_, v)| v.as_str())
    }

    /// `--properties-file` first, then every `--conf key=value` over it.
    pub fn conf(&self) -> Result<EmberConf> {
        let mut conf = EmberConf::empty();
        if let Some(path) = &self.properties {
            conf = conf.with_file(std::path::Path::new(path))?;
        }
        for kv in &self.confs {
            let (k, v) = kv.split_once('=').ok_or_else(|| {
                CliError::Usage(format!("--conf {}: expected key=value", kv.split('=').next().unwrap_or("")))
            })?;
            conf = conf.set(k.trim(), v.trim())?;
        }
        Ok(conf)
    }

    /// `--master ember://H:P`, as `H:P`.
    pub fn master(&self) -> Result<String> {
        let url =
            self.value("--master").ok_or_else(|| CliError::Usage("--master ember://HOST:PORT is required".into()))?;
        match ember_core::conf::Master::parse(url)? {
            ember_core::conf::Master::Standalone { address } => Ok(address),
            other => Err(CliError::Usage(format!("--master {other}: expected a standalone master, ember://HOST:PORT"))),
        }
    }

    /// An IP address flag.
    pub fn ip(&self, flag: &str) -> Result<Option<std::net::IpAddr>> {
        self.value(flag)
            .map(|v| v.parse().map_err(|_| CliError::Usage(format!("{flag} {v}: expected an IP address"))))
            .transpose()
    }
}

/// A worker's memory when `--memory` is not given: the machine's, less 1 GiB for the system
/// (at least 1 GiB), as Spark's workers do.
pub fn default_worker_memory_mib() -> u64 {
    let total_kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .unwrap_or(2 << 20);
    ((total_kib >> 10).saturating_sub(1024)).max(1024)
}
