//! `ember`: runs a standalone cluster's master and workers, submits programs to it, and shows
//! its state.
//!
//! ```text
//! ember master [--host H] [--port P]
//! ember worker --master ember://H:P [--host H] [--cores C] [--memory M] [--work-dir D]
//! ember submit --master ember://H:P [--name N] PROGRAM [ARGS...]
//! ember status --master ember://H:P
//! ember sql [--master M] [-e SQL | -f FILE] [--format table|csv|json]
//! ember tpch generate --scale S --out DIR [--files N]
//! ember tpch run --data DIR [--master M] [--queries 1,3-5] [--iterations N]
//! ```
//!
//! Every subcommand also takes `--conf key=value` (repeatable) and `--properties-file F`, as
//! `spark-submit` does: the file's settings first, then each `--conf` over them.

mod args;
mod sql;
mod tpch;

use std::process::ExitCode;

use args::{Args, CliError, Result};

const USAGE: &str = "usage:
  ember master [--host H] [--port P]
  ember worker --master ember://H:P [--host H] [--cores C] [--memory M] [--work-dir D]
  ember submit --master ember://H:P [--name N] PROGRAM [ARGS...]
  ember status --master ember://H:P
  ember sql [--master M] [-e SQL | -f FILE] [--format table|csv|json]
  ember tpch generate --scale S --out DIR [--files N]
  ember tpch run --data DIR [--master M] [--queries 1,3-5] [--iterations N]
every subcommand also takes --conf key=value (repeatable) and --properties-file F";

fn main() -> ExitCode {
    // `ember sql --master local-cluster[..]` starts executors from this very binary.
    ember_cluster::entry();
    let argv: Vec<String> = std::env::args().skip(1).collect();
    // The cluster daemons log what they do; a SQL shell keeps standard error for errors.
    init_logging(if matches!(argv.first().map(String::as_str), Some("sql" | "tpch")) { "warn" } else { "info" });
    match run(&argv) {
        Ok(code) => code,
        Err(CliError::Usage(m)) => {
            eprintln!("ember: {m}\n{USAGE}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("ember: {e}");
            ExitCode::from(1)
        }
    }
}

fn init_logging(default: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}

fn run(argv: &[String]) -> Result<ExitCode> {
    let Some((command, rest)) = argv.split_first() else {
        return Err(CliError::Usage("no subcommand".into()));
    };
    match command.as_str() {
        "master" => master(Args::parse(rest, &["--host", "--port"], false)?),
        "worker" => worker(Args::parse(rest, &["--master", "--host", "--cores", "--memory", "--work-dir"], false)?),
        "submit" => submit(Args::parse(rest, &["--master", "--name"], true)?),
        "status" => status(Args::parse(rest, &["--master"], false)?),
        "sql" => sql::run(Args::parse(rest, &["--master", "-e", "-f", "--format"], false)?),
        "tpch" => match rest.split_first() {
            Some((sub, rest)) if sub == "generate" => {
                tpch::generate(Args::parse(rest, &["--scale", "--out", "--files"], false)?)
            }
            Some((sub, rest)) if sub == "run" => {
                tpch::run(Args::parse(rest, &["--data", "--master", "--queries", "--iterations"], false)?)
            }
            _ => Err(CliError::Usage("tpch needs `generate` or `run`".into())),
        },
        "-h" | "--help" | "help" => {
            println!("{USAGE}");
            Ok(ExitCode::SUCCESS)
        }
        other => Err(CliError::Usage(format!("unknown subcommand `{other}`"))),
    }
}

fn master(args: Args) -> Result<ExitCode> {
    let conf = args.conf()?;
    let host = args.ip("--host")?.unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST));
    let port = match args.value("--port") {
        Some(p) => p.parse::<u16>().map_err(|_| CliError::Usage(format!("--port {p}: expected a port number")))?,
        None => 7077,
    };
    let settings = conf.settings()?;
    let scheduling =
        ember_cluster::standalone::Scheduling::parse(conf.get("ember.deploy.scheduling").unwrap_or("fifo"))
            .ok_or_else(|| CliError::Usage("ember.deploy.scheduling: expected fifo or fair".into()))?;
    let options = ember_cluster::standalone::MasterOptions {
        bind: std::net::SocketAddr::new(host, port),
        secret: conf.get("ember.authenticate.secret").map(str::to_string),
        scheduling,
        worker_timeout: std::time::Duration::from_millis(settings.network_timeout_ms),
        ssl: settings.ssl,
    };
    let handle = ember_cluster::standalone::start_master(options)?;
    // Scripts and tests read the address from this line (with --port 0 the port is picked).
    println!("ember master listening on ember://{}", handle.address);
    loop {
        std::thread::park();
    }
}

