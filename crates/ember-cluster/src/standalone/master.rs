//! The standalone master: keeps the cluster's workers, grants applications executors on them,
//! and stops an application's executors when it ends.
//!
//! Applications are served in the order they registered (`fifo`): each takes the cores it asks
//! for (`ember.cores.max`, else all that are free) and the next gets what is left, or waits for
//! cores to free up. With `fair` scheduling an application that waits makes the master reclaim
//! executors, newest first, from applications holding more than an equal share; their tasks run
//! again elsewhere, as after any executor loss.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};

use crate::auth::Secret;
use crate::error::{ClusterError, Result};
use crate::proto::{
    self, application_message::Kind as FromApp, master_to_application::Kind as ToApp,
    master_to_worker::Kind as ToWorker, worker_message::Kind as FromWorker,
};

/// The most cores a worker may offer.
const MAX_WORKER_CORES: u32 = 1 << 16;

/// How often workers send heartbeats.
pub(crate) const WORKER_HEARTBEAT: Duration = Duration::from_secs(2);

/// Executor failures in a row after which an application is given up on (its executors cannot
/// start or keep running: a binary the workers cannot fetch or run, a driver they cannot reach).
const MAX_EXECUTOR_FAILURES: u32 = 10;

/// An executor that ran this long before it exited ends a run of failures.
const HEALTHY_RUN: Duration = Duration::from_secs(60);

/// How applications share the cluster's cores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheduling {
    /// In registration order, each taking what it asks for.
    Fifo,
    /// Equal shares; executors of applications above their share are reclaimed for those
    /// waiting.
    Fair,
}

impl Scheduling {
    /// Parses `fifo` or `fair` (`ember.deploy.scheduling`).
    pub fn parse(text: &str) -> Option<Scheduling> {
        match text {
            "fifo" => Some(Scheduling::Fifo),
            "fair" => Some(Scheduling::Fair),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Scheduling::Fifo => "fifo",
            Scheduling::Fair => "fair",
        }
    }
}

/// How to run a master.
#[derive(Debug, Clone)]
pub struct MasterOptions {
    /// The address to listen on.
    pub bind: SocketAddr,
    /// The cluster's secret (`ember.authenticate.secret`): every worker and application must
    /// present its token. Without one the master takes any peer that reaches it.
    pub secret: Option<String>,
    /// How applications share cores.
    pub scheduling: Scheduling,
    /// How long a worker may stay silent before it is declared lost.
    pub worker_timeout: Duration,
    /// TLS (`ember.ssl.*`): the master presents this node's certificate.
    pub ssl: Option<ember_core::conf::SslSettings>,
}

type WorkerTx = mpsc::UnboundedSender<std::result::Result<proto::MasterToWorker, Status>>;
type AppTx = mpsc::UnboundedSender<std::result::Result<proto::MasterToApplication, Status>>;

struct WorkerInfo {
    host: String,
    cores: u32,
    memory_mib: u64,
    cores_used: u32,
    memory_used_mib: u64,
    tx: WorkerTx,
    last_heard: Instant,
}

struct AppInfo {
    id: String,
    name: String,
    driver: String,
    secret: String,
    binary: Vec<u8>,
    cores_max: Option<u32>,
    executor_cores: Option<u32>,
    executor_memory_mib: u64,
    tx: AppTx,
    registered: Instant,
    next_executor: u64,
    /// Executors in a row that exited soon after they were granted.
    failures: u32,
    /// The application is stopping its executors: none replaces them.
    finishing: bool,
}

struct ExecutorInfo {
    worker: String,
    cores: u32,
    memory_mib: u64,
    /// Being stopped (its application ended, or fair sharing reclaims it): it still holds its
    /// worker's resources until the worker reports it exited.
    stopping: bool,
    /// When it was granted.
    granted: Instant,
}

#[derive(Default)]
struct State {
    workers: BTreeMap<String, WorkerInfo>,
    /// In registration order.
    apps: Vec<AppInfo>,
    /// By (application, executor).
    executors: BTreeMap<(String, String), ExecutorInfo>,
    next_worker: u64,
    next_app: u64,
}

