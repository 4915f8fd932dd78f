//! A driver on a standalone cluster: registers its application with the master, which grants
//! it executors on its workers; the workers start them from the driver's own executable.
//!
//! The application's executors connect to the driver's control service as a local cluster's do.
//! Tasks wait while the application has no executor (the master may grant some later, when an
//! earlier application finishes); an executor the master takes away, or that dies with its
//! worker, is lost and its tasks run again on the others. The application's session with the
//! master lasts as long as its context: when the context stops, the master stops its executors
//! and gives their cores to the applications waiting.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ember_core::runtime::{ClusterBackend, ClusterStart};
use tokio::sync::mpsc;

use crate::auth::{self, Secret};
use crate::data::Auth;
use crate::driver::{Cluster, ControlService, RemoteBackend};
use crate::error::{ClusterError, Result};
use crate::proto::{self, application_message::Kind as ToMaster, master_to_application::Kind as FromMaster};
use crate::tls::Tls;

/// How long the executors granted at registration have to register with the driver.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// How long stopping executors have to end their sessions before the driver lets go.
const EXIT_GRACE: Duration = Duration::from_secs(5);

/// Starts an application on the standalone master at `address` (`host:port`).
pub(crate) fn start_standalone(start: ClusterStart, address: &str) -> Result<ClusterBackend> {
    let settings = &start.settings;
    if settings.driver_host.is_unspecified() {
        return Err(ClusterError::Environment(format!(
            "ember.driver.host = {} is not an address executors can reach: set the driver's own address",
            settings.driver_host
        )));
    }
    // The cluster's secret authenticates the application to the master only; its executors get
    // a secret of the application's own, so that no executor (no user code) ever holds the
    // cluster's.
    let cluster_secret = settings.authenticate_secret.as_ref().map(|s| Secret::from_hex(&s.0)).transpose()?;
    let secret = Secret::generate()?;
    let binary = *auth::binary_sha256()?;
    let cluster =
        Cluster::new(start.app_id.clone(), binary, settings, (start.statuses, start.tracker, start.driver_env))?;
    cluster.set_elastic(true);
    let tls = Tls::load(settings.ssl.as_ref())?;
    let service = ControlService::start(&cluster, settings, &secret, tls.as_deref())?;
    let handle = service.handle();
    let driver = std::net::SocketAddr::new(settings.driver_host, service.address.port());
    let register = proto::RegisterApplication {
        name: settings.app_name.clone(),
        driver: driver.to_string(),
        secret: secret.to_hex(),
        binary_sha256: binary.to_vec(),
        cores_max: settings.cores_max.map_or(0, |c| u32::try_from(c).unwrap_or(u32::MAX)),
        executor_cores: settings.executor_cores.map_or(0, |c| u32::try_from(c).unwrap_or(u32::MAX)),
        executor_memory_mib: (settings.executor_memory_bytes >> 20).max(1),
    };
    let (to_master, to_master_rx) = mpsc::unbounded_channel::<proto::ApplicationMessage>();
    let _ = to_master.send(proto::ApplicationMessage { kind: Some(ToMaster::Register(register)) });
    let registered = handle
        .block_on(register_with(address, cluster_secret.as_ref(), tls.as_deref(), to_master_rx, &cluster))
        .map_err(|e| crate::tls::hint_mismatch(e, tls.is_some()));
    let (app_id, granted, inbound) = match registered {
        Ok(r) => r,
        Err(e) => {
            cluster.shut_down("the application could not register");
            service.stop().shutdown_background();
            return Err(e);
        }
    };
    tracing::info!("application {app_id} registered with ember://{address}; {granted} executors granted");
    if granted == 0 {
        // Jobs wait until the master grants executors: say so, and what is asked for.
        tracing::warn!(
            "application {app_id}: the master at ember://{address} has granted no executors yet; jobs wait until \
             a worker has {} MiB of memory (ember.executor.memory) and {} free (or other applications finish)",
            (settings.executor_memory_bytes >> 20).max(1),
            settings.executor_cores.map_or_else(|| "a core".to_string(), |c| format!("{c} cores")),
        );
    }
    // The master's later grants and removals.
    let watched = Arc::downgrade(&cluster);
    let master = address.to_string();
    handle.spawn(follow_master(inbound, watched, master));
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        let (registered, expected) = cluster.counts();
        if registered >= granted || expected == 0 {
            break;
        }
        if Instant::now() >= deadline {
            tracing::warn!(
                "{registered} of the {granted} executors granted registered within {} s; the rest may join later",
                START_TIMEOUT.as_secs()
            );
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let to_master = Arc::new(Mutex::new(Some(to_master)));
    let before_stop = {
        let to_master = to_master.clone();
        move || {
            if let Some(tx) = &*to_master.lock().unwrap_or_else(|p| p.into_inner()) {
                let finishing =
                    proto::ApplicationMessage { kind: Some(ToMaster::Finishing(proto::ApplicationFinishing {})) };
                let _ = tx.send(finishing);
            }
        }
    };
    let stop = {
        let cluster = cluster.clone();
        move || {
            // Executors were told to shut down; their sessions end as they exit.
            let deadline = Instant::now() + EXIT_GRACE;
            while cluster.counts().0 > 0 && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            // Ending the session tells the master the application is done.
            drop(to_master.lock().unwrap_or_else(|p| p.into_inner()).take());
            let runtime = service.stop();
            // A moment for the session's end to reach the master.
            std::thread::sleep(Duration::from_millis(50));
            runtime.shutdown_background();
        }
    };
    let key = secret.ship_key(&binary);
    let backend = RemoteBackend {
        cluster,
        on_stop: Mutex::new(Some(Box::new(stop))),
        before_stop: Mutex::new(Some(Box::new(before_stop))),
    };
    Ok(ClusterBackend { backend: Arc::new(backend), key })
}

/// Opens the application's session with the master; returns its id, how many executors it was
/// granted at once (they are expected by now), and the rest of the master's messages.
async fn register_with(
    address: &str,
    secret: Option<&Secret>,
    tls: Option<&Tls>,
    outbound: mpsc::UnboundedReceiver<proto::ApplicationMessage>,
    cluster: &Cluster,
) -> Result<(String, usize, tonic::Streaming<proto::MasterToApplication>)> {
    let unreachable = |e: String| ClusterError::Transport(format!("cannot reach the master at ember://{address}: {e}"));
    let channel = crate::tls::endpoint(address, tls)?
        .connect_timeout(Duration::from_secs(10))
        .tcp_nodelay(true)
        .connect()
        .await
        .map_err(|e| unreachable(crate::error::chain(&e)))?;
    let mut client = proto::master_client::MasterClient::with_interceptor(channel, Auth::new(secret)?);
    let opened = client.application_session(tokio_stream::wrappers::UnboundedReceiverStream::new(outbound)).await;
    let mut inbound = match opened {
        Ok(r) => r.into_inner(),
        Err(s) if s.code() == tonic::Code::Unauthenticated => {
            return Err(ClusterError::Refused(format!(
                "the master at ember://{address} refused the application: {} (ember.authenticate.secret must be the \
                 cluster's)",
                s.message()
            )))
        }
        Err(s) => return Err(ClusterError::from(s)),
    };
    let (app_id, granted) = match inbound.message().await? {
        Some(proto::MasterToApplication { kind: Some(FromMaster::Registered(r)) }) => {
            (r.app_id, usize::try_from(r.granted).unwrap_or(usize::MAX))
        }
        other => return Err(ClusterError::Protocol(format!("expected ApplicationRegistered, got {other:?}"))),
    };
    for _ in 0..granted {
        match inbound.message().await? {
            Some(proto::MasterToApplication { kind: Some(FromMaster::Added(a)) }) => cluster.expect(&a.executor_id),
            other => return Err(ClusterError::Protocol(format!("expected ExecutorAdded, got {other:?}"))),
        }
    }
    Ok((app_id, granted, inbound))
}

/// Follows the master's messages until the session ends; then no executor will be granted any
/// more, and tasks that wait for one fail once none is left.
async fn follow_master(
    mut inbound: tonic::Streaming<proto::MasterToApplication>,
    cluster: std::sync::Weak<Cluster>,
    master: String,
) {
    let reason = loop {
        let message = inbound.message().await;
        let Some(cluster) = cluster.upgrade() else { return };
        match message {
            Ok(Some(proto::MasterToApplication { kind: Some(FromMaster::Added(a)) })) => {
                tracing::info!("the master granted executor {} on {} ({} cores)", a.executor_id, a.worker_id, a.cores);
                cluster.expect(&a.executor_id);
            }
            Ok(Some(proto::MasterToApplication { kind: Some(FromMaster::Removed(r)) })) => {
                // Losing an executor reports its tasks to the scheduler: not on a runtime thread.
                let _ = tokio::task::spawn_blocking(move || cluster.executor_removed(&r.executor_id, &r.reason)).await;
            }
            Ok(Some(other)) => break format!("it sent an unexpected message: {other:?}"),
            Ok(None) => break "it ended the session".to_string(),
            Err(e) => break e.message().to_string(),
        }
    };
    let Some(cluster) = cluster.upgrade() else { return };
    if cluster.is_stopped() {
        return;
    }
    tracing::error!("lost the master at ember://{master}: {reason}; no more executors will be granted");
    let _ = tokio::task::spawn_blocking(move || cluster.set_elastic(false)).await;
}
