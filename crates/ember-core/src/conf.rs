//! `EmberConf`: the validated settings a [`crate::Context`] is built from.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::error::{Error, Result};

/// Where jobs run.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Master {
    /// `local[N]`: N task slots on threads inside the driver process.
    Local {
        /// Number of task slots.
        slots: usize,
    },
    /// `local-cluster[W,C,M]`: W executor processes of the driver's own binary on this
    /// machine, with C task slots and M MiB of memory each, reached over the network as a
    /// cluster's executors are. Needs the cluster runtime (`ember::executor_entry()`).
    LocalCluster {
        /// Executor processes.
        executors: usize,
        /// Task slots of each.
        cores: usize,
        /// Memory budget of each, in MiB.
        memory_mib: u64,
    },
    /// `ember://HOST:PORT`: a standalone cluster's master, which grants the application
    /// executors on its workers. Needs the cluster runtime (`ember::executor_entry()`).
    Standalone {
        /// The master's `host:port`.
        address: String,
    },
}

/// The most executor processes a `local-cluster` master may start.
pub const MAX_LOCAL_CLUSTER_EXECUTORS: usize = 64;

/// The most partitions a shuffle may have (a shuffle has one block per map task and partition).
pub const MAX_PARTITIONS: u64 = 1 << 24;

/// The most task slots a local master may have (each is a thread with a large stack).
pub const MAX_LOCAL_SLOTS: usize = 4096;

impl Master {
    /// Parses `local`, `local[N]`, `local[*]`, `local-cluster[W,C,M]` or `ember://HOST:PORT`.
    pub fn parse(url: &str) -> Result<Master> {
        let bad = || Error::InvalidMaster(url.to_string());
        let url = url.trim();
        if let Some(address) = url.strip_prefix("ember://") {
            return parse_host_port(address).map(|_| Master::Standalone { address: address.to_string() });
        }
        if url == "local" {
            return Ok(Master::Local { slots: 1 });
        }
        if let Some(inner) = url.strip_prefix("local-cluster[").and_then(|r| r.strip_suffix(']')) {
            let parts: Vec<&str> = inner.split(',').map(str::trim).collect();
            let [w, c, m] = parts[..] else { return Err(bad()) };
            let executors = w.parse::<usize>().map_err(|_| bad())?;
            let cores = c.parse::<usize>().map_err(|_| bad())?;
            let memory_mib = m.parse::<u64>().map_err(|_| bad())?;
            if !(1..=MAX_LOCAL_CLUSTER_EXECUTORS).contains(&executors)
                || !(1..=MAX_LOCAL_SLOTS).contains(&cores)
                || !(1..=(1 << 30)).contains(&memory_mib)
            {
                return Err(bad());
            }
            return Ok(Master::LocalCluster { executors, cores, memory_mib });
        }
        let inner = url.strip_prefix("local[").and_then(|r| r.strip_suffix(']')).ok_or_else(bad)?;
        let slots = if inner == "*" {
            std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
        } else {
            inner.parse::<usize>().map_err(|_| bad())?
        };
        if slots == 0 || slots > MAX_LOCAL_SLOTS {
            return Err(bad());
        }
        Ok(Master::Local { slots })
    }

    /// The number of task slots (of all executors) the URL names; 1 for a standalone master,
    /// whose slots are known only once its executors register (a context asks them).
    pub fn slots(&self) -> usize {
        match self {
            Master::Local { slots } => *slots,
            Master::LocalCluster { executors, cores, .. } => executors * cores,
            Master::Standalone { .. } => 1,
        }
    }

    /// Whether executors run in other processes.
    pub fn is_cluster(&self) -> bool {
        !matches!(self, Master::Local { .. })
    }
}

impl std::fmt::Display for Master {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Master::Local { slots } => write!(f, "local[{slots}]"),
            Master::LocalCluster { executors, cores, memory_mib } => {
                write!(f, "local-cluster[{executors},{cores},{memory_mib}]")
            }
            Master::Standalone { address } => write!(f, "ember://{address}"),
        }
    }
}

/// Checks a `HOST:PORT` address (a host name, an IPv4 address or a bracketed IPv6 address, and a
/// port from 1 to 65535); returns the host and port.
pub fn parse_host_port(address: &str) -> Result<(&str, u16)> {
    let bad = |why: &str| Error::InvalidMaster(format!("ember://{address} ({why})"));
    let (host, port) = address.rsplit_once(':').ok_or_else(|| bad("expected HOST:PORT"))?;
    let port: u16 =
        port.parse().ok().filter(|&p| p > 0).ok_or_else(|| bad("the port is not a number from 1 to 65535"))?;
    let plain = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    let valid = !plain.is_empty()
        && plain.len() <= 253
        && plain.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':'))
        && (host.starts_with('[') || !plain.contains(':'));
    if !valid {
        return Err(bad("the host is not a host name or IP address"));
    }
    Ok((host, port))
}

/// Compression codec for shuffle files, spills and serialized blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Codec {
    /// LZ4 frames (fast; the default).
    Lz4,
    /// Zstandard at level 1: smaller than LZ4 for text-like records, somewhat slower.
    Zstd,
    /// No compression.
    None,
}

