//! A standalone worker: offers its cores and memory to the master and starts the executors the
//! master grants on it, each the application's own executable fetched from its driver.
//!
//! Every executor runs in its own directory under the worker's work directory
//! (`APP/EXECUTOR/`, with its `stdout` and `stderr`); its local files go under `local/` there
//! and are removed when it exits. Executables are kept under `binaries/`, one per SHA-256, and
//! checked against the hash the master sent before they run. Executors die with their worker,
//! also when the worker is killed with SIGKILL; the worker stops when its master session ends.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use crate::auth::{self, Secret};
use crate::data::Auth;
use crate::error::{ClusterError, Result};
use crate::proto::{self, master_to_worker::Kind as FromMaster, worker_message::Kind as ToMaster};
use crate::tls::Tls;
use crate::vars;

/// How to run a worker.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// The master's `host:port`.
    pub master: String,
    /// The address executors listen on (and that drivers reach them at).
    pub host: std::net::IpAddr,
    /// Cores offered.
    pub cores: u32,
    /// Memory offered, in MiB.
    pub memory_mib: u64,
    /// Where executables, executors' logs and local files go.
    pub work_dir: PathBuf,
    /// The cluster's secret, when the master has one.
    pub secret: Option<String>,
    /// TLS (`ember.ssl.*`) for the worker's connections and its executors' (which also listen,
    /// so a certificate and key are needed).
    pub ssl: Option<ember_core::conf::SslSettings>,
}

/// What the launcher thread is asked to do.
enum Order {
    Start { app_id: String, executor_id: String, command: Command },
    Kill { app_id: String, executor_id: String },
}

type ToMasterTx = mpsc::UnboundedSender<proto::WorkerMessage>;

fn exited(app_id: &str, executor_id: &str, reason: String) -> proto::WorkerMessage {
    proto::WorkerMessage {
        kind: Some(ToMaster::Exited(proto::ExecutorExited {
            app_id: app_id.to_string(),
            executor_id: executor_id.to_string(),
            reason,
        })),
    }
}

/// Runs a worker until its master session ends (an error says why it ended).
pub fn run_worker(mut options: WorkerOptions) -> Result<()> {
    if options.cores == 0 || options.memory_mib == 0 {
        return Err(ClusterError::Environment("a worker offers at least one core and one MiB".into()));
    }
    let tls = Tls::load(options.ssl.as_ref())?;
    if let Some(tls) = &tls {
        tls.can_listen()?;
    }
    std::fs::create_dir_all(options.work_dir.join("binaries"))
        .and_then(|()| options.work_dir.canonicalize())
        .map(|dir| options.work_dir = dir)
        .map_err(|source| ClusterError::Io { path: options.work_dir.display().to_string(), source })?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("ember-worker")
        .enable_all()
        .build()
        .map_err(|source| ClusterError::Io { path: "the worker's runtime".into(), source })?;
    let (to_master, to_master_rx) = mpsc::unbounded_channel::<proto::WorkerMessage>();
    let (commands, commands_rx) = std::sync::mpsc::channel::<Order>();
    // Executors are forked by one thread that lives as long as the worker: the kernel's
    // parent-death signal follows the thread that forked.
    let launcher = {
        let (to_master, work_dir) = (to_master.clone(), options.work_dir.clone());
        std::thread::Builder::new()
            .name("ember-worker-launcher".into())
            .spawn(move || launch_loop(&commands_rx, &to_master, &work_dir))
            .map_err(|source| ClusterError::Io { path: "the worker's launcher thread".into(), source })?
    };
    let outcome = runtime.block_on(session(options, tls, to_master, to_master_rx, commands));
    // The command channel is closed by now: the launcher kills what still runs and ends.
    let _ = launcher.join();
    runtime.shutdown_timeout(Duration::from_secs(1));
    outcome
}

