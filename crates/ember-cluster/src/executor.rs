//! An executor process: registers with its driver, runs the tasks it is sent on slot threads,
//! reports their statuses, and exits when its session ends.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ember_core::runtime::{Executor, ExecutorSpec};
use ember_core::shuffle::MapStatus;
use tokio::sync::mpsc;

use crate::data::{Addresses, Auth, BlockService, Fetcher, FromDriver, Mirror};
use crate::hold::{Changed, Holder};
use crate::tls::Tls;

use crate::auth::{self, Secret};
use crate::error::{ClusterError, Result};
use crate::proto::{self, driver_message::Kind as In, executor_message::Kind as Out};
use crate::{vars, wire};

/// How often an executor tells its driver it is alive, at most (a quarter of the driver's
/// `ember.network.timeout` when that is shorter).
const HEARTBEAT: Duration = Duration::from_secs(3);

/// What the starting process told the executor.
struct Config {
    driver: String,
    id: String,
    cores: usize,
    memory_mib: u64,
    secret: Secret,
    /// The address its data plane listens on and registers.
    host: std::net::IpAddr,
    /// Root of its local files, when the starter chose it.
    local_dir: Option<std::path::PathBuf>,
    /// TLS for its connections and its data plane, when its starter runs with TLS.
    tls: Option<Arc<Tls>>,
}

impl Config {
    /// Reads the executor's settings from its environment and removes them from it, so that
    /// the processes its tasks start (`pipe`) neither see the secret nor become executors.
    fn from_env() -> Result<Config> {
        let config = Self::read_env();
        for name in vars::EXECUTOR {
            // The process is still single-threaded: this runs first thing in `main`, or before it.
            std::env::remove_var(name);
        }
        config
    }

    fn read_env() -> Result<Config> {
        let var = |name: &str| {
            std::env::var(name).map_err(|_| ClusterError::Environment(format!("`{name}` is not set or not UTF-8")))
        };
        let number = |name: &str| -> Result<u64> {
            let v = var(name)?;
            v.trim().parse().map_err(|_| ClusterError::Environment(format!("`{name}` = `{v}` is not a number")))
        };
        let cores = usize::try_from(number(vars::CORES)?).unwrap_or(0);
        let memory_mib = number(vars::MEMORY_MIB)?;
        if cores == 0 || memory_mib == 0 {
            return Err(ClusterError::Environment("an executor needs at least one core and one MiB".into()));
        }
        let host = match std::env::var(vars::HOST) {
            Ok(h) => h
                .trim()
                .parse()
                .map_err(|_| ClusterError::Environment(format!("`{}` = `{h}` is not an IP address", vars::HOST)))?,
            Err(_) => std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
        };
        Ok(Config {
            host,
            local_dir: std::env::var_os(vars::LOCAL_DIR).map(std::path::PathBuf::from),
            driver: var(vars::DRIVER)?,
            id: var(vars::ID)?,
            cores,
            memory_mib,
            secret: Secret::from_hex(&var(vars::SECRET)?)?,
            tls: Tls::load(Tls::settings_from_env().as_ref())?,
        })
    }
}

/// Runs the executor this process was started as; returns the process's exit status.
pub(crate) fn run_from_env() -> i32 {
    let config = match Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ember executor: {e}");
            return 2;
        }
    };
    let id = config.id.clone();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("ember-executor-io")
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ember executor {id}: cannot start its runtime: {e}");
            return 2;
        }
    };
    let (executor, hold_thread, outcome) = runtime.block_on(serve(config));
    // Threads are joined outside the runtime (stopping blocks).
    if let Some(t) = hold_thread {
        let _ = t.join();
    }
    if let Some(executor) = executor {
        executor.stop();
    }
    runtime.shutdown_timeout(Duration::from_secs(1));
    match outcome {
        Ok(()) => 0,
        Err(ClusterError::Refused(reason)) => {
            tracing::error!("executor {id} was refused by its driver: {reason}");
            eprintln!("ember executor {id}: refused by the driver: {reason}");
            3
        }
        Err(e) => {
            tracing::error!("executor {id} ends: {e}");
            eprintln!("ember executor {id}: {e}");
            1
        }
    }
}