/// A documented configuration key, its default and what it means.
pub struct ConfKey {
    /// The key.
    pub key: &'static str,
    /// The default value, as text.
    pub default: &'static str,
    /// What the key controls.
    pub doc: &'static str,
}

/// Every key `EmberConf` accepts.
pub const KEYS: &[ConfKey] = &[
    ConfKey {
        key: "ember.master",
        default: "local[*]",
        doc: "Master URL: local, local[N], local[*], local-cluster[W,C,M] (W executor processes with C slots and M MiB each), or ember://HOST:PORT (a standalone cluster's master).",
    },
    ConfKey { key: "ember.app.name", default: "ember", doc: "Application name, shown in logs." },
    ConfKey {
        key: "ember.memory.size",
        default: "1g",
        doc: "Memory budget shared by execution (shuffle, sort, aggregation) and storage (cache); \
              bytes with an optional k/m/g suffix.",
    },
    ConfKey {
        key: "ember.memory.storageFraction",
        default: "0.5",
        doc: "Fraction of the budget where cached blocks are safe from eviction by execution.",
    },
    ConfKey {
        key: "ember.local.dir",
        default: "(system temp dir)",
        doc: "Directory for shuffle files, spills and disk blocks.",
    },
    ConfKey {
        key: "ember.shuffle.partitions",
        default: "(largest parent partition count)",
        doc: "Number of partitions of a shuffle when an operation does not give one.",
    },
    ConfKey {
        key: "ember.shuffle.inMemoryThreshold",
        default: "1m",
        doc: "Map outputs up to this size stay in executor memory (taken from the memory budget, at \
              most 1/8 of it in all) instead of data and index files; 0 writes every output to files.",
    },
    ConfKey {
        key: "ember.io.compression.codec",
        default: "lz4",
        doc: "Codec for shuffle, spill and serialized blocks: lz4, zstd or none.",
    },
    ConfKey { key: "ember.task.maxFailures", default: "4", doc: "Attempts of a task before its job fails." },
    ConfKey {
        key: "ember.local.serializeTasks",
        default: "false",
        doc: "In local mode, encode and decode every task and result as a remote executor would.",
    },
    ConfKey { key: "ember.ui.showConsoleProgress", default: "true", doc: "Show a progress bar on a terminal." },
    ConfKey {
        key: "ember.driver.host",
        default: "127.0.0.1",
        doc: "Address the driver's control service listens on and executors connect to (cluster masters).",
    },
    ConfKey {
        key: "ember.driver.port",
        default: "0",
        doc: "Port of the driver's control service (cluster masters); 0 picks a free one.",
    },
    ConfKey {
        key: "ember.network.timeout",
        default: "120s",
        doc: "How long a cluster executor may stay silent (no status, no heartbeat) before the driver \
              declares it lost: `120s`, `500ms` or seconds.",
    },
    ConfKey {
        key: "ember.scheduler.groupSize",
        default: "1",
        doc: "Jobs an iterative program submits as one group (Drizzle's group scheduling: one scheduling \
              round per group, reducers pre-scheduled across executors), or `auto` to adapt the size so \
              that scheduling stays under 10% of a group's time. Read through `Context::group_sizer`.",
    },
    ConfKey {
        key: "ember.speculation",
        default: "false",
        doc: "Run a copy of a task that is much slower than its stage's others (see the quantile and \
              multiplier); the first attempt to finish wins and the other is killed.",
    },
    ConfKey {
        key: "ember.speculation.quantile",
        default: "0.75",
        doc: "Share of a stage's tasks that must have finished before its stragglers are copied.",
    },
    ConfKey {
        key: "ember.speculation.multiplier",
        default: "1.5",
        doc: "A task is a straggler once it has run this many times the median time of the stage's \
              finished tasks (and at least 100 ms).",
    },
    ConfKey {
        key: "ember.excludeOnFailure.maxFailures",
        default: "3",
        doc: "Cluster masters: an executor on which this many task attempts fail in a row (execution \
              errors, not input errors, fetch failures or kills) gets no more tasks for the \
              application, unless it is the last one; 0 never excludes.",
    },
    ConfKey {
        key: "ember.locality.wait",
        default: "3s",
        doc: "Cluster masters: how long a task whose cached input is on busy executors waits for a slot on \
              one of them before it runs elsewhere (and reads that input from a holder, or computes it when none \
              can give it): `3s`, `500ms`, `0`.",
    },
    ConfKey {
        key: "ember.authenticate.secret",
        default: "(generated)",
        doc: "The secret every connection of a cluster application is authenticated with: 64 hex digits. \
              local-cluster generates one per application when unset.",
    },
    ConfKey {
        key: "ember.ssl.enabled",
        default: "false",
        doc: "Cluster masters: TLS (rustls) on every connection, control plane and data plane alike. Each \
              process reads its own node's files: the driver and a standalone master from their settings, a \
              worker from its settings (and hands them to the executors it starts), local-cluster executors \
              from their driver's.",
    },
    ConfKey {
        key: "ember.ssl.certFile",
        default: "(unset)",
        doc: "PEM certificate chain a TLS listener (driver, master, an executor's data plane) presents; \
              required with ember.ssl.enabled on every process that listens.",
    },
    ConfKey {
        key: "ember.ssl.keyFile",
        default: "(unset)",
        doc: "PEM private key (PKCS#8, PKCS#1 or SEC1) of ember.ssl.certFile's certificate.",
    },
    ConfKey {
        key: "ember.ssl.trustFile",
        default: "(ember.ssl.certFile)",
        doc: "PEM certificates of the authorities a TLS client trusts; by default the node's own \
              certificate, which suits one self-signed certificate shared by the whole cluster.",
    },
    ConfKey {
        key: "ember.ssl.serverName",
        default: "(the address connected to)",
        doc: "The name a TLS client expects in every server's certificate; by default the host or IP \
              address it connects to, so each certificate must then name its node's address.",
    },
    ConfKey {
        key: "ember.cores.max",
        default: "(all)",
        doc: "Standalone: the most cores (task slots) the application takes from the cluster; all that are \
              free when unset.",
    },
    ConfKey {
        key: "ember.executor.cores",
        default: "(all of a worker's)",
        doc: "Standalone: task slots of each executor; when unset an application gets one executor per \
              worker with all the cores the worker has free.",
    },
    ConfKey {
        key: "ember.executor.memory",
        default: "1g",
        doc: "Standalone: memory budget of each executor; a worker hosts it only when it has that much free.",
    },
    ConfKey {
        key: "ember.deploy.scheduling",
        default: "fifo",
        doc: "Standalone master: how applications share the cluster's cores. `fifo`: in the order they \
              registered, each taking what it asks for. `fair`: an application that waits gets an equal \
              share; the master reclaims executors (newest first) of applications above their share.",
    },
    ConfKey {
        key: "ember.checkpoint.dir",
        default: "(unset)",
        doc: "Directory for RDD checkpoints; each application writes into its own subdirectory.",
    },
    ConfKey {
        key: "ember.files.maxPartitionBytes",
        default: "32m",
        doc: "Most bytes of input files packed into one partition of text_file; larger files are cut \
              into byte ranges. 32m matches the splits of Spark's textFile on local files (the local \
              file system's 32 MiB block size); a sort of 1 GB ran 35% faster than with 128m.",
    },
    ConfKey {
        key: "ember.files.openCostInBytes",
        default: "4m",
        doc: "What opening a file costs, counted in bytes, when packing files into partitions: small \
              files share a partition instead of getting one each.",
    },
    ConfKey {
        key: "ember.input.maxLineLength",
        default: "64m",
        doc: "Longest line text_file accepts (bytes, without the line end); a longer line fails the \
              job with an error naming the file and byte offset. 64m is far beyond real text lines, \
              yet a line, its buffer and the string made from it fit many times in a task's share \
              of the default budget.",
    },
];

