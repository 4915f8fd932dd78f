//! `local-cluster[W,C,M]`: W executor processes of the driver's own binary on this machine.

use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ember_core::conf::Master;
use ember_core::runtime::{ClusterBackend, ClusterManager, ClusterStart};

use crate::auth::{self, Secret};
use crate::driver::{Cluster, ControlService, RemoteBackend};
use crate::error::{ClusterError, Result};
use crate::tls::Tls;
use crate::vars;

/// How long executors have to start and register.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// How long stopped executors have to exit before they are killed.
const EXIT_GRACE: Duration = Duration::from_secs(5);

/// Starts the executors of `local-cluster[W,C,M]` masters.
#[derive(Debug, Default, Clone, Copy)]
pub struct LocalClusterManager;

impl ClusterManager for LocalClusterManager {
    fn start(&self, start: ClusterStart) -> ember_core::Result<ClusterBackend> {
        Ok(start_local_cluster(start)?)
    }
}

type Children = Arc<Mutex<Vec<(String, Child)>>>;

fn start_local_cluster(start: ClusterStart) -> Result<ClusterBackend> {
    let Master::LocalCluster { executors, cores, memory_mib } = start.settings.master else {
        return Err(ClusterError::Startup(format!("`{}` is not a local-cluster master", start.settings.master)));
    };
    let secret = match &start.settings.authenticate_secret {
        Some(hex) => Secret::from_hex(&hex.0)?,
        None => Secret::generate()?,
    };
    let binary = *auth::binary_sha256()?;
    // The running image, not its path (which may name another build by now).
    let exe = std::path::PathBuf::from(auth::SELF_EXE);
    let cluster =
        Cluster::new(start.app_id.clone(), binary, &start.settings, (start.statuses, start.tracker, start.driver_env))?;
    let tls = Tls::load(start.settings.ssl.as_ref())?;
    let service = ControlService::start(&cluster, &start.settings, &secret, tls.as_deref())?;
    let address = service.address;
    tracing::info!("driver control service on {address}; starting {executors} executors");

    let children: Children = Arc::default();
    let ids: Vec<String> = (0..executors).map(|i| format!("executor-{i}")).collect();
    for id in &ids {
        cluster.expect(id);
    }
    // Executors are forked by a thread that lives as long as the application: the kernel's
    // parent-death signal follows the thread that forked, not the process.
    let (launched_tx, launched_rx) = std::sync::mpsc::channel::<Result<()>>();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let launcher = {
        let (children, ids, secret) = (children.clone(), ids.clone(), secret.clone());
        // Executors on this host use the driver's TLS files.
        let tls = tls.clone();
        std::thread::Builder::new()
            .name("ember-executor-launcher".into())
            .spawn(move || {
                let mut result = Ok(());
                for id in &ids {
                    match spawn_executor(&exe, id, address, cores, memory_mib, &secret, tls.as_deref()) {
                        Ok(child) => children.lock().unwrap_or_else(|p| p.into_inner()).push((id.clone(), child)),
                        Err(e) => {
                            result = Err(e);
                            break;
                        }
                    }
                }
                let _ = launched_tx.send(result);
                // Stays until the application lets its executors go.
                let _ = release_rx.recv();
            })
            .map_err(|source| ClusterError::Io { path: "the executor launcher thread".into(), source })?
    };
    let executor_root = start.settings.local_dir.clone().unwrap_or_else(std::env::temp_dir);
    let stop = {
        let children = children.clone();
        move || {
            let runtime = service.stop();
            reap(&children, &executor_root);
            drop(release_tx);
            let _ = launcher.join();
            runtime.shutdown_background();
        }
    };
    let started = launched_rx
        .recv()
        .unwrap_or_else(|_| Err(ClusterError::Startup("the executor launcher stopped".into())))
        .and_then(|()| {
            cluster.wait_for(executors, Instant::now() + START_TIMEOUT, || exited_while_starting(&children))
        });
    if let Err(e) = started {
        cluster.shut_down("the application failed to start");
        stop();
        return Err(e);
    }
    let key = secret.ship_key(&binary);
    let backend = RemoteBackend { cluster, on_stop: Mutex::new(Some(Box::new(stop))), before_stop: Mutex::default() };
    Ok(ClusterBackend { backend: Arc::new(backend), key })
}

/// Starts one executor process.
fn spawn_executor(
    exe: &std::path::Path,
    id: &str,
    driver: std::net::SocketAddr,
    cores: usize,
    memory_mib: u64,
    secret: &Secret,
    tls: Option<&Tls>,
) -> Result<Child> {
    let mut command = Command::new(exe);
    Tls::hand_to(tls, &mut command);
    command
        .env(vars::DRIVER, driver.to_string())
        .env(vars::ID, id)
        .env(vars::CORES, cores.to_string())
        .env(vars::MEMORY_MIB, memory_mib.to_string())
        .env(vars::SECRET, secret.to_hex())
        .stdin(Stdio::null());
    spawn_tied(&mut command)
        .map_err(|source| ClusterError::Io { path: format!("{} (executor {id})", exe.display()), source })
}

/// Starts `command` as a process that dies with the calling thread's process, however that ends
/// (SIGKILL included). Call it from a thread that lives as long as the process: the kernel's
/// parent-death signal follows the thread that forked.
pub(crate) fn spawn_tied(command: &mut Command) -> std::io::Result<Child> {
    use std::os::unix::process::CommandExt;
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: the closure runs in the forked child before `exec` and calls only `prctl` and
    // `getppid`, which are async-signal-safe; it allocates nothing (its errors are OS codes).
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died before the signal was armed (no allocation here).
            if libc::getppid() != parent {
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
    command.spawn()
}

/// An error naming the first executor that exited while the application started.
fn exited_while_starting(children: &Children) -> std::result::Result<(), String> {
    let mut children = children.lock().unwrap_or_else(|p| p.into_inner());
    for (id, child) in children.iter_mut() {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("executor {id} exited while starting ({status})"));
        }
    }
    Ok(())
}

/// Waits for stopped executors to exit, killing those that take too long, and removes their
/// local directories under `root` (an executor killed never removes its own).
fn reap(children: &Children, root: &std::path::Path) {
    let mut children = std::mem::take(&mut *children.lock().unwrap_or_else(|p| p.into_inner()));
    let dirs: Vec<std::path::PathBuf> =
        children.iter().map(|(id, c)| root.join(format!("ember-executor-{id}-{}", c.id()))).collect();
    let deadline = Instant::now() + EXIT_GRACE;
    while !children.is_empty() && Instant::now() < deadline {
        children.retain_mut(|(_, c)| !matches!(c.try_wait(), Ok(Some(_)) | Err(_)));
        std::thread::sleep(Duration::from_millis(20));
    }
    for (id, mut child) in children {
        tracing::warn!("executor {id} did not exit after its shutdown; killing it");
        let _ = child.kill();
        let _ = child.wait();
    }
    for dir in dirs {
        let _ = std::fs::remove_dir_all(dir);
    }
}
