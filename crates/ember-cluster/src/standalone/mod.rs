//! The standalone cluster: a master, workers that start executors, and drivers that ask the
//! master for them (see `proto/ember/cluster/v1/master.proto`).
//!
//! `ember master`, `ember worker`, `ember submit` and `ember status` (the `ember-cli` crate) are
//! thin commands over [`start_master`], [`run_worker`] and [`cluster_status`]; a driver whose
//! master is `ember://HOST:PORT` registers through this module when its context starts.

pub(crate) mod app;
mod master;
mod worker;

use std::time::Duration;

pub use master::{start_master, MasterHandle, MasterOptions, Scheduling};
pub use worker::{run_worker, WorkerOptions};

use crate::auth::Secret;
use crate::data::Auth;
use crate::error::{ClusterError, Result};
pub use crate::proto::{ApplicationStatus, ClusterStatus, ExecutorStatus, WorkerStatus};

/// Asks the master at `address` (`host:port`) for its workers, applications and executors;
/// `secret` is the cluster's, when the master has one; `ssl` this node's TLS settings, when the
/// master runs with TLS.
pub fn cluster_status(
    address: &str,
    secret: Option<&str>,
    ssl: Option<&ember_core::conf::SslSettings>,
) -> Result<ClusterStatus> {
    let secret = secret.map(Secret::from_hex).transpose()?;
    let tls = crate::tls::Tls::load(ssl)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| ClusterError::Io { path: "a network runtime".into(), source })?;
    let tls_on = tls.is_some();
    let asked = runtime.block_on(async {
        let channel = crate::tls::endpoint(address, tls.as_deref())?
            .connect_timeout(Duration::from_secs(10))
            .connect()
            .await
            .map_err(|e| {
                ClusterError::Transport(format!(
                    "cannot reach the master at ember://{address}: {}",
                    crate::error::chain(&e)
                ))
            })?;
        let mut client =
            crate::proto::master_client::MasterClient::with_interceptor(channel, Auth::new(secret.as_ref())?);
        client.status(crate::proto::StatusRequest {}).await.map(tonic::Response::into_inner).map_err(|s| {
            match s.code() {
                tonic::Code::Unauthenticated | tonic::Code::PermissionDenied => ClusterError::from(s),
                _ => ClusterError::Rpc(format!(
                    "cannot reach the master at ember://{address}: {}",
                    crate::error::status_text(&s)
                )),
            }
        })
    });
    asked.map_err(|e| crate::tls::hint_mismatch(e, tls_on))
}

/// The status as text: one table each for workers, applications and executors.
pub fn format_status(address: &str, status: &ClusterStatus) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let cores: u64 = status.workers.iter().map(|w| u64::from(w.cores)).sum();
    let used: u64 = status.workers.iter().map(|w| u64::from(w.cores_used)).sum();
    let _ = writeln!(
        out,
        "master ember://{address} ({} scheduling): {} workers, {used}/{cores} cores in use",
        status.scheduling,
        status.workers.len()
    );
    let _ = writeln!(
        out,
        "\nWORKERS\n{:<28} {:<22} {:>11} {:>19} {:>11}",
        "ID", "HOST", "CORES", "MEMORY (MiB)", "HEARD (ms)"
    );
    for w in &status.workers {
        let _ = writeln!(
            out,
            "{:<28} {:<22} {:>11} {:>19} {:>11}",
            w.worker_id,
            w.host,
            format!("{}/{}", w.cores_used, w.cores),
            format!("{}/{}", w.memory_used_mib, w.memory_mib),
            w.last_heard_ms
        );
    }
    let _ = writeln!(
        out,
        "\nAPPLICATIONS\n{:<22} {:<16} {:<8} {:>6} {:>9} {:>13} {:<22}",
        "ID", "NAME", "STATE", "CORES", "CORES MAX", "DURATION (s)", "DRIVER"
    );
    for a in &status.applications {
        let max = if a.cores_max == 0 { "all".to_string() } else { a.cores_max.to_string() };
        let _ = writeln!(
            out,
            "{:<22} {:<16} {:<8} {:>6} {:>9} {:>13.1} {:<22}",
            a.app_id,
            a.name,
            a.state,
            a.cores,
            max,
            a.duration_ms as f64 / 1e3,
            a.driver
        );
    }
    let _ = writeln!(
        out,
        "\nEXECUTORS\n{:<22} {:<14} {:<28} {:>6} {:>13}",
        "APPLICATION", "ID", "WORKER", "CORES", "MEMORY (MiB)"
    );
    for e in &status.executors {
        let _ = writeln!(
            out,
            "{:<22} {:<14} {:<28} {:>6} {:>13}",
            e.app_id, e.executor_id, e.worker_id, e.cores, e.memory_mib
        );
    }
    out
}