fn worker(args: Args) -> Result<ExitCode> {
    let conf = args.conf()?;
    let master = args.master()?;
    let host = args.ip("--host")?.unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST));
    let cores = match args.value("--cores") {
        Some(c) => c
            .parse::<u32>()
            .ok()
            .filter(|&c| c > 0)
            .ok_or_else(|| CliError::Usage(format!("--cores {c}: expected a positive number")))?,
        None => std::thread::available_parallelism().map_or(1, |n| u32::try_from(n.get()).unwrap_or(1)),
    };
    let memory_mib = match args.value("--memory") {
        Some(m) => ember_core::conf::parse_size(m)
            .map(|b| b >> 20)
            .filter(|&mib| mib > 0)
            .ok_or_else(|| CliError::Usage(format!("--memory {m}: expected a size like 512m or 4g")))?,
        None => args::default_worker_memory_mib(),
    };
    let work_dir = match args.value("--work-dir") {
        Some(d) => std::path::PathBuf::from(d),
        None => private_dir()?,
    };
    let options = ember_cluster::standalone::WorkerOptions {
        master,
        host,
        cores,
        memory_mib,
        work_dir,
        secret: conf.get("ember.authenticate.secret").map(str::to_string),
        ssl: conf.settings()?.ssl,
    };
    ember_cluster::standalone::run_worker(options)?;
    Ok(ExitCode::SUCCESS)
}

/// A new directory only this user can enter, with a name no one can guess beforehand: a worker
/// runs the executables it keeps there.
fn private_dir() -> Result<std::path::PathBuf> {
    use std::io::Read;
    use std::os::unix::fs::DirBuilderExt;
    let mut random = [0u8; 8];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut random))
        .map_err(|source| CliError::Io { what: "reading /dev/urandom".into(), source })?;
    let name: String = random.iter().map(|b| format!("{b:02x}")).collect();
    let dir = std::env::temp_dir().join(format!("ember-worker-{name}"));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .map_err(|source| CliError::Io { what: format!("creating {}", dir.display()), source })?;
    Ok(dir)
}

fn submit(args: Args) -> Result<ExitCode> {
    let master = args.master()?;
    let mut conf = args.conf()?.master(&format!("ember://{master}"))?;
    if let Some(name) = args.value("--name") {
        conf = conf.app_name(name)?;
    }
    // Checked here, so that a mistake is reported before the program starts.
    conf.settings()?;
    let Some((program, program_args)) = args.positional.split_first() else {
        return Err(CliError::Usage("submit needs a PROGRAM".into()));
    };
    let status = std::process::Command::new(program)
        .args(program_args)
        .env(ember_cluster::SUBMIT_CONF_VAR, conf.to_properties())
        .status()
        .map_err(|source| CliError::Io { what: format!("starting {program}"), source })?;
    Ok(match status.code() {
        Some(0) => ExitCode::SUCCESS,
        Some(c) => ExitCode::from(u8::try_from(c).unwrap_or(1)),
        None => {
            eprintln!("ember: {program} ended by a signal ({status})");
            ExitCode::from(1)
        }
    })
}

fn status(args: Args) -> Result<ExitCode> {
    let conf = args.conf()?;
    let master = args.master()?;
    let ssl = conf.settings()?.ssl;
    let status =
        ember_cluster::standalone::cluster_status(&master, conf.get("ember.authenticate.secret"), ssl.as_ref())?;
    print!("{}", ember_cluster::standalone::format_status(&master, &status));
    Ok(ExitCode::SUCCESS)
}