impl State {
    fn app_cores(&self, app: &str) -> u32 {
        self.executors.iter().filter(|((a, _), e)| a == app && !e.stopping).map(|(_, e)| e.cores).sum()
    }

    fn app(&self, id: &str) -> Option<&AppInfo> {
        self.apps.iter().find(|a| a.id == id)
    }

    /// Gives waiting applications executors on workers with free cores and memory.
    fn schedule(&mut self, scheduling: Scheduling) {
        let total: u64 = self.workers.values().map(|w| u64::from(w.cores)).sum();
        // Applications stopping their executors take no share.
        let sharing = self.apps.iter().filter(|a| !a.finishing).count() as u64;
        let share = match sharing {
            0 => 0,
            n => u32::try_from(total.div_ceil(n)).unwrap_or(u32::MAX),
        };
        for i in 0..self.apps.len() {
            loop {
                let app = &self.apps[i];
                let held = self.app_cores(&app.id);
                let mut want = app.cores_max.map_or(u32::MAX, |m| m.saturating_sub(held));
                if scheduling == Scheduling::Fair {
                    want = want.min(share.saturating_sub(held));
                }
                let need = app.executor_cores.unwrap_or(1);
                if want == 0 || need > want || app.finishing {
                    break;
                }
                let candidate = self
                    .workers
                    .iter()
                    .filter(|(_, w)| {
                        w.cores.saturating_sub(w.cores_used) >= need
                            && w.memory_mib.saturating_sub(w.memory_used_mib) >= app.executor_memory_mib
                    })
                    // Without a set size an application has one executor per worker.
                    .filter(|(wid, _)| {
                        app.executor_cores.is_some()
                            || !self
                                .executors
                                .iter()
                                .any(|((a, _), e)| a == &app.id && &e.worker == *wid && !e.stopping)
                    })
                    .max_by_key(|(_, w)| w.cores.saturating_sub(w.cores_used))
                    .map(|(wid, w)| (wid.clone(), w.cores.saturating_sub(w.cores_used)));
                let Some((worker_id, free)) = candidate else { break };
                let cores = app.executor_cores.unwrap_or_else(|| free.min(want));
                let app = &mut self.apps[i];
                let executor_id = format!("executor-{}", app.next_executor);
                app.next_executor += 1;
                let Some(worker) = self.workers.get_mut(&worker_id) else { break };
                worker.cores_used += cores;
                worker.memory_used_mib += app.executor_memory_mib;
                tracing::info!("granted {} executor {executor_id} on {worker_id} ({cores} cores)", app.id);
                let added = proto::ExecutorAdded {
                    executor_id: executor_id.clone(),
                    worker_id: worker_id.clone(),
                    host: worker.host.clone(),
                    cores,
                };
                let _ = app.tx.send(Ok(proto::MasterToApplication { kind: Some(ToApp::Added(added)) }));
                let launch = proto::LaunchExecutor {
                    app_id: app.id.clone(),
                    executor_id: executor_id.clone(),
                    cores,
                    memory_mib: app.executor_memory_mib,
                    driver: app.driver.clone(),
                    secret: app.secret.clone(),
                    binary_sha256: app.binary.clone(),
                };
                let _ = worker.tx.send(Ok(proto::MasterToWorker { kind: Some(ToWorker::Launch(launch)) }));
                self.executors.insert(
                    (app.id.clone(), executor_id),
                    ExecutorInfo {
                        worker: worker_id,
                        cores,
                        memory_mib: app.executor_memory_mib,
                        stopping: false,
                        granted: Instant::now(),
                    },
                );
            }
        }
        if scheduling == Scheduling::Fair {
            self.reclaim(share);
        }
    }