/// Registers and serves tasks until the session ends. Returns the executor (if it started) so
/// that the caller stops it outside the runtime.
async fn serve(config: Config) -> (Option<Arc<Executor>>, Option<std::thread::JoinHandle<()>>, Result<()>) {
    let (mut executor, mut hold_thread) = (None, None);
    let outcome = session(config, &mut executor, &mut hold_thread).await;
    (executor, hold_thread, outcome)
}

async fn session(
    config: Config,
    executor: &mut Option<Arc<Executor>>,
    hold_thread: &mut Option<std::thread::JoinHandle<()>>,
) -> Result<()> {
    let binary = *auth::binary_sha256()?;
    let channel = crate::tls::endpoint(&config.driver, config.tls.as_deref())?
        .connect_timeout(Duration::from_secs(10))
        .tcp_nodelay(true)
        .connect()
        .await
        .map_err(|e| crate::tls::hint_mismatch(e.into(), config.tls.is_some()))?;
    let auth_out = Auth::new(Some(&config.secret))?;
    let mut client = proto::driver_client::DriverClient::with_interceptor(channel, auth_out.clone())
        .max_decoding_message_size(crate::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(crate::MAX_MESSAGE_BYTES);
    // The data plane listens before the executor registers, so that its address goes with it;
    // it answers once the executor has started.
    let env_cell = Arc::new(std::sync::OnceLock::new());
    let notices_cell: Arc<std::sync::OnceLock<Arc<dyn Fn(MapStatus, Vec<(Vec<u8>, bool)>) + Send + Sync>>> =
        Arc::new(std::sync::OnceLock::new());
    let blocks_changed_cell: Arc<std::sync::OnceLock<Arc<dyn Fn() + Send + Sync>>> =
        Arc::new(std::sync::OnceLock::new());
    let listener = tokio::net::TcpListener::bind((config.host, 0))
        .await
        .map_err(|source| ClusterError::Io { path: format!("{} (the executor's data plane)", config.host), source })?;
    let data_port =
        listener.local_addr().map_err(|source| ClusterError::Io { path: "the data plane".into(), source })?.port();
    let blocks = tonic::service::interceptor::InterceptedService::new(
        proto::block_transfer_server::BlockTransferServer::new(BlockService {
            env: env_cell.clone(),
            notices: notices_cell.clone(),
            blocks_changed: blocks_changed_cell.clone(),
        })
        .max_decoding_message_size(crate::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(crate::MAX_MESSAGE_BYTES),
        crate::driver::authenticator(config.secret.token()),
    );
    let mut server = crate::tls::server(config.tls.as_deref())?;
    tokio::spawn(async move {
        let incoming = crate::incoming(listener);
        if let Err(e) = server.add_service(blocks).serve_with_incoming(incoming).await {
            tracing::error!("the executor's data plane failed: {e}");
        }
    });
    let (tx, rx) = mpsc::unbounded_channel::<proto::ExecutorMessage>();
    let register = proto::Register {
        executor_id: config.id.clone(),
        host: match config.host {
            std::net::IpAddr::V6(v6) => format!("[{v6}]"),
            v4 => v4.to_string(),
        },
        slots: u32::try_from(config.cores).unwrap_or(u32::MAX),
        memory_bytes: config.memory_mib << 20,
        binary_sha256: binary.to_vec(),
        pid: std::process::id(),
        data_port: u32::from(data_port),
    };
    let _ = tx.send(proto::ExecutorMessage { kind: Some(Out::Register(register)) });
    // Until the driver first answers, a failure may be TLS on one side only.
    let hinted = |s: tonic::Status| crate::tls::hint_mismatch(s.into(), config.tls.is_some());
    let mut inbound =
        client.session(tokio_stream::wrappers::UnboundedReceiverStream::new(rx)).await.map_err(hinted)?.into_inner();
    let settings = match inbound.message().await.map_err(hinted)? {
        Some(proto::DriverMessage { kind: Some(In::Registered(r)) }) => {
            postcard::from_bytes::<ember_core::conf::Settings>(&r.settings)
                .map_err(|e| ClusterError::Protocol(format!("the driver's settings do not decode: {e}")))?
        }
        Some(proto::DriverMessage { kind: Some(In::Refused(r)) }) => return Err(ClusterError::Refused(r.reason)),
        Some(other) => return Err(ClusterError::Protocol(format!("expected Registered, got {other:?}"))),
        None => return Err(ClusterError::Refused("the driver ended the session without an answer".into())),
    };
    let root = config.local_dir.clone().or_else(|| settings.local_dir.clone()).unwrap_or_else(std::env::temp_dir);
    let heartbeat = HEARTBEAT.min(Duration::from_millis(settings.network_timeout_ms / 4).max(Duration::from_millis(5)));
    let spec = ExecutorSpec {
        executor_id: config.id.clone(),
        slots: config.cores,
        memory_bytes: config.memory_mib << 20,
        local_dir: root.join(format!("ember-executor-{}-{}", config.id, std::process::id())),
        settings,
    };
    let running: Arc<Mutex<HashSet<u64>>> = Arc::default();
    let key = config.secret.ship_key(&binary);
    let handle = tokio::runtime::Handle::current();
    let addresses: Addresses = Arc::default();
    let mirror = Arc::new(Mirror::new(client.clone(), handle.clone(), addresses.clone()));
    let fetcher = Arc::new(Fetcher::new(handle.clone(), auth_out, addresses.clone(), config.tls.clone()));
    let peers: Arc<std::sync::RwLock<Vec<String>>> = Arc::default();
    let (holder, wakes) = Holder::new();
    let report: Arc<dyn Fn(ember_core::runtime::TaskStatus) + Send + Sync> = {
        let (tx, running, env_cell) = (tx.clone(), running.clone(), env_cell.clone());
        let (mirror, fetcher, peers, holder) = (mirror.clone(), fetcher.clone(), peers.clone(), holder.clone());
        Arc::new(move |status: ember_core::runtime::TaskStatus| {
            // A finished map output is announced to the other executors at once: reducers
            // pre-scheduled there start without waiting for the driver.
            let mut mapped = None;
            if let Ok(ember_core::runtime::TaskOutput::Map(m)) = &status.result {
                mapped = Some(m.shuffle);
                mirror.notice(m.clone());
                let peers = peers.read().unwrap_or_else(|p| p.into_inner()).clone();
                if !peers.is_empty() {
                    let pushed = env_cell.get().map(|env| small_output(env, m)).unwrap_or_default();
                    fetcher.announce(&peers, m, &pushed);
                }
            }
            running.lock().unwrap_or_else(|p| p.into_inner()).remove(&status.task_id);
            // Where the task's cached partitions are, before the status that makes them useful.
            if let Some(env) = env_cell.get() {
                report_blocks(env, &tx);
            }
            let batch = proto::StatusBatch { statuses: vec![wire::status_message(status)] };
            let _ = tx.send(proto::ExecutorMessage { kind: Some(Out::Statuses(batch)) });
            // A slot is free, and what the task cached is here: a task this releases is queued
            // before this slot looks for its next one.
            holder.changed(Changed::TaskEnded(mapped));
        })
    };
    let statuses = {
        let report = report.clone();
        Box::new(move |status: ember_core::runtime::TaskStatus| report(status))
    };
    let from_driver = Arc::new(FromDriver { driver: client.clone(), handle });
    let started =
        Arc::new(Executor::start(spec, key, (mirror.clone(), fetcher.clone()), from_driver.clone(), statuses)?);
    // A node cut from a task's lineage, cached nowhere any more, is computed from the driver's.
    started.env().set_remote_lineage(from_driver);
    let _ = env_cell.set(started.env().clone());
    {
        let (mirror, holder) = (mirror.clone(), holder.clone());
        let fetcher = fetcher.clone();
        fetcher.set_push_cap(started.env().blocks.budget() / 16);
        let (env, tx) = (started.env().clone(), tx.clone());
        let _ = blocks_changed_cell.set(Arc::new(move || report_blocks(&env, &tx)));
        // Copies of partitions cached at replicated levels go to another executor, the same for
        // a partition whoever computes it.
        let (peers, replicas, me) = (peers.clone(), fetcher.clone(), config.id.clone());
        started.env().blocks.set_replicator(Arc::new(move |rdd, split, data, size, records| {
            let peers = peers.read().unwrap_or_else(|p| p.into_inner()).clone();
            let others: Vec<&String> = peers.iter().filter(|p| **p != me).collect();
            if others.is_empty() {
                return;
            }
            let pick = (rdd.0 as usize).wrapping_mul(31).wrapping_add(split) % others.len();
            let replica = proto::Replica { rdd: rdd.0, split: split as u64, data, size, records };
            replicas.replicate(others[pick], replica);
        }));
        // A task placed away from its cached input reads it from an executor holding it.
        let reader = fetcher.clone();
        started
            .env()
            .blocks
            .set_remote_reader(Arc::new(move |holder, rdd, split| reader.fetch_block(holder, rdd, split)));
        let _ = notices_cell.set(Arc::new(move |status: MapStatus, segments: Vec<(Vec<u8>, bool)>| {
            fetcher.keep_pushed(&status, segments);
            let shuffle = status.shuffle;
            mirror.notice(status);
            holder.changed(Changed::Shuffle(shuffle));
        }));
    }
    *hold_thread = Some({
        holder.start(&started, mirror.clone(), running.clone());
        let holder = holder.clone();
        std::thread::Builder::new()
            .name("ember-hold".into())
            .spawn(move || crate::hold::run(holder, wakes))
            .map_err(|source| ClusterError::Io { path: "the executor's hold thread".into(), source })?
    });
    let executor = executor.insert(started);
    let heartbeat = {
        let (tx, running) = (tx.clone(), running.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(heartbeat);
            loop {
                tick.tick().await;
                let running: Vec<u64> = running.lock().unwrap_or_else(|p| p.into_inner()).iter().copied().collect();
                if tx.send(proto::ExecutorMessage { kind: Some(Out::Heartbeat(proto::Heartbeat { running })) }).is_err()
                {
                    break;
                }
            }
        })
    };
    let outcome = loop {
        match inbound.message().await {
            Ok(Some(proto::DriverMessage { kind: Some(In::Launch(l)) })) => match wire::launches(l) {
                Ok(mut tasks) => {
                    for t in &mut tasks {
                        mirror.observe_epoch(t.epoch);
                        // Its cached input is read from the others.
                        t.preferred.retain(|h| **h != *config.id);
                    }
                    let mut r = running.lock().unwrap_or_else(|p| p.into_inner());
                    r.extend(tasks.iter().map(|t| t.task_id));
                    drop(r);
                    for t in tasks {
                        match t.after.clone() {
                            Some(after) if !after.shuffles.is_empty() || !after.blocks.is_empty() => {
                                holder.hold(t, after)
                            }
                            _ => executor.launch(t),
                        }
                    }
                }
                Err(e) => break Err(e),
            },
            Ok(Some(proto::DriverMessage { kind: Some(In::Kill(k)) })) => {
                // The hold first: a task it releases meanwhile is launched before the executor's
                // kill, which then reaches it.
                for t in holder.kill(&k.task_ids) {
                    report(crate::hold::killed(t));
                }
                executor.kill(&k.task_ids);
            }
            Ok(Some(proto::DriverMessage { kind: Some(In::Peers(p)) })) => {
                let mut ids: Vec<String> = p.executors.keys().filter(|id| **id != config.id).cloned().collect();
                ids.sort();
                let mut live: std::collections::HashSet<String> = p.executors.keys().cloned().collect();
                live.insert(config.id.clone());
                fetcher.keep_streams_to(&live);
                mirror.set_live(live);
                addresses.write().unwrap_or_else(|e| e.into_inner()).extend(p.executors);
                *peers.write().unwrap_or_else(|e| e.into_inner()) = ids;
            }
            Ok(Some(proto::DriverMessage { kind: Some(In::Discard(d)) })) => {
                for bytes in d.map_statuses {
                    match postcard::from_bytes::<MapStatus>(&bytes) {
                        Ok(s) => executor.env().shuffle.delete_output(&s),
                        Err(e) => tracing::warn!("a map status to discard does not decode: {e}"),
                    }
                }
            }
            Ok(Some(proto::DriverMessage { kind: Some(In::RemoveShuffle(r)) })) => {
                // Deleting files (and waiting for a refresh of the mirror) is not the session's time.
                let (env, mirror, fetcher) = (executor.env().clone(), mirror.clone(), fetcher.clone());
                tokio::task::spawn_blocking(move || {
                    let shuffle = ember_core::shuffle::ShuffleId(r.shuffle);
                    fetcher.forget_shuffle(shuffle);
                    env.shuffle.remove_shuffle(shuffle);
                    ember_core::shuffle::MapOutputLocations::remove_shuffle(&*mirror, shuffle);
                });
            }
            Ok(Some(proto::DriverMessage { kind: Some(In::ReleaseBroadcast(b)) })) => {
                executor.env().broadcasts.forget(b.id);
            }
            Ok(Some(proto::DriverMessage { kind: Some(In::Shutdown(s)) })) => {
                tracing::info!("executor {} shuts down: {}", config.id, s.reason);
                break Ok(());
            }
            Ok(Some(other)) => {
                break Err(ClusterError::Protocol(format!("unexpected message from the driver: {other:?}")))
            }
            Ok(None) => break Err(ClusterError::Transport("the driver ended the session".into())),
            Err(e) => break Err(ClusterError::Transport(format!("the driver's session failed: {}", e.message()))),
        }
    };
    heartbeat.abort();
    // Its thread is joined outside the runtime.
    holder.stop();
    outcome
}

/// Every segment of a small output this executor holds in memory, in reduce order (empty for
/// an output on disk or larger than [`crate::data::PUSH_MAX_BYTES`]).
fn small_output(env: &ember_core::env::Env, m: &MapStatus) -> Vec<(Vec<u8>, bool)> {
    if m.data.is_some() {
        return Vec::new();
    }
    let mut out = Vec::new();
    let mut total = 0usize;
    let mut reduce = 0;
    while let Some((_, len)) = m.segments.segment(reduce) {
        total += len as usize + 16;
        if total > crate::data::PUSH_MAX_BYTES {
            return Vec::new();
        }
        let mut segment = Vec::new();
        match env.shuffle.read_segment(m.shuffle, m.map, m.attempt, reduce, &mut segment) {
            Ok(framed) => out.push((segment, framed)),
            // Deleted meanwhile: reducers fetch (and learn it is gone).
            Err(_) => return Vec::new(),
        }
        reduce += 1;
    }
    out
}

/// Sends the driver the cached partitions this executor gained and lost since the last report.
fn report_blocks(env: &ember_core::env::Env, tx: &mpsc::UnboundedSender<proto::ExecutorMessage>) {
    // Taken and sent under one lock, so that reports from several threads reach the driver in
    // the order they were taken.
    static REPORTING: Mutex<()> = Mutex::new(());
    let _order = REPORTING.lock().unwrap_or_else(|p| p.into_inner());
    let (added, removed) = env.blocks.take_location_changes();
    if added.is_empty() && removed.is_empty() {
        return;
    }
    let block = |(rdd, split): (ember_core::storage::RddId, usize)| proto::RddBlock { rdd: rdd.0, split: split as u64 };
    let update = proto::BlockUpdate {
        added: added.into_iter().map(block).collect(),
        removed: removed.into_iter().map(block).collect(),
    };
    let _ = tx.send(proto::ExecutorMessage { kind: Some(Out::Blocks(update)) });
}