/// Settings for a [`crate::Context`]. Keys are validated when set; unknown keys are rejected.
#[derive(Clone, Default)]
pub struct EmberConf {
    values: BTreeMap<String, String>,
}

impl std::fmt::Debug for EmberConf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shown = self.values.iter().map(|(k, v)| (k, if k.contains("secret") { "(not shown)" } else { v.as_str() }));
        f.debug_map().entries(shown).finish()
    }
}

fn submitted_cell() -> &'static std::sync::OnceLock<EmberConf> {
    static SUBMITTED: std::sync::OnceLock<EmberConf> = std::sync::OnceLock::new();
    &SUBMITTED
}

fn submitted() -> Option<&'static EmberConf> {
    submitted_cell().get()
}

/// Installs the settings this driver process was submitted with (once; later calls are ignored).
pub(crate) fn install_submitted(conf: EmberConf) {
    let _ = submitted_cell().set(conf);
}

/// Settings parsed from an [`EmberConf`].
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Settings {
    /// The master.
    pub master: Master,
    /// Application name.
    pub app_name: String,
    /// Memory budget in bytes.
    pub memory_bytes: u64,
    /// Storage's protected fraction.
    pub storage_fraction: f64,
    /// Root for local files.
    pub local_dir: Option<PathBuf>,
    /// Default shuffle partition count.
    pub shuffle_partitions: usize,
    /// The shuffle partition count when set explicitly; otherwise shuffles default to the
    /// largest partition count of their parents, as in Spark.
    pub shuffle_partitions_explicit: Option<usize>,
    /// Map outputs up to this many bytes stay in memory.
    pub shuffle_memory_threshold: u64,
    /// Compression codec.
    pub codec: Codec,
    /// Task attempts before a job fails.
    pub max_task_failures: u32,
    /// Encode tasks in local mode.
    pub serialize_tasks: bool,
    /// Show console progress.
    pub show_progress: bool,
    /// Checkpoint directory.
    pub checkpoint_dir: Option<PathBuf>,
    /// Most input bytes packed into one `text_file` partition.
    pub files_max_partition_bytes: u64,
    /// The cost of opening a file, in bytes, when packing files into partitions.
    pub files_open_cost_bytes: u64,
    /// Longest line `text_file` accepts, in bytes.
    pub max_line_length: u64,
    /// Address of the driver's control service (cluster masters).
    pub driver_host: std::net::IpAddr,
    /// Port of the driver's control service; 0 picks a free one.
    pub driver_port: u16,
    /// How long a cluster executor may stay silent before it is declared lost, in milliseconds.
    pub network_timeout_ms: u64,
    /// The application's secret (64 hex digits), when configured. Never sent to executors,
    /// never printed.
    #[serde(skip)]
    pub authenticate_secret: Option<SecretText>,
    /// How long a task waits for a slot on an executor holding its cached input, in milliseconds.
    pub locality_wait_ms: u64,
    /// Failed attempts in a row that exclude a cluster executor (0: never).
    pub exclude_after_failures: u32,
    /// Whether slow tasks get speculative copies.
    pub speculation: bool,
    /// Share of a stage's tasks finished before stragglers are copied.
    pub speculation_quantile: f64,
    /// How many times the median a straggler has run.
    pub speculation_multiplier: f64,
    /// Jobs per group of an iterative program.
    pub group_size: crate::scheduler::group::GroupSize,
    /// TLS for both planes of a cluster (`ember.ssl.*`), when enabled. Each process reads its own
    /// node's files, so these are never sent to executors.
    #[serde(skip)]
    pub ssl: Option<SslSettings>,
    /// Standalone: the most cores the application takes (`None`: all that are free).
    pub cores_max: Option<usize>,
    /// Standalone: task slots per executor (`None`: all of a worker's free cores).
    pub executor_cores: Option<usize>,
    /// Standalone: memory budget of each executor, in bytes.
    pub executor_memory_bytes: u64,
}