    /// Fair sharing: while an application holds no cores and another holds more than `share`
    /// with more than one executor, that one's newest executor is stopped (once at a time).
    fn reclaim(&mut self, share: u32) {
        if self.executors.values().any(|e| e.stopping) {
            return; // wait for the one being reclaimed to exit
        }
        // Only for an application that waits and that a worker of this cluster could host.
        let fits = |a: &AppInfo| {
            self.workers
                .values()
                .any(|w| w.memory_mib >= a.executor_memory_mib && w.cores >= a.executor_cores.unwrap_or(1))
        };
        if !self.apps.iter().any(|a| !a.finishing && self.app_cores(&a.id) == 0 && fits(a)) {
            return;
        }
        let over = self
            .apps
            .iter()
            .map(|a| (a.id.clone(), self.app_cores(&a.id)))
            .filter(|(id, cores)| {
                *cores > share && self.executors.iter().filter(|((a, _), e)| a == id && !e.stopping).count() > 1
            })
            .max_by_key(|(_, cores)| *cores);
        let Some((app_id, _)) = over else { return };
        let newest = self
            .executors
            .iter()
            .filter(|((a, _), e)| a == &app_id && !e.stopping)
            .max_by_key(|((_, id), _)| id.trim_start_matches("executor-").parse::<u64>().unwrap_or(0))
            .map(|((_, id), _)| id.clone());
        if let Some(executor_id) = newest {
            self.stop_executor(&app_id, &executor_id, "reclaimed for an application waiting for its fair share");
        }
    }

    /// Asks an executor's worker to stop it and tells its application it is gone.
    fn stop_executor(&mut self, app_id: &str, executor_id: &str, reason: &str) {
        let key = (app_id.to_string(), executor_id.to_string());
        let Some(e) = self.executors.get_mut(&key) else { return };
        e.stopping = true;
        tracing::info!("stopping {app_id} executor {executor_id}: {reason}");
        if let Some(w) = self.workers.get(&e.worker) {
            let kill = proto::KillExecutor {
                app_id: app_id.to_string(),
                executor_id: executor_id.to_string(),
                reason: reason.to_string(),
            };
            let _ = w.tx.send(Ok(proto::MasterToWorker { kind: Some(ToWorker::Kill(kill)) }));
        }
        if let Some(app) = self.app(app_id) {
            let removed = proto::ExecutorRemoved { executor_id: executor_id.to_string(), reason: reason.to_string() };
            let _ = app.tx.send(Ok(proto::MasterToApplication { kind: Some(ToApp::Removed(removed)) }));
        }
    }

    /// An executor exited (or never started): its worker's resources are free again.
    fn executor_exited(&mut self, app_id: &str, executor_id: &str, reason: &str) {
        let Some(e) = self.executors.remove(&(app_id.to_string(), executor_id.to_string())) else { return };
        if let Some(w) = self.workers.get_mut(&e.worker) {
            w.cores_used = w.cores_used.saturating_sub(e.cores);
            w.memory_used_mib = w.memory_used_mib.saturating_sub(e.memory_mib);
        }
        if e.stopping {
            return;
        }
        let Some(app) = self.apps.iter_mut().find(|a| a.id == app_id) else { return };
        if app.finishing {
            return;
        }
        tracing::warn!("{app_id} executor {executor_id} on {} exited: {reason}", e.worker);
        let removed = proto::ExecutorRemoved { executor_id: executor_id.to_string(), reason: reason.to_string() };
        let _ = app.tx.send(Ok(proto::MasterToApplication { kind: Some(ToApp::Removed(removed)) }));
        app.failures = if e.granted.elapsed() >= HEALTHY_RUN { 1 } else { app.failures + 1 };
        if app.failures >= MAX_EXECUTOR_FAILURES {
            let message = format!(
                "the master gave up on {app_id}: {} of its executors in a row exited soon after they were granted (last: {reason})",
                app.failures
            );
            tracing::error!("{message}");
            let _ = app.tx.send(Err(Status::aborted(message)));
            self.remove_app(app_id);
        }
    }

    /// Forgets an application and stops its executors.
    fn remove_app(&mut self, app_id: &str) {
        self.apps.retain(|a| a.id != app_id);
        let mine: Vec<String> = self
            .executors
            .iter()
            .filter(|((a, _), e)| a == app_id && !e.stopping)
            .map(|((_, e), _)| e.clone())
            .collect();
        for executor_id in mine {
            self.stop_executor(app_id, &executor_id, "its application ended");
        }
    }

