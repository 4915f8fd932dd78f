//! A TPC-H query survives the loss of an executor on `local-cluster`.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use ember_core::Context;
use ember_sql::{tpch, Session};

use crate::support::{context, rows};

/// The pids of the context's `n` executors.
fn executor_pids(ctx: &Context, n: usize) -> HashSet<u32> {
    let mut pids = HashSet::new();
    for _ in 0..20 {
        let got = ctx.parallelize((0..2 * n as u32).collect(), 2 * n).map(|_| std::process::id()).collect().unwrap();
        pids.extend(got);
        if pids.len() >= n {
            break;
        }
    }
    pids
}

pub fn a_query_survives_a_killed_executor() {
    let dir = tempfile::tempdir().unwrap();
    tpch::generate(dir.path(), 0.05, 4, 2).unwrap();
    let query = tpch::query(9).unwrap();
    let reference = {
        let ctx = context("local[2]", &[]);
        let session = Session::new(&ctx);
        tpch::register(&session, dir.path()).unwrap();
        let want = rows(&session.sql(query).unwrap().collect().unwrap());
        ctx.stop();
        want
    };
    assert!(!reference.is_empty());
    // The executor must die while the query runs: kill it a third of the way through a run as long as
    // the previous one took, and try again (on a new cluster) if the query beat the kill.
    for attempt in 0..4 {
        let ctx = context("local-cluster[2,1,2048]", &[("ember.shuffle.inMemoryThreshold", "0")]);
        let pids: Vec<u32> = executor_pids(&ctx, 2).into_iter().collect();
        assert_eq!(pids.len(), 2, "two executors");
        let session = Session::new(&ctx);
        tpch::register(&session, dir.path()).unwrap();
        let started = Instant::now();
        assert_eq!(rows(&session.sql(query).unwrap().collect().unwrap()), reference);
        let baseline = started.elapsed();
        let job = {
            let session = session.clone();
            std::thread::spawn(move || {
                let got = session.sql(query).and_then(|df| df.collect());
                (got, Instant::now())
            })
        };
        std::thread::sleep(baseline / 3);
        let killed_at = Instant::now();
        // SAFETY: `kill` has no memory-safety preconditions.
        assert_eq!(unsafe { libc::kill(pids[attempt % 2] as libc::pid_t, libc::SIGKILL) }, 0);
        let (got, ended) = job.join().unwrap();
        let got = got.unwrap_or_else(|e| panic!("the query failed after an executor was killed: {e}"));
        assert_eq!(rows(&got), reference, "the answer after an executor was lost");
        let summary = ctx.last_job_summary().unwrap();
        let relaunched: usize = summary.stages.iter().map(|s| s.launched.saturating_sub(s.tasks)).sum();
        let failures: u32 = summary.stages.iter().map(|s| s.failed_attempts + s.fetch_failures).sum();
        ctx.stop();
        if ended > killed_at + Duration::from_millis(10) {
            // The lost executor's tasks or outputs were run again.
            assert!(relaunched > 0 || failures > 0, "nothing was recomputed: {summary:?}");
            return;
        }
        eprintln!("attempt {attempt}: the query ended before the kill; trying again");
    }
    panic!("the query always ended before the executor was killed");
}
