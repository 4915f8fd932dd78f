//! Conversions between the core's task launches and statuses and the protocol's messages.

use std::collections::HashMap;
use std::sync::Arc;

use ember_core::error::WireError;
use ember_core::runtime::{AccumUpdates, Prerequisites, TaskLaunch, TaskOutput, TaskPayload, TaskStatus};
use ember_core::shuffle::MapStatus;
use ember_core::task::{StageId, TaskMetrics};
use ember_core::{Error, ErrorClass};

use crate::error::{ClusterError, Result};
use crate::proto;

/// Builds one launch message for `tasks`, each distinct body sent once.
pub(crate) fn launch_message(tasks: &[TaskLaunch]) -> Result<proto::LaunchTasks> {
    let mut bodies: Vec<proto::TaskBody> = Vec::new();
    let mut ids: HashMap<*const Vec<u8>, u32> = HashMap::new();
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        let TaskPayload::Encoded(body) = &t.body else {
            return Err(ClusterError::Protocol("a task for a remote executor was not encoded".into()));
        };
        let next = bodies.len() as u32;
        let id = *ids.entry(Arc::as_ptr(body)).or_insert_with(|| {
            bodies.push(proto::TaskBody { id: next, sealed: body.as_ref().clone() });
            next
        });
        out.push(proto::TaskLaunch {
            task_id: t.task_id,
            stage: t.stage.0,
            stage_attempt: t.stage_attempt,
            index: t.index as u64,
            partition: t.partition as u64,
            attempt: t.attempt,
            epoch: t.epoch,
            body: id,
            after: match &t.after {
                // A pre-scheduled task with nothing to wait for still goes as one: never empty.
                Some(after) => postcard::to_allocvec(&**after)
                    .map_err(|e| ClusterError::Protocol(format!("prerequisites do not encode: {e}")))?,
                None => Vec::new(),
            },
            cached_input: t.cached_input.filter(|_| !t.preferred.is_empty()).map(|(rdd, split)| proto::CachedInput {
                rdd: rdd.0,
                split: split as u64,
                holders: t.preferred.iter().map(|h| h.to_string()).collect(),
            }),
        });
    }
    Ok(proto::LaunchTasks { bodies, tasks: out })
}

/// The launches of a message, or the protocol error it is.
pub(crate) fn launches(msg: proto::LaunchTasks) -> Result<Vec<TaskLaunch>> {
    let bodies: HashMap<u32, Arc<Vec<u8>>> = msg.bodies.into_iter().map(|b| (b.id, Arc::new(b.sealed))).collect();
    msg.tasks
        .into_iter()
        .map(|t| {
            let body = bodies.get(&t.body).cloned().ok_or_else(|| {
                ClusterError::Protocol(format!("task {} names body {}, which is not in its message", t.task_id, t.body))
            })?;
            let after = match t.after.is_empty() {
                true => None,
                false => Some(Arc::new(postcard::from_bytes::<Prerequisites>(&t.after).map_err(|e| {
                    ClusterError::Protocol(format!("task {}: its prerequisites do not decode: {e}", t.task_id))
                })?)),
            };
            let (cached_input, preferred) = match t.cached_input {
                Some(c) => (
                    Some((ember_core::storage::RddId(c.rdd), usize_of(c.split, "cached split")?)),
                    c.holders.into_iter().map(Arc::from).collect(),
                ),
                None => (None, Vec::new()),
            };
            Ok(TaskLaunch {
                preferred,
                cached_input,
                after,
                speculative: false,
                task_id: t.task_id,
                stage: StageId(t.stage),
                stage_attempt: t.stage_attempt,
                index: usize_of(t.index, "task index")?,
                partition: usize_of(t.partition, "partition")?,
                attempt: t.attempt,
                epoch: t.epoch,
                body: TaskPayload::Encoded(body),
            })
        })
        .collect()
}

fn usize_of(v: u64, what: &str) -> Result<usize> {
    usize::try_from(v).map_err(|_| ClusterError::Protocol(format!("{what} {v} does not fit this machine")))
}

fn class_of(e: &Error) -> proto::ErrorClass {
    match e.class() {
        ErrorClass::User => proto::ErrorClass::User,
        ErrorClass::Execution => proto::ErrorClass::Execution,
        ErrorClass::FetchFailed => proto::ErrorClass::FetchFailed,
        ErrorClass::Cancelled => proto::ErrorClass::Cancelled,
        ErrorClass::ResourcesExhausted => proto::ErrorClass::ResourcesExhausted,
        ErrorClass::Internal => proto::ErrorClass::Internal,
    }
}

/// A status as the executor sends it.
pub(crate) fn status_message(s: TaskStatus) -> proto::TaskStatus {
    use proto::task_status::Result as R;
    let error = |e: &Error| {
        R::Error(proto::TaskError {
            class: class_of(e) as i32,
            message: e.to_string(),
            detail: postcard::to_allocvec(&WireError::from(e)).unwrap_or_default(),
        })
    };
    let result = match &s.result {
        Ok(TaskOutput::Map(m)) => match postcard::to_allocvec(m) {
            Ok(b) => R::MapStatus(b),
            Err(e) => error(&Error::Serialization(format!("map status does not encode: {e}"))),
        },
        Ok(TaskOutput::Encoded(b)) => R::Value(b.clone()),
        Ok(TaskOutput::Value(_)) => error(&Error::Internal("an executor's result was not encoded".into())),
        Err(e) => error(e),
    };
    let updates = match s.updates {
        AccumUpdates::Encoded(v) => v,
        // The executor's backend encodes them; a local update cannot cross.
        AccumUpdates::Local(_) => Vec::new(),
    };
    proto::TaskStatus {
        task_id: s.task_id,
        stage: s.stage.0,
        stage_attempt: s.stage_attempt,
        index: s.index as u64,
        attempt: s.attempt,
        epoch: s.epoch,
        result: Some(result),
        metrics: postcard::to_allocvec(&s.metrics).unwrap_or_default(),
        accumulator_updates: postcard::to_allocvec(&updates).unwrap_or_default(),
    }
}