    /// A worker is gone, and its executors with it.
    fn worker_lost(&mut self, worker_id: &str, reason: &str) {
        if self.workers.remove(worker_id).is_none() {
            return;
        }
        tracing::warn!("worker {worker_id} lost: {reason}");
        let gone: Vec<(String, String)> =
            self.executors.iter().filter(|(_, e)| e.worker == worker_id).map(|(k, _)| k.clone()).collect();
        for (app_id, executor_id) in gone {
            let Some(e) = self.executors.remove(&(app_id.clone(), executor_id.clone())) else { continue };
            if e.stopping {
                continue;
            }
            if let Some(app) = self.app(&app_id) {
                let removed = proto::ExecutorRemoved {
                    executor_id,
                    reason: format!("its worker {worker_id} was lost ({reason})"),
                };
                let _ = app.tx.send(Ok(proto::MasterToApplication { kind: Some(ToApp::Removed(removed)) }));
            }
        }
    }
}

struct Shared {
    state: Mutex<State>,
    scheduling: Scheduling,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A running master.
pub struct MasterHandle {
    /// Where it listens.
    pub address: SocketAddr,
    runtime: tokio::runtime::Runtime,
    shutdown: tokio::sync::oneshot::Sender<()>,
}

impl MasterHandle {
    /// Stops serving.
    pub fn stop(self) {
        let _ = self.shutdown.send(());
        self.runtime.shutdown_timeout(Duration::from_secs(1));
    }
}

/// Starts a master listening on `options.bind`.
pub fn start_master(options: MasterOptions) -> Result<MasterHandle> {
    let token = match &options.secret {
        Some(hex) => Some(Secret::from_hex(hex)?.token()),
        None => None,
    };
    let mut server = crate::tls::server(crate::tls::Tls::load(options.ssl.as_ref())?.as_deref())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("ember-master")
        .enable_all()
        .build()
        .map_err(|source| ClusterError::Io { path: "the master's runtime".into(), source })?;
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind(options.bind))
        .map_err(|source| ClusterError::Io { path: format!("{} (the master)", options.bind), source })?;
    let address = listener.local_addr().map_err(|source| ClusterError::Io { path: "the master".into(), source })?;
    if token.is_none() {
        tracing::warn!(
            "the master runs without ember.authenticate.secret: any peer that reaches {address} can join or run code"
        );
    }
    let shared = Arc::new(Shared { state: Mutex::default(), scheduling: options.scheduling });
    let service = tonic::service::interceptor::InterceptedService::new(
        proto::master_server::MasterServer::new(MasterService { shared: shared.clone() }),
        crate::driver::optional_authenticator(token),
    );
    let (shutdown, shutdown_rx) = tokio::sync::oneshot::channel::<()>();
    runtime.spawn(async move {
        let served = server
            .add_service(service)
            .serve_with_incoming_shutdown(crate::incoming(listener), async {
                let _ = shutdown_rx.await;
            })
            .await;
        if let Err(e) = served {
            tracing::error!("the master's service failed: {e}");
        }
    });
    let timeout = options.worker_timeout;
    runtime.spawn(async move {
        let mut tick = tokio::time::interval(WORKER_HEARTBEAT);
        loop {
            tick.tick().await;
            let mut state = shared.state();
            let silent: Vec<String> = state
                .workers
                .iter()
                .filter(|(_, w)| w.last_heard.elapsed() > timeout)
                .map(|(id, _)| id.clone())
                .collect();
            for id in silent {
                state.worker_lost(&id, &format!("it sent nothing for {} ms", timeout.as_millis()));
            }
            state.schedule(shared.scheduling);
        }
    });
    tracing::info!("ember master on ember://{address} ({} scheduling)", options.scheduling.name());
    Ok(MasterHandle { address, runtime, shutdown })
}

struct MasterService {
    shared: Arc<Shared>,
}

type WorkerStream =
    Pin<Box<dyn tokio_stream::Stream<Item = std::result::Result<proto::MasterToWorker, Status>> + Send>>;
type AppStream =
    Pin<Box<dyn tokio_stream::Stream<Item = std::result::Result<proto::MasterToApplication, Status>> + Send>>;