async fn session(
    options: WorkerOptions,
    tls: Option<Arc<Tls>>,
    to_master: ToMasterTx,
    to_master_rx: mpsc::UnboundedReceiver<proto::WorkerMessage>,
    commands: std::sync::mpsc::Sender<Order>,
) -> Result<()> {
    let secret = options.secret.as_deref().map(Secret::from_hex).transpose()?;
    let tls_on = tls.is_some();
    let channel = crate::tls::endpoint(&options.master, tls.as_deref())?
        .connect_timeout(Duration::from_secs(10))
        .tcp_nodelay(true)
        .connect()
        .await
        .map_err(|e| crate::tls::hint_mismatch(e.into(), tls_on))?;
    let mut client = proto::master_client::MasterClient::with_interceptor(channel, Auth::new(secret.as_ref())?);
    let host = match options.host {
        std::net::IpAddr::V6(v6) => format!("[{v6}]"),
        v4 => v4.to_string(),
    };
    let register =
        proto::RegisterWorker { host, cores: options.cores, memory_mib: options.memory_mib, pid: std::process::id() };
    let _ = to_master.send(proto::WorkerMessage { kind: Some(ToMaster::Register(register)) });
    // Until the master first answers, a failure may be TLS on one side only.
    let hinted = |s: tonic::Status| crate::tls::hint_mismatch(s.into(), tls_on);
    let mut inbound = client
        .worker_session(tokio_stream::wrappers::UnboundedReceiverStream::new(to_master_rx))
        .await
        .map_err(hinted)?
        .into_inner();
    let worker_id = match inbound.message().await.map_err(hinted)? {
        Some(proto::MasterToWorker { kind: Some(FromMaster::Registered(r)) }) => r.worker_id,
        _ => return Err(ClusterError::Protocol("the master did not answer with WorkerRegistered".into())),
    };
    tracing::info!("worker {worker_id} registered with ember://{}", options.master);
    println!("ember worker {worker_id} registered with ember://{}", options.master);
    let heartbeat = {
        let to_master = to_master.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(super::master::WORKER_HEARTBEAT);
            loop {
                tick.tick().await;
                let beat = proto::WorkerMessage { kind: Some(ToMaster::Heartbeat(proto::WorkerHeartbeat {})) };
                if to_master.send(beat).is_err() {
                    break;
                }
            }
        })
    };
    let binaries = Arc::new(Binaries { dir: options.work_dir.join("binaries"), locks: Mutex::default(), tls });
    let outcome = loop {
        match inbound.message().await {
            Ok(Some(proto::MasterToWorker { kind: Some(FromMaster::Launch(l)) })) => {
                let (binaries, commands, to_master) = (binaries.clone(), commands.clone(), to_master.clone());
                let options = options.clone();
                tokio::spawn(async move {
                    match prepare(&options, &binaries, &l).await {
                        Ok(command) => {
                            let start = Order::Start { app_id: l.app_id, executor_id: l.executor_id, command };
                            let _ = commands.send(start);
                        }
                        Err(e) => {
                            tracing::error!("cannot start {} executor {}: {e}", l.app_id, l.executor_id);
                            let _ =
                                to_master.send(exited(&l.app_id, &l.executor_id, format!("it could not start: {e}")));
                        }
                    }
                });
            }
            Ok(Some(proto::MasterToWorker { kind: Some(FromMaster::Kill(k)) })) => {
                let _ = commands.send(Order::Kill { app_id: k.app_id, executor_id: k.executor_id });
            }
            Ok(Some(_)) => break Err(ClusterError::Protocol("an unexpected message from the master".into())),
            Ok(None) => break Err(ClusterError::Transport("the master ended the session".into())),
            Err(e) => break Err(ClusterError::Transport(format!("the master's session failed: {}", e.message()))),
        }
    };
    heartbeat.abort();
    drop(commands);
    outcome
}

/// The executables this worker has fetched, by hash.
struct Binaries {
    dir: PathBuf,
    /// One fetch per hash at a time.
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// The worker's TLS: for fetching from drivers, and handed to its executors.
    tls: Option<Arc<Tls>>,
}