/// The status a message carries. A message whose parts do not decode still yields a status for
/// its task, failed with the reason (every launched task gets exactly one).
pub(crate) fn status(m: proto::TaskStatus) -> TaskStatus {
    use proto::task_status::Result as R;
    let decode_failed =
        |what: &str, e: postcard::Error| Error::Serialization(format!("{what} from an executor does not decode: {e}"));
    let mut result = match m.result {
        Some(R::MapStatus(b)) => {
            postcard::from_bytes::<MapStatus>(&b).map(TaskOutput::Map).map_err(|e| decode_failed("map status", e))
        }
        Some(R::Value(b)) => Ok(TaskOutput::Encoded(b)),
        Some(R::Error(e)) => Err(match postcard::from_bytes::<WireError>(&e.detail) {
            Ok(w) => Error::from(w),
            // The detail is what a driver of this version needs; the message still says what
            // happened.
            Err(_) => Error::Internal(format!("executor error of unknown form: {}", e.message)),
        }),
        None => Err(Error::Serialization("a task status from an executor has no result".into())),
    };
    let metrics = match postcard::from_bytes::<TaskMetrics>(&m.metrics) {
        Ok(t) => t,
        Err(e) => {
            result = result.and(Err(decode_failed("task metrics", e)));
            TaskMetrics::default()
        }
    };
    let updates = match postcard::from_bytes::<Vec<(u64, Vec<u8>)>>(&m.accumulator_updates) {
        Ok(u) => u,
        Err(e) => {
            result = result.and(Err(decode_failed("accumulator updates", e)));
            Vec::new()
        }
    };
    TaskStatus {
        task_id: m.task_id,
        stage: StageId(m.stage),
        stage_attempt: m.stage_attempt,
        index: usize::try_from(m.index).unwrap_or(usize::MAX),
        attempt: m.attempt,
        epoch: m.epoch,
        result,
        metrics,
        updates: AccumUpdates::Encoded(updates),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn launch(task_id: u64, body: &Arc<Vec<u8>>) -> TaskLaunch {
        TaskLaunch {
            preferred: Vec::new(),
            cached_input: None,
            after: None,
            speculative: false,
            task_id,
            stage: StageId(3),
            stage_attempt: 1,
            index: task_id as usize,
            partition: 10 + task_id as usize,
            attempt: 0,
            epoch: 7,
            body: TaskPayload::Encoded(body.clone()),
        }
    }

    #[test]
    fn launches_share_bodies_and_round_trip() {
        let (a, b) = (Arc::new(vec![1u8, 2, 3]), Arc::new(vec![9u8]));
        let msg = launch_message(&[launch(1, &a), launch(2, &a), launch(3, &b)]).unwrap();
        assert_eq!(msg.bodies.len(), 2, "a body shared by tasks is sent once");
        let back = launches(msg).unwrap();
        assert_eq!(back.len(), 3);
        for (t, want) in back.iter().zip([&a, &a, &b]) {
            let TaskPayload::Encoded(got) = &t.body else { panic!("encoded") };
            assert_eq!(got.as_ref(), want.as_ref());
            assert_eq!((t.stage, t.partition, t.epoch), (StageId(3), 10 + t.task_id as usize, 7));
        }
    }

    #[test]
    fn a_launch_naming_a_missing_body_is_a_protocol_error() {
        let a = Arc::new(vec![1u8]);
        let mut msg = launch_message(&[launch(1, &a)]).unwrap();
        msg.tasks[0].body = 5;
        assert!(matches!(launches(msg), Err(ClusterError::Protocol(_))));
    }

    #[test]
    fn errors_keep_their_class_and_detail_across() {
        let a = Arc::new(vec![1u8]);
        let e = Error::FetchFailed { shuffle: 4, map: 2, reduce: 1, message: "gone".into() };
        let sent = status_message(launch(1, &a).failed(e));
        let Some(proto::task_status::Result::Error(pe)) = &sent.result else { panic!("an error") };
        assert_eq!(pe.class, proto::ErrorClass::FetchFailed as i32);
        let got = status(sent);
        assert!(matches!(got.result, Err(Error::FetchFailed { shuffle: 4, map: 2, reduce: 1, .. })));
    }

    #[test]
    fn a_status_whose_parts_do_not_decode_is_a_failed_status() {
        let a = Arc::new(vec![1u8]);
        let mut sent = status_message(TaskStatus {
            result: Ok(TaskOutput::Encoded(vec![1, 2])),
            ..launch(1, &a).failed(Error::Stopped)
        });
        sent.metrics = vec![0xff; 3];
        let got = status(sent);
        assert_eq!(got.task_id, 1);
        assert!(matches!(got.result, Err(Error::Serialization(_))));
        let mut sent = status_message(launch(2, &a).failed(Error::Stopped));
        sent.result = Some(proto::task_status::Result::MapStatus(vec![0xff, 0xff]));
        assert!(matches!(status(sent).result, Err(Error::Serialization(_))));
    }
}