fn peer<T>(request: &Request<T>) -> String {
    request.remote_addr().map_or_else(|| "an unknown address".to_string(), |a| a.to_string())
}

#[tonic::async_trait]
impl proto::master_server::Master for MasterService {
    type WorkerSessionStream = WorkerStream;
    type ApplicationSessionStream = AppStream;

    async fn worker_session(
        &self,
        request: Request<Streaming<proto::WorkerMessage>>,
    ) -> std::result::Result<Response<Self::WorkerSessionStream>, Status> {
        let peer = peer(&request);
        let mut inbound = request.into_inner();
        let Some(proto::WorkerMessage { kind: Some(FromWorker::Register(r)) }) = inbound.message().await? else {
            return Err(Status::invalid_argument("a worker session starts with RegisterWorker"));
        };
        if r.cores == 0 || r.cores > MAX_WORKER_CORES || r.memory_mib == 0 || r.host.trim().is_empty() {
            tracing::warn!("refused a worker from {peer}: it offers no cores, no memory or no host");
            return Err(Status::invalid_argument("a worker needs a host, at least one core and one MiB"));
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let id = {
            let mut state = self.shared.state();
            state.next_worker += 1;
            let id = format!("worker-{}-{}", state.next_worker, r.host.trim_matches(['[', ']']));
            let _ = tx.send(Ok(proto::MasterToWorker {
                kind: Some(ToWorker::Registered(proto::WorkerRegistered { worker_id: id.clone() })),
            }));
            state.workers.insert(
                id.clone(),
                WorkerInfo {
                    host: r.host.clone(),
                    cores: r.cores,
                    memory_mib: r.memory_mib,
                    cores_used: 0,
                    memory_used_mib: 0,
                    tx,
                    last_heard: Instant::now(),
                },
            );
            tracing::info!("worker {id} registered from {peer} ({} cores, {} MiB)", r.cores, r.memory_mib);
            state.schedule(self.shared.scheduling);
            id
        };
        let shared = self.shared.clone();
        tokio::spawn(async move {
            let reason = loop {
                match inbound.message().await {
                    Ok(Some(proto::WorkerMessage { kind: Some(FromWorker::Exited(e)) })) => {
                        let mut state = shared.state();
                        if let Some(w) = state.workers.get_mut(&id) {
                            w.last_heard = Instant::now();
                        }
                        state.executor_exited(&e.app_id, &e.executor_id, &e.reason);
                        state.schedule(shared.scheduling);
                    }
                    Ok(Some(proto::WorkerMessage { kind: Some(FromWorker::Heartbeat(_)) })) => {
                        if let Some(w) = shared.state().workers.get_mut(&id) {
                            w.last_heard = Instant::now();
                        }
                    }
                    Ok(Some(other)) => break format!("it sent an unexpected message: {other:?}"),
                    Ok(None) => break "its session ended".to_string(),
                    Err(e) => break format!("its connection failed: {}", e.message()),
                }
            };
            let mut state = shared.state();
            state.worker_lost(&id, &reason);
            state.schedule(shared.scheduling);
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::UnboundedReceiverStream::new(rx))))
    }