/// TLS settings (`ember.ssl.*`): files on the local node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SslSettings {
    /// PEM certificate chain a listener presents (`ember.ssl.certFile`).
    pub cert_file: Option<PathBuf>,
    /// PEM private key of that certificate (`ember.ssl.keyFile`).
    pub key_file: Option<PathBuf>,
    /// PEM certificates a client trusts (`ember.ssl.trustFile`; the certificate file when unset).
    pub trust_file: Option<PathBuf>,
    /// The name clients expect in servers' certificates (`ember.ssl.serverName`).
    pub server_name: Option<String>,
}

/// Parses a duration such as `120s`, `500ms` or `30` (seconds) into milliseconds.
pub fn parse_duration_ms(text: &str) -> Option<u64> {
    let t = text.trim().to_ascii_lowercase();
    if let Some(ms) = t.strip_suffix("ms") {
        return ms.trim().parse().ok();
    }
    let secs: u64 = t.strip_suffix('s').unwrap_or(&t).trim().parse().ok()?;
    secs.checked_mul(1000)
}

/// A secret setting's text: `Debug` does not show it.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SecretText(pub String);

impl std::fmt::Debug for SecretText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("(not shown)")
    }
}

/// Parses a size such as `512m`, `1g`, `64k` or `1048576` into bytes.
pub fn parse_size(text: &str) -> Option<u64> {
    let t = text.trim().to_ascii_lowercase();
    let t = t.strip_suffix('b').unwrap_or(&t);
    let (num, mult) = match t.chars().last()? {
        'k' => (&t[..t.len() - 1], 1u64 << 10),
        'm' => (&t[..t.len() - 1], 1 << 20),
        'g' => (&t[..t.len() - 1], 1 << 30),
        't' => (&t[..t.len() - 1], 1 << 40),
        _ => (t, 1),
    };
    let num = num.trim();
    // Whole numbers exactly; fractions (`1.5g`) only when they come to whole bytes. Values that
    // do not fit in 63 bits are refused rather than saturated.
    if let Ok(n) = num.parse::<u64>() {
        return n.checked_mul(mult).filter(|&b| b <= i64::MAX as u64);
    }
    let n: f64 = num.parse().ok()?;
    let bytes = n * mult as f64;
    if !bytes.is_finite() || bytes < 0.0 || bytes.fract() != 0.0 || bytes > (1u64 << 62) as f64 {
        return None;
    }
    Some(bytes as u64)
}

impl EmberConf {
    /// A configuration with every key at its default, except those the program's launcher set:
    /// a driver started by `ember submit` begins from the master and settings it was submitted
    /// with (see [`crate::runtime::install_submitted_conf`]); what the program sets overrides them.
    pub fn new() -> Self {
        submitted().cloned().unwrap_or_default()
    }

    /// An empty configuration, ignoring what the program was submitted with.
    pub fn empty() -> Self {
        Self::default()
    }

    /// Sets a key, validating it. Unknown keys and malformed values are rejected.
    pub fn set(mut self, key: &str, value: impl Into<String>) -> Result<Self> {
        let value = value.into();
        if !KEYS.iter().any(|k| k.key == key) {
            return Err(Error::Config {
                key: key.into(),
                // The key is what is wrong; its value is not repeated (it may be a misspelt
                // secret's).
                value: "(not shown)".into(),
                reason: format!(
                    "unknown key; known keys are: {}",
                    KEYS.iter().map(|k| k.key).collect::<Vec<_>>().join(", ")
                ),
            });
        }
        Self::validate(key, &value)?;
        self.values.insert(key.to_string(), value);
        Ok(self)
    }