impl Binaries {
    /// The path of the executable with SHA-256 `hash`, fetched from `driver` when not here yet.
    async fn get(&self, hash: &[u8], driver: &str, secret: &Secret) -> Result<PathBuf> {
        if hash.len() != 32 {
            return Err(ClusterError::Protocol("an executable's hash has 32 bytes".into()));
        }
        let name = auth::hex(hash);
        let path = self.dir.join(&name);
        let lock = self.locks.lock().unwrap_or_else(|p| p.into_inner()).entry(name.clone()).or_default().clone();
        let _held = lock.lock().await;
        if path.exists() {
            // Checked again before every use: the file is executed.
            let again = path.clone();
            let digest = tokio::task::spawn_blocking(move || sha256_of(&again))
                .await
                .map_err(|e| ClusterError::Protocol(format!("hashing a cached executable: {e}")))?;
            match digest {
                Ok(d) if d.as_slice() == hash => return Ok(path),
                _ => {
                    tracing::warn!(
                        "the cached executable {} does not match its hash: fetching it again",
                        path.display()
                    );
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        let channel = crate::tls::endpoint(driver, self.tls.as_deref())?
            .connect_timeout(Duration::from_secs(10))
            .connect()
            .await?;
        let mut client = proto::driver_client::DriverClient::with_interceptor(channel, Auth::new(Some(secret))?);
        let mut stream = client.binary(proto::BinaryRequest {}).await?.into_inner();
        let partial = self.dir.join(format!("{name}.partial-{}", std::process::id()));
        // Local writes of 1 MiB chunks: short enough for the runtime's threads.
        let mut file = std::fs::File::create(&partial)
            .map_err(|source| ClusterError::Io { path: partial.display().to_string(), source })?;
        let mut hasher = Sha256::new();
        let written: Result<()> = async {
            use std::io::Write;
            while let Some(chunk) = stream.message().await? {
                hasher.update(&chunk.data);
                file.write_all(&chunk.data)
                    .map_err(|source| ClusterError::Io { path: partial.display().to_string(), source })?;
            }
            file.sync_all().map_err(|source| ClusterError::Io { path: partial.display().to_string(), source })?;
            Ok(())
        }
        .await;
        drop(file);
        let checked = written.and_then(|()| {
            let got = hasher.finalize();
            if got.as_slice() != hash {
                return Err(ClusterError::Refused(format!(
                    "the executable the driver sent has SHA-256 {}, not {name}",
                    auth::hex(&got)
                )));
            }
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&partial, std::fs::Permissions::from_mode(0o755))
                .and_then(|()| std::fs::rename(&partial, &path))
                .map_err(|source| ClusterError::Io { path: path.display().to_string(), source })
        });
        if checked.is_err() {
            let _ = std::fs::remove_file(&partial);
        }
        checked.map(|()| path)
    }
}

/// Fetches the executable and builds the command that starts an executor.
async fn prepare(options: &WorkerOptions, binaries: &Binaries, l: &proto::LaunchExecutor) -> Result<Command> {
    let secret = Secret::from_hex(&l.secret)?;
    for id in [&l.app_id, &l.executor_id] {
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
            return Err(ClusterError::Protocol(format!("`{id}` is not a valid application or executor id")));
        }
    }
    let exe = binaries.get(&l.binary_sha256, &l.driver, &secret).await?;
    let dir = options.work_dir.join("apps").join(&l.app_id).join(&l.executor_id);
    std::fs::create_dir_all(dir.join("local"))
        .map_err(|source| ClusterError::Io { path: dir.display().to_string(), source })?;
    let log = |name: &str| {
        std::fs::File::create(dir.join(name))
            .map_err(|source| ClusterError::Io { path: dir.join(name).display().to_string(), source })
    };
    let mut command = Command::new(&exe);
    Tls::hand_to(binaries.tls.as_deref(), &mut command);
    command
        .current_dir(&dir)
        .env(vars::DRIVER, &l.driver)
        .env(vars::ID, &l.executor_id)
        .env(vars::CORES, l.cores.to_string())
        .env(vars::MEMORY_MIB, l.memory_mib.to_string())
        .env(vars::SECRET, secret.to_hex())
        .env(vars::HOST, options.host.to_string())
        .env(vars::LOCAL_DIR, dir.join("local"))
        .env_remove(vars::SUBMIT_CONF)
        .stdin(Stdio::null())
        .stdout(log("stdout")?)
        .stderr(log("stderr")?);
    Ok(command)
}

/// How long a kill of an executor that has not started is remembered (longer than fetching an
/// executable takes).
const FORGET_KILLS_AFTER: Duration = Duration::from_secs(3600);

/// The launcher thread: starts and stops executors, and reports those that exit.
fn launch_loop(commands: &std::sync::mpsc::Receiver<Order>, to_master: &ToMasterTx, work_dir: &Path) {
    let mut children: HashMap<(String, String), Child> = HashMap::new();
    // Executors killed before they started (their executable was still being fetched), and
    // when: a kill whose executor never comes (it could not start, or had ended) is forgotten
    // after a while.
    let mut killed: HashMap<(String, String), std::time::Instant> = HashMap::new();
    loop {
        killed.retain(|_, at| at.elapsed() < FORGET_KILLS_AFTER);
        match commands.recv_timeout(Duration::from_millis(100)) {
            Ok(Order::Start { app_id, executor_id, .. })
                if killed.remove(&(app_id.clone(), executor_id.clone())).is_some() =>
            {
                let _ = to_master.send(exited(&app_id, &executor_id, "it was stopped before it started".into()));
            }
            Ok(Order::Start { app_id, executor_id, mut command }) => match spawn_retrying(&mut command) {
                Ok(child) => {
                    tracing::info!("started {app_id} executor {executor_id} (pid {})", child.id());
                    children.insert((app_id, executor_id), child);
                }
                Err(e) => {
                    let _ = to_master.send(exited(&app_id, &executor_id, format!("it could not start: {e}")));
                }
            },
            Ok(Order::Kill { app_id, executor_id }) => match children.get_mut(&(app_id.clone(), executor_id.clone())) {
                Some(child) => {
                    let _ = child.kill();
                }
                None => {
                    killed.insert((app_id, executor_id), std::time::Instant::now());
                }
            },
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
        }
        let mut ended = Vec::new();
        for ((app_id, executor_id), child) in children.iter_mut() {
            if let Ok(Some(status)) = child.try_wait() {
                ended.push((app_id.clone(), executor_id.clone(), status));
            }
        }
        for (app_id, executor_id, status) in ended {
            children.remove(&(app_id.clone(), executor_id.clone()));
            let _ = std::fs::remove_dir_all(work_dir.join("apps").join(&app_id).join(&executor_id).join("local"));
            let _ = to_master.send(exited(&app_id, &executor_id, format!("it exited ({status})")));
        }
    }
    for (_, mut child) in children {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Starts an executor; retries while its freshly written executable is still open for writing
/// in a process forked meanwhile (`ETXTBSY`, until that process execs and closes it).
fn spawn_retrying(command: &mut Command) -> std::io::Result<Child> {
    let mut tries = 0;
    loop {
        match crate::local_cluster::spawn_tied(command) {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && tries < 20 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(25));
            }
            other => return other,
        }
    }
}

/// The SHA-256 of a file's contents.
fn sha256_of(path: &Path) -> std::io::Result<[u8; 32]> {
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finalize().into())
}