    async fn application_session(
        &self,
        request: Request<Streaming<proto::ApplicationMessage>>,
    ) -> std::result::Result<Response<Self::ApplicationSessionStream>, Status> {
        let peer = peer(&request);
        let mut inbound = request.into_inner();
        let Some(proto::ApplicationMessage { kind: Some(FromApp::Register(r)) }) = inbound.message().await? else {
            return Err(Status::invalid_argument("an application session starts with RegisterApplication"));
        };
        if Secret::from_hex(&r.secret).is_err() || r.binary_sha256.len() != 32 || r.driver.trim().is_empty() {
            tracing::warn!("refused an application from {peer}: malformed registration");
            return Err(Status::invalid_argument(
                "an application registers its driver's address, a 64-hex-digit secret and a SHA-256",
            ));
        }
        if r.executor_memory_mib == 0 {
            return Err(Status::invalid_argument("an application's executors need at least 1 MiB"));
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let id = {
            let mut state = self.shared.state();
            state.next_app += 1;
            let stamp =
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
            let id = format!("app-{stamp}-{:04}", state.next_app);
            // Registered first; the executors granted at once follow it.
            let pending = tx.clone();
            let (grant_tx, mut grant_rx) = mpsc::unbounded_channel();
            state.apps.push(AppInfo {
                id: id.clone(),
                name: r.name.clone(),
                driver: r.driver.clone(),
                secret: r.secret.clone(),
                binary: r.binary_sha256.clone(),
                cores_max: (r.cores_max > 0).then_some(r.cores_max),
                executor_cores: (r.executor_cores > 0).then_some(r.executor_cores),
                executor_memory_mib: r.executor_memory_mib,
                tx: grant_tx,
                registered: Instant::now(),
                next_executor: 0,
                failures: 0,
                finishing: false,
            });
            state.schedule(self.shared.scheduling);
            let mut granted = Vec::new();
            while let Ok(m) = grant_rx.try_recv() {
                granted.push(m);
            }
            let registered = proto::ApplicationRegistered {
                app_id: id.clone(),
                granted: u32::try_from(granted.len()).unwrap_or(u32::MAX),
            };
            let _ = pending.send(Ok(proto::MasterToApplication { kind: Some(ToApp::Registered(registered)) }));
            for m in granted {
                let _ = pending.send(m);
            }
            if let Some(app) = state.apps.iter_mut().find(|a| a.id == id) {
                app.tx = tx;
            }
            tracing::info!("application {id} (`{}`) registered from {peer}, driver at {}", r.name, r.driver);
            id
        };
        let shared = self.shared.clone();
        tokio::spawn(async move {
            // Its stream ending is its end.
            let reason = loop {
                match inbound.message().await {
                    Ok(Some(proto::ApplicationMessage { kind: Some(FromApp::Finishing(_)) })) => {
                        if let Some(app) = shared.state().apps.iter_mut().find(|a| a.id == id) {
                            app.finishing = true;
                        }
                    }
                    Ok(Some(_)) => break "it sent an unexpected message".to_string(),
                    Ok(None) => break "it finished".to_string(),
                    Err(e) => break format!("its connection failed: {}", e.message()),
                }
            };
            tracing::info!("application {id} ended: {reason}");
            let mut state = shared.state();
            state.remove_app(&id);
            state.schedule(shared.scheduling);
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::UnboundedReceiverStream::new(rx))))
    }

    async fn status(
        &self,
        _request: Request<proto::StatusRequest>,
    ) -> std::result::Result<Response<proto::ClusterStatus>, Status> {
        let state = self.shared.state();
        let workers = state
            .workers
            .iter()
            .map(|(id, w)| proto::WorkerStatus {
                worker_id: id.clone(),
                host: w.host.clone(),
                cores: w.cores,
                cores_used: w.cores_used,
                memory_mib: w.memory_mib,
                memory_used_mib: w.memory_used_mib,
                last_heard_ms: u64::try_from(w.last_heard.elapsed().as_millis()).unwrap_or(u64::MAX),
            })
            .collect();
        let applications = state
            .apps
            .iter()
            .map(|a| {
                let cores = state.app_cores(&a.id);
                proto::ApplicationStatus {
                    app_id: a.id.clone(),
                    name: a.name.clone(),
                    driver: a.driver.clone(),
                    state: if cores > 0 { "RUNNING" } else { "WAITING" }.into(),
                    cores,
                    cores_max: a.cores_max.unwrap_or(0),
                    executor_memory_mib: a.executor_memory_mib,
                    duration_ms: u64::try_from(a.registered.elapsed().as_millis()).unwrap_or(u64::MAX),
                }
            })
            .collect();
        let executors = state
            .executors
            .iter()
            .filter(|(_, e)| !e.stopping)
            .map(|((app, id), e)| proto::ExecutorStatus {
                app_id: app.clone(),
                executor_id: id.clone(),
                worker_id: e.worker.clone(),
                cores: e.cores,
                memory_mib: e.memory_mib,
            })
            .collect();
        Ok(Response::new(proto::ClusterStatus {
            workers,
            applications,
            executors,
            scheduling: self.shared.scheduling.name().into(),
        }))
    }
}