    /// Sets the master URL.
    pub fn master(self, url: &str) -> Result<Self> {
        self.set("ember.master", url)
    }

    /// Sets the application name.
    pub fn app_name(self, name: &str) -> Result<Self> {
        self.set("ember.app.name", name)
    }

    /// Sets the memory budget (e.g. `"512m"`).
    pub fn memory(self, size: &str) -> Result<Self> {
        self.set("ember.memory.size", size)
    }

    /// Reads `key=value` lines (blank lines and `#` comments ignored) from a config file, on top
    /// of this configuration.
    pub fn with_file(self, path: &std::path::Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        self.with_properties(&text, &path.display().to_string())
    }

    /// Reads `key=value` lines (blank lines and `#` comments ignored) from a config file.
    pub fn from_file(path: &std::path::Path) -> Result<Self> {
        EmberConf::new().with_file(path)
    }

    /// Sets the `key=value` lines of `text` (blank lines and `#` comments ignored); `origin`
    /// names the text in errors.
    pub fn with_properties(mut self, text: &str, origin: &str) -> Result<Self> {
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (k, v) = line.split_once('=').ok_or_else(|| Error::Config {
                key: format!("{origin}:{}", i + 1),
                // The line's first word only: the rest may be a secret written `key value`.
                value: line.split_whitespace().next().unwrap_or_default().to_string(),
                reason: "expected key=value".into(),
            })?;
            self = self.set(k.trim(), v.trim())?;
        }
        Ok(self)
    }

    /// Every set key and value, as `key=value` lines (what [`with_properties`](Self::with_properties)
    /// reads back). Secrets are included: this is for handing settings to a child process.
    pub fn to_properties(&self) -> String {
        self.values.iter().map(|(k, v)| format!("{k}={v}\n")).collect()
    }

    /// The raw value of a key, if set.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.values.get(key).map(String::as_str)
    }

    fn validate(key: &str, value: &str) -> Result<()> {
        let shown = if key == "ember.authenticate.secret" { "(not shown)" } else { value };
        let bad = |reason: &str| Error::Config { key: key.into(), value: shown.into(), reason: reason.into() };
        match key {
            "ember.master" => {
                Master::parse(value)?;
            }
            "ember.memory.size" => {
                let n = parse_size(value).ok_or_else(|| bad("expected a size like 512m or 2g"))?;
                if n < 1 << 20 {
                    return Err(bad("the memory budget must be at least 1m"));
                }
            }
            "ember.shuffle.inMemoryThreshold" => {
                let n = parse_size(value).ok_or_else(|| bad("expected a size like 1m or 0"))?;
                if n > 1 << 30 {
                    return Err(bad("at most 1g"));
                }
            }
            "ember.memory.storageFraction" => {
                let f: f64 = value.parse().map_err(|_| bad("expected a number between 0 and 1"))?;
                if !(0.0..=1.0).contains(&f) {
                    return Err(bad("expected a number between 0 and 1"));
                }
            }
            "ember.shuffle.partitions" => {
                let n: u64 = value.parse().map_err(|_| bad("expected a positive integer"))?;
                if n == 0 || n > MAX_PARTITIONS {
                    return Err(bad(&format!("expected a positive integer up to {MAX_PARTITIONS}")));
                }
            }
            "ember.task.maxFailures" => {
                let n: u64 = value.parse().map_err(|_| bad("expected a positive integer"))?;
                if n == 0 || n > 1000 {
                    return Err(bad("expected a positive integer up to 1000"));
                }
            }
            "ember.io.compression.codec" if !matches!(value, "lz4" | "zstd" | "none") => {
                return Err(bad("expected lz4, zstd or none"));
            }
            "ember.local.serializeTasks" | "ember.ui.showConsoleProgress" if !matches!(value, "true" | "false") => {
                return Err(bad("expected true or false"));
            }
            "ember.files.maxPartitionBytes" | "ember.input.maxLineLength" => {
                let n = parse_size(value).ok_or_else(|| bad("expected a size like 128m"))?;
                if n == 0 {
                    return Err(bad("must be at least 1 byte"));
                }
            }
            "ember.files.openCostInBytes" => {
                parse_size(value).ok_or_else(|| bad("expected a size like 4m or 0"))?;
            }
            "ember.scheduler.groupSize" => {
                crate::scheduler::group::GroupSize::parse(value)
                    .ok_or_else(|| bad("expected a positive number or auto"))?;
            }
            "ember.speculation" if !matches!(value, "true" | "false") => {
                return Err(bad("expected true or false"));
            }
            "ember.speculation.quantile" => {
                let q: f64 = value.trim().parse().map_err(|_| bad("expected a number"))?;
                if !(q > 0.0 && q <= 1.0) {
                    return Err(bad("expected a share above 0 and at most 1"));
                }
            }
            "ember.speculation.multiplier" => {
                let m: f64 = value.trim().parse().map_err(|_| bad("expected a number"))?;
                if !(m >= 1.0 && m.is_finite()) {
                    return Err(bad("expected a number of at least 1"));
                }
            }
            "ember.excludeOnFailure.maxFailures" => {
                value.trim().parse::<u32>().map_err(|_| bad("expected a whole number"))?;
            }
            "ember.locality.wait" => {
                parse_duration_ms(value).ok_or_else(|| bad("expected a duration like 3s or 500ms"))?;
            }
            "ember.network.timeout" => {
                let ms = parse_duration_ms(value).ok_or_else(|| bad("expected a duration such as 120s or 500ms"))?;
                // Several heartbeats must fit in it.
                if !(1_000..=86_400_000).contains(&ms) {
                    return Err(bad("expected a duration from 1s to 24h"));
                }
            }
            "ember.driver.port" => {
                value.parse::<u16>().map_err(|_| bad("expected a port number from 0 to 65535"))?;
            }
            "ember.driver.host" => {
                value.parse::<std::net::IpAddr>().map_err(|_| bad("expected an IP address such as 127.0.0.1"))?;
            }
            "ember.authenticate.secret" if value.len() != 64 || !value.bytes().all(|b| b.is_ascii_hexdigit()) => {
                return Err(bad("expected 64 hex digits (32 bytes)"));
            }
            "ember.cores.max" | "ember.executor.cores" => {
                let n: u64 = value.trim().parse().map_err(|_| bad("expected a whole number"))?;
                if n == 0 || n > MAX_LOCAL_SLOTS as u64 * MAX_LOCAL_CLUSTER_EXECUTORS as u64 {
                    return Err(bad("out of range"));
                }
            }
            "ember.executor.memory" => {
                let n = parse_size(value).ok_or_else(|| bad("expected a size like 512m or 2g"))?;
                if n < 1 << 20 {
                    return Err(bad("an executor needs at least 1m"));
                }
            }
            "ember.deploy.scheduling" if !matches!(value, "fifo" | "fair") => {
                return Err(bad("expected fifo or fair"));
            }
            "ember.ssl.enabled" if !matches!(value, "true" | "false") => {
                return Err(bad("expected true or false"));
            }
            "ember.ssl.serverName" if value.trim().is_empty() || value.contains(char::is_whitespace) => {
                return Err(bad("expected a host name or IP address"));
            }
            "ember.app.name"
            | "ember.local.dir"
            | "ember.checkpoint.dir"
            | "ember.ssl.certFile"
            | "ember.ssl.keyFile"
            | "ember.ssl.trustFile"
                if value.trim().is_empty() =>
            {
                return Err(bad("must not be empty"));
            }
            _ => {}
        }
        Ok(())
    }

    /// `ember.ssl.*`, when enabled: at least a file to trust (a certificate, or the trust file).
    fn ssl(&self) -> Result<Option<SslSettings>> {
        if self.get("ember.ssl.enabled") != Some("true") {
            return Ok(None);
        }
        let ssl = SslSettings {
            cert_file: self.get("ember.ssl.certFile").map(PathBuf::from),
            key_file: self.get("ember.ssl.keyFile").map(PathBuf::from),
            trust_file: self.get("ember.ssl.trustFile").map(PathBuf::from),
            server_name: self.get("ember.ssl.serverName").map(str::to_string),
        };
        if ssl.cert_file.is_some() != ssl.key_file.is_some() {
            return Err(Error::Config {
                key: "ember.ssl.keyFile".into(),
                value: self.get("ember.ssl.keyFile").unwrap_or("(unset)").into(),
                reason: "ember.ssl.certFile and ember.ssl.keyFile go together".into(),
            });
        }
        if ssl.cert_file.is_none() && ssl.trust_file.is_none() {
            return Err(Error::Config {
                key: "ember.ssl.enabled".into(),
                value: "true".into(),
                reason: "TLS needs ember.ssl.certFile and ember.ssl.keyFile (or, for a process that only \
                         connects, ember.ssl.trustFile)"
                    .into(),
            });
        }
        Ok(Some(ssl))
    }

    /// Parses every setting, applying defaults.
    pub fn settings(&self) -> Result<Settings> {
        let master = Master::parse(self.get("ember.master").unwrap_or("local[*]"))?;
        let slots = master.slots() as u64;
        // Every set value passed `validate`, so these parse and fit their types.
        let parse_num =
            |key: &str, default: u64| -> u64 { self.get(key).and_then(|v| v.parse().ok()).unwrap_or(default) };
        Ok(Settings {
            master,
            app_name: self.get("ember.app.name").unwrap_or("ember").to_string(),
            memory_bytes: self.get("ember.memory.size").and_then(parse_size).unwrap_or(1 << 30),
            storage_fraction: self.get("ember.memory.storageFraction").and_then(|v| v.parse().ok()).unwrap_or(0.5),
            local_dir: self.get("ember.local.dir").map(PathBuf::from),
            shuffle_partitions: parse_num("ember.shuffle.partitions", slots) as usize,
            shuffle_partitions_explicit: self.get("ember.shuffle.partitions").and_then(|v| v.parse().ok()),
            shuffle_memory_threshold: self
                .get("ember.shuffle.inMemoryThreshold")
                .and_then(parse_size)
                .unwrap_or(1 << 20),
            codec: match self.get("ember.io.compression.codec") {
                Some("none") => Codec::None,
                Some("zstd") => Codec::Zstd,
                _ => Codec::Lz4,
            },
            max_task_failures: u32::try_from(parse_num("ember.task.maxFailures", 4)).unwrap_or(u32::MAX),
            serialize_tasks: self.get("ember.local.serializeTasks") == Some("true"),
            show_progress: self.get("ember.ui.showConsoleProgress") != Some("false"),
            checkpoint_dir: self.get("ember.checkpoint.dir").map(PathBuf::from),
            files_max_partition_bytes: self
                .get("ember.files.maxPartitionBytes")
                .and_then(parse_size)
                .unwrap_or(32 << 20),
            files_open_cost_bytes: self.get("ember.files.openCostInBytes").and_then(parse_size).unwrap_or(4 << 20),
            max_line_length: self.get("ember.input.maxLineLength").and_then(parse_size).unwrap_or(64 << 20),
            driver_host: self
                .get("ember.driver.host")
                .and_then(|v| v.parse().ok())
                .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)),
            driver_port: self.get("ember.driver.port").and_then(|v| v.parse().ok()).unwrap_or(0),
            network_timeout_ms: self.get("ember.network.timeout").and_then(parse_duration_ms).unwrap_or(120_000),
            authenticate_secret: self.get("ember.authenticate.secret").map(|s| SecretText(s.to_ascii_lowercase())),
            locality_wait_ms: self.get("ember.locality.wait").and_then(parse_duration_ms).unwrap_or(3000),
            exclude_after_failures: self
                .get("ember.excludeOnFailure.maxFailures")
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(3),
            speculation: self.get("ember.speculation") == Some("true"),
            speculation_quantile: self
                .get("ember.speculation.quantile")
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0.75),
            speculation_multiplier: self
                .get("ember.speculation.multiplier")
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(1.5),
            group_size: self
                .get("ember.scheduler.groupSize")
                .and_then(crate::scheduler::group::GroupSize::parse)
                .unwrap_or(crate::scheduler::group::GroupSize::Fixed(1)),
            ssl: self.ssl()?,
            cores_max: self.get("ember.cores.max").and_then(|v| v.trim().parse().ok()),
            executor_cores: self.get("ember.executor.cores").and_then(|v| v.trim().parse().ok()),
            executor_memory_bytes: self.get("ember.executor.memory").and_then(parse_size).unwrap_or(1 << 30),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_settings_need_files_that_go_together() {
        assert_eq!(EmberConf::new().settings().unwrap().ssl, None, "off by default");
        let on = EmberConf::new().set("ember.ssl.enabled", "true").unwrap();
        let err = on.settings().unwrap_err().to_string();
        assert!(err.contains("ember.ssl.certFile"), "{err}");
        let err = on.clone().set("ember.ssl.certFile", "node.pem").unwrap().settings().unwrap_err().to_string();
        assert!(err.contains("go together"), "{err}");
        let ssl = on
            .clone()
            .set("ember.ssl.certFile", "node.pem")
            .unwrap()
            .set("ember.ssl.keyFile", "node.key")
            .unwrap()
            .settings()
            .unwrap()
            .ssl
            .unwrap();
        assert_eq!(ssl.cert_file, Some(PathBuf::from("node.pem")));
        assert_eq!(ssl.key_file, Some(PathBuf::from("node.key")));
        assert_eq!(ssl.trust_file, None);
        // A process that only connects needs only what it trusts.
        let client = on.clone().set("ember.ssl.trustFile", "ca.pem").unwrap().settings().unwrap().ssl.unwrap();
        assert_eq!(client.trust_file, Some(PathBuf::from("ca.pem")));
        assert!(EmberConf::new().set("ember.ssl.enabled", "yes").is_err());
        assert!(EmberConf::new().set("ember.ssl.serverName", "two words").is_err());
        assert!(EmberConf::new().set("ember.ssl.certFile", " ").is_err());
        // Set but off: nothing is read.
        let off = EmberConf::new().set("ember.ssl.certFile", "node.pem").unwrap().settings().unwrap();
        assert_eq!(off.ssl, None);
    }

    #[test]
    fn out_of_range_values_are_errors_not_saturated() {
        assert_eq!(parse_size("1.5k"), Some(1536));
        assert_eq!(parse_size("16m"), Some(16 << 20));
        assert_eq!(parse_size("0.3"), None, "fractions of a byte");
        assert_eq!(parse_size("99999999999t"), None, "overflows 63 bits");
        assert_eq!(parse_size("1e30g"), None);
        assert_eq!(parse_size("18446744073709551615"), None);
        assert!(EmberConf::new().set("ember.memory.size", "1e40g").is_err());
        assert!(EmberConf::new().set("ember.task.maxFailures", "4294967297").is_err());
        assert!(EmberConf::new().set("ember.shuffle.partitions", "99999999999").is_err());
        assert!(EmberConf::new().master("local[100000000]").is_err());
        assert!(
            EmberConf::new().set("ember.task.maxFailures", "7").unwrap().settings().unwrap().max_task_failures == 7
        );
    }

    #[test]
    fn cluster_settings_are_checked_and_the_secret_is_never_shown() {
        let secret = "0123456789abcdef".repeat(4);
        let conf = EmberConf::new()
            .set("ember.authenticate.secret", &secret)
            .unwrap()
            .set("ember.network.timeout", "1500ms")
            .unwrap()
            .set("ember.driver.port", "7077")
            .unwrap();
        let s = conf.settings().unwrap();
        assert_eq!((s.network_timeout_ms, s.driver_port), (1500, 7077));
        assert_eq!(s.authenticate_secret.as_ref().map(|t| t.0.as_str()), Some(secret.as_str()));
        assert!(!format!("{conf:?}{s:?}").contains(&secret), "Debug shows the secret");
        let bad = EmberConf::new().set("ember.authenticate.secret", "zz-not-hex").unwrap_err();
        assert!(!bad.to_string().contains("zz-not-hex"), "{bad}");
        let misspelt = EmberConf::new().set("ember.authenticate.secrt", &secret).unwrap_err();
        assert!(!misspelt.to_string().contains(&secret), "{misspelt}");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("ember.properties");
        std::fs::write(&file, format!("ember.authenticate.secret {secret}\n")).unwrap();
        let spaced = EmberConf::from_file(&file).unwrap_err();
        assert!(!spaced.to_string().contains(&secret), "{spaced}");
        assert_eq!(parse_duration_ms("2"), Some(2000));
        assert_eq!(parse_duration_ms("2s"), Some(2000));
        for bad in ["0", "500ms", "x", "-1s", "99999999999999999999s"] {
            assert!(EmberConf::new().set("ember.network.timeout", bad).is_err(), "{bad}");
        }
        assert!(EmberConf::new().set("ember.driver.port", "70000").is_err());
        assert!(EmberConf::new().set("ember.driver.host", "localhost:1").is_err());
    }

    #[test]
    fn parses_masters() {
        assert_eq!(Master::parse("local").unwrap().slots(), 1);
        assert_eq!(Master::parse("local[3]").unwrap().slots(), 3);
        assert!(Master::parse("local[*]").unwrap().slots() >= 1);
        assert_eq!(
            Master::parse("local-cluster[2, 3, 512]").unwrap(),
            Master::LocalCluster { executors: 2, cores: 3, memory_mib: 512 }
        );
        assert_eq!(Master::parse("local-cluster[2,3,512]").unwrap().slots(), 6);
        assert_eq!(Master::parse("local-cluster[2,3,512]").unwrap().to_string(), "local-cluster[2,3,512]");
        for bad in [
            "",
            "local[0]",
            "local[x]",
            "yarn",
            "local[2",
            "spark://h:1",
            "local-cluster[0,1,1]",
            "local-cluster[1,0,1]",
            "local-cluster[1,1,0]",
            "local-cluster[1,1]",
            "local-cluster[1,1,1,1]",
            "local-cluster[65,1,1]",
            "local-cluster[-1,1,1]",
        ] {
            let e = Master::parse(bad).unwrap_err();
            assert!(e.to_string().contains("invalid master URL"), "{e}");
        }
    }

    #[test]
    fn rejects_unknown_and_malformed_keys() {
        let e = EmberConf::new().set("ember.nope", "1").unwrap_err();
        assert!(e.to_string().contains("unknown key"), "{e}");
        let e = EmberConf::new().set("ember.memory.size", "lots").unwrap_err();
        assert!(e.to_string().contains("ember.memory.size"), "{e}");
        assert!(EmberConf::new().set("ember.task.maxFailures", "0").is_err());
        assert!(EmberConf::new().set("ember.io.compression.codec", "snappy").is_err());
        let s = EmberConf::new().memory("64m").unwrap().master("local[2]").unwrap().settings().unwrap();
        assert_eq!(s.memory_bytes, 64 << 20);
        assert_eq!(s.shuffle_partitions, 2);
    }

    #[test]
    fn input_keys() {
        let s = EmberConf::new().settings().unwrap();
        assert_eq!(
            (s.files_max_partition_bytes, s.files_open_cost_bytes, s.max_line_length),
            (32 << 20, 4 << 20, 64 << 20)
        );
        let s = EmberConf::new()
            .set("ember.files.maxPartitionBytes", "1m")
            .and_then(|c| c.set("ember.files.openCostInBytes", "0"))
            .and_then(|c| c.set("ember.input.maxLineLength", "2k"))
            .unwrap()
            .settings()
            .unwrap();
        assert_eq!((s.files_max_partition_bytes, s.files_open_cost_bytes, s.max_line_length), (1 << 20, 0, 2048));
        for key in ["ember.files.maxPartitionBytes", "ember.input.maxLineLength"] {
            assert!(EmberConf::new().set(key, "0").is_err(), "{key}");
            assert!(EmberConf::new().set(key, "big").is_err(), "{key}");
        }
        assert!(EmberConf::new().set("ember.files.openCostInBytes", "-1").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1g"), Some(1 << 30));
        assert_eq!(parse_size("512M"), Some(512 << 20));
        assert_eq!(parse_size("100"), Some(100));
        assert_eq!(parse_size("1.5k"), Some(1536));
        assert_eq!(parse_size("x"), None);
    }
}
