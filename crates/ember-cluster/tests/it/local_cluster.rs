//! `local-cluster[W,C,M]`: jobs run in executor processes, which are authenticated, checked,
//! failed over and stopped.

use std::collections::HashSet;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ember_core::{Context, EmberConf};

/// Environment variable naming the file the driver-code test appends to.
pub const MARKER: &str = "EMBER_IT_MARKER";
/// Environment variable that makes this binary a driver that waits to be killed.
pub const SLEEPING_DRIVER: &str = "EMBER_IT_SLEEPING_DRIVER";

fn context(master: &str) -> Context {
    Context::new(EmberConf::new().master(master).unwrap().set("ember.ui.showConsoleProgress", "false").unwrap())
        .unwrap()
}

/// The process ids of the executors that ran a job of `n` tasks.
pub(crate) fn executor_pids(ctx: &Context, n: usize) -> HashSet<u32> {
    ctx.parallelize((0..n as u32).collect(), n).map(|_| std::process::id()).collect().unwrap().into_iter().collect()
}

/// The pids of the application's `expected` executors: jobs of `2 * expected` tasks run until
/// every executor has run one (one job may run on fewer executors than there are, when some
/// finish their tasks before the others take theirs), at most 20 of them.
pub(crate) fn all_executor_pids(ctx: &Context, expected: usize) -> HashSet<u32> {
    let mut pids = HashSet::new();
    for _ in 0..20 {
        pids.extend(executor_pids(ctx, 2 * expected));
        if pids.len() >= expected {
            break;
        }
    }
    pids
}

/// Sends signal `sig` to process `pid`, which must exist.
fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: `kill` with a valid signal number has no memory-safety preconditions.
    assert_eq!(unsafe { libc::kill(pid as libc::pid_t, sig) }, 0, "signal {sig} to {pid}");
}

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // A zombie has exited; only its parent's bookkeeping is left.
        Ok(stat) => !stat.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn narrow_jobs_run_in_executor_processes() {
    let ctx = context("local-cluster[2,1,256]");
    let data: Vec<u64> = (0..10_000).collect();
    let doubled = ctx.parallelize(data.clone(), 8).map(|x| x * 2).collect().unwrap();
    assert_eq!(doubled, data.iter().map(|x| x * 2).collect::<Vec<_>>());
    let evens = ctx.parallelize(data.clone(), 5).filter(|x| x % 2 == 0).count().unwrap();
    assert_eq!(evens, 5_000);
    let words = ctx
        .parallelize(vec!["a b".to_string(), "c".into(), "d e f".into()], 3)
        .flat_map(|l: String| l.split(' ').map(str::to_string).collect::<Vec<_>>())
        .collect()
        .unwrap();
    assert_eq!(words, ["a", "b", "c", "d", "e", "f"]);
    let offset = 7u64;
    let shifted = ctx.parallelize(data.clone(), 4).map_with(offset, |o, x| x + o).reduce(|a, b| a + b).unwrap();
    assert_eq!(shifted, Some(data.iter().map(|x| x + 7).sum()));
    // A task body and a result each far over gRPC's default 4 MiB message limit (one
    // partition of 8-byte values: about 9 MB each way).
    let big: Vec<u64> = (0..1_000_000u64).map(|x| x << 40).collect();
    let back = ctx.parallelize(big.clone(), 1).map(|x| x + 1).collect().unwrap();
    assert_eq!(back.len(), big.len());
    assert!(back.iter().zip(&big).all(|(b, x)| *b == x + 1));
    let pids = executor_pids(&ctx, 16);
    assert_eq!(pids.len(), 2, "two executor processes ran the tasks: {pids:?}");
    assert!(!pids.contains(&std::process::id()), "no task ran in the driver");
}

/// Appends this process's id to `path`: what the program does before it creates its context.
pub fn mark(path: &std::path::Path) {
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path).unwrap();
    writeln!(f, "{}", std::process::id()).unwrap();
}

pub fn driver_code_before_the_context_runs_once() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("marker");
    // `main` marks the file named by this variable right after the executor entry; executors
    // inherit the driver's environment, so an executor that ran the program's code would mark it.
    std::env::set_var(MARKER, &marker);
    mark(&marker);
    let ctx = context("local-cluster[2,1,256]");
    assert_eq!(ctx.parallelize((0..100u32).collect(), 4).count().unwrap(), 100);
    drop(ctx);
    std::env::remove_var(MARKER);
    let lines = std::fs::read_to_string(&marker).unwrap();
    assert_eq!(lines.lines().collect::<Vec<_>>(), [std::process::id().to_string()], "program code ran in an executor");
}

pub fn task_errors_keep_their_class_across_processes() {
    let ctx = context("local-cluster[2,1,256]");
    let err = ctx
        .parallelize((0..4u32).collect(), 4)
        .map(|x| if x == 2 { panic!("boom at {x}") } else { x })
        .collect()
        .unwrap_err();
    assert!(err.to_string().contains("boom at 2"), "{err}");
    let failed = ctx.last_job_summary().unwrap();
    assert_eq!(failed.stages[0].failed_attempts, 4, "a panic is retried up to the attempt limit");
    // Invalid UTF-8 is the input's fault: not retried, on whichever executor it fails.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.txt");
    std::fs::write(&file, b"ok\n\xff\xfe\n").unwrap();
    let err = ctx.text_file(file.to_str().unwrap(), 1).unwrap().count().unwrap_err();
    assert!(err.to_string().contains("invalid UTF-8"), "{err}");
    let summary = ctx.last_job_summary().unwrap();
    assert_eq!(summary.stages[0].launched, 1, "an input error crossed as a retryable one: {summary:?}");
    // The context is still usable.
    assert_eq!(ctx.parallelize((0..10u32).collect(), 2).count().unwrap(), 10);
}

pub fn accumulators_count_once_across_processes() {
    let ctx = context("local-cluster[2,1,256]");
    let seen = ctx.long_accumulator();
    let n = ctx
        .parallelize((0..1_000i64).collect(), 8)
        .map_with(seen.clone(), |acc, x| {
            acc.add(1);
            x
        })
        .count()
        .unwrap();
    assert_eq!(n, 1_000);
    assert_eq!(seen.value().unwrap(), 1_000);
}

/// Starts this binary as an executor of the driver at `port`, as the driver would but with
/// `secret`, and returns its exit status and standard error.
fn run_executor(exe: &std::path::Path, port: u16, id: &str, secret: &str) -> (Option<i32>, String) {
    run_executor_with(exe, port, id, secret, &[])
}

/// [`run_executor`] with more environment variables.
pub(crate) fn run_executor_with(
    exe: &std::path::Path,
    port: u16,
    id: &str,
    secret: &str,
    env: &[(&str, &std::path::Path)],
) -> (Option<i32>, String) {
    let mut child = Command::new(exe)
        .envs(env.iter().copied())
        .env("EMBER_EXECUTOR_DRIVER", format!("127.0.0.1:{port}"))
        .env("EMBER_EXECUTOR_ID", id)
        .env("EMBER_EXECUTOR_CORES", "1")
        .env("EMBER_EXECUTOR_MEMORY_MIB", "64")
        .env("EMBER_AUTH_SECRET", secret)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
            return (status.code(), err);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the executor neither registered nor exited");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn an_executor_with_a_wrong_secret_is_refused() {
    let port = free_port();
    let ctx = Context::new(
        EmberConf::new().master("local-cluster[1,1,256]").unwrap().set("ember.driver.port", port.to_string()).unwrap(),
    )
    .unwrap();
    let exe = std::env::current_exe().unwrap();
    let (code, err) = run_executor(&exe, port, "executor-9", &"ab".repeat(32));
    assert_eq!(code, Some(3), "refused executors exit with status 3: {err}");
    assert!(err.contains("authentication"), "the refusal says why: {err}");
    // No such executor joined, and the application goes on.
    assert_eq!(executor_pids(&ctx, 4).len(), 1);
}

pub fn an_executor_of_another_binary_is_refused() {
    let secret = "0123456789abcdef".repeat(4);
    let port = free_port();
    let ctx = Context::new(
        EmberConf::new()
            .master("local-cluster[1,1,256]")
            .unwrap()
            .set("ember.driver.port", port.to_string())
            .unwrap()
            .set("ember.authenticate.secret", &secret)
            .unwrap(),
    )
    .unwrap();
    // The same code with one byte more: another executable as far as its hash goes.
    let dir = tempfile::tempdir().unwrap();
    let other = dir.path().join("other-build");
    let mut bytes = std::fs::read(std::env::current_exe().unwrap()).unwrap();
    bytes.push(0);
    std::fs::write(&other, &bytes).unwrap();
    drop(bytes);
    std::fs::set_permissions(&other, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let (code, err) = (0..20)
        .find_map(|_| {
            let r = run_executor(&other, port, "executor-0", &secret);
            // A copy just written may still be open in a process forked meanwhile.
            (!r.1.contains("Text file busy")).then_some(r).or_else(|| {
                std::thread::sleep(Duration::from_millis(50));
                None
            })
        })
        .unwrap();
    assert_eq!(code, Some(3), "{err}");
    assert!(err.contains("differs from the driver's"), "the refusal says why: {err}");
    assert_eq!(executor_pids(&ctx, 4).len(), 1);
}

pub fn a_killed_executor_fails_its_tasks_over() {
    let ctx = context("local-cluster[2,1,256]");
    let pids: Vec<u32> = executor_pids(&ctx, 8).into_iter().collect();
    assert_eq!(pids.len(), 2);
    let victim = pids[0];
    let job = {
        let ctx = ctx.clone();
        std::thread::spawn(move || {
            ctx.parallelize((0..12u64).collect(), 12)
                .map(|x| {
                    std::thread::sleep(Duration::from_millis(150));
                    (x, std::process::id())
                })
                .collect()
        })
    };
    std::thread::sleep(Duration::from_millis(400));
    signal(victim, libc::SIGKILL);
    let out = job.join().unwrap().unwrap();
    assert_eq!(out.iter().map(|(x, _)| *x).collect::<Vec<_>>(), (0..12).collect::<Vec<_>>());
    let summary = ctx.last_job_summary().unwrap();
    assert!(summary.stages[0].failed_attempts >= 1, "the lost executor's task was run again: {summary:?}");
    // Later jobs run on the executor left.
    assert_eq!(executor_pids(&ctx, 4), HashSet::from([pids[1]]));
}

pub fn executors_exit_when_the_context_stops() {
    let ctx = context("local-cluster[2,1,256]");
    let pids = executor_pids(&ctx, 8);
    assert_eq!(pids.len(), 2);
    assert!(pids.iter().all(|&p| alive(p)));
    let stopped = Instant::now();
    drop(ctx);
    // Sooner than the driver's grace period before it kills them: they exit on their own.
    wait_until("the executors exited", Duration::from_secs(3), || pids.iter().all(|&p| !alive(p)));
    assert!(stopped.elapsed() < Duration::from_secs(3));
}

/// A driver that starts `local-cluster[1,1,128]`, writes its executor's pid to `path`, and
/// waits to be killed.
pub fn sleeping_driver(path: &std::path::Path) -> ! {
    let ctx = context("local-cluster[1,1,128]");
    let pids = executor_pids(&ctx, 2);
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("{}", pids.iter().next().unwrap())).unwrap();
    std::fs::rename(&tmp, path).unwrap();
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

pub fn executors_die_with_a_killed_driver() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("executor.pid");
    let mut driver = Command::new(std::env::current_exe().unwrap())
        .env(SLEEPING_DRIVER, &file)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    wait_until("the driver started its executor", Duration::from_secs(60), || file.exists());
    let executor: u32 = std::fs::read_to_string(&file).unwrap().trim().parse().unwrap();
    assert!(alive(executor));
    driver.kill().unwrap();
    driver.wait().unwrap();
    wait_until("the executor died with its driver", Duration::from_secs(10), || !alive(executor));
}

pub(crate) fn context_with(master: &str, settings: &[(&str, &str)]) -> Context {
    let mut conf = EmberConf::new().master(master).unwrap().set("ember.ui.showConsoleProgress", "false").unwrap();
    for (k, v) in settings {
        conf = conf.set(k, *v).unwrap();
    }
    Context::new(conf).unwrap()
}

pub fn shuffles_run_across_executor_processes() {
    // Map outputs kept in executor memory (the default) and written to files (threshold 0):
    // both are served to reducers on the other executor.
    // The last: a budget so small that fetch windows shrink to what it grants.
    for (master, threshold) in [
        ("local-cluster[2,1,256]", "1m"),
        ("local-cluster[2,1,256]", "0"),
        ("local-cluster[2,2,256]", "1m"),
        ("local-cluster[2,1,2]", "0"),
    ] {
        let ctx = context_with(master, &[("ember.shuffle.inMemoryThreshold", threshold)]);
        let lines: Vec<String> = (0..2_000).map(|i| format!("w{} w{} x", i % 37, i % 11)).collect();
        let counts: std::collections::BTreeMap<String, u64> = ctx
            .parallelize(lines.clone(), 6)
            .flat_map(|l: String| l.split(' ').map(str::to_string).collect::<Vec<_>>())
            .map(|w| (w, 1u64))
            .reduce_by_key(|a, b| a + b, Some(5))
            .collect()
            .unwrap()
            .into_iter()
            .collect();
        let mut want = std::collections::BTreeMap::new();
        for w in lines.iter().flat_map(|l| l.split(' ')) {
            *want.entry(w.to_string()).or_insert(0u64) += 1;
        }
        assert_eq!(counts, want, "word count, threshold {threshold}");
        let mut seed = 99u64;
        let keys: Vec<u64> = (0..50_000)
            .map(|_| {
                seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                seed >> 20
            })
            .collect();
        let sorted = ctx.parallelize(keys.iter().map(|&k| (k, ())).collect(), 7).sort_by_key(true, Some(4)).unwrap();
        let got: Vec<u64> = sorted.keys().collect().unwrap();
        let mut want = keys.clone();
        want.sort_unstable();
        assert_eq!(got, want, "sort, threshold {threshold}");
        let left = ctx.parallelize((0..300u32).map(|i| (i % 50, i)).collect(), 4);
        let right = ctx.parallelize((0..100u32).map(|i| (i % 25, i * 10)).collect(), 3);
        let mut joined = left.join(&right, Some(3)).collect().unwrap();
        joined.sort_unstable();
        let mut want: Vec<(u32, (u32, u32))> = Vec::new();
        for i in 0..300u32 {
            for j in 0..100u32 {
                if i % 50 == j % 25 {
                    want.push((i % 50, (i, j * 10)));
                }
            }
        }
        want.sort_unstable();
        assert_eq!(joined, want, "join, threshold {threshold}");
        let groups =
            ctx.parallelize((0..1_000u32).collect(), 4).map(|i| (i % 10, i)).group_by_key(Some(3)).count().unwrap();
        assert_eq!(groups, 10);
        let summary = ctx.last_job_summary().unwrap();
        assert!(summary.metrics().shuffle_records_read > 0, "{summary:?}");
    }
}

/// Environment variable naming a directory where reducers of the mid-shuffle test announce
/// themselves.
const REDUCERS_STARTED: &str = "EMBER_IT_REDUCERS_STARTED";

pub fn a_killed_executor_mid_shuffle_recomputes_only_its_outputs() {
    let dir = tempfile::tempdir().unwrap();
    // Executors inherit it: set before they start.
    std::env::set_var(REDUCERS_STARTED, dir.path());
    let ctx = context_with("local-cluster[3,1,512]", &[("ember.shuffle.inMemoryThreshold", "0")]);
    std::env::remove_var(REDUCERS_STARTED);
    let pids: Vec<u32> = executor_pids(&ctx, 12).into_iter().collect();
    assert_eq!(pids.len(), 3);
    let victim = pids[0];
    let maps = 12usize;
    let job = {
        let ctx = ctx.clone();
        std::thread::spawn(move || {
            ctx.parallelize((0..1_000_000u64).collect(), maps)
                .map(|x| (x % 1_000, x))
                .reduce_by_key(|a, b| a + b, Some(9))
                .map_partitions(|it| {
                    // Slow reducers, which say they started: the executor dies while they run.
                    if let Some(d) = std::env::var_os(REDUCERS_STARTED) {
                        let _ = std::fs::write(std::path::Path::new(&d).join(std::process::id().to_string()), b"");
                    }
                    std::thread::sleep(Duration::from_millis(300));
                    it
                })
                .collect()
        })
    };
    // Every map output is registered once a reducer runs: kill one executor then.
    wait_until("a reducer started", Duration::from_secs(60), || {
        std::fs::read_dir(dir.path()).unwrap().next().is_some()
    });
    signal(victim, libc::SIGKILL);
    let mut out = job.join().unwrap().unwrap();
    out.sort_unstable();
    let want: Vec<(u64, u64)> = (0..1_000u64).map(|k| (k, (0..1_000u64).map(|i| i * 1_000 + k).sum())).collect();
    assert_eq!(out, want);
    let summary = ctx.last_job_summary().unwrap();
    let map_launched: usize = summary.stages.iter().filter(|s| s.name.contains("shuffle")).map(|s| s.launched).sum();
    assert!(map_launched > maps, "the lost outputs were recomputed: {summary:?}");
    assert!(map_launched < 2 * maps, "only the lost outputs were recomputed, not every map: {summary:?}");
}

pub fn a_job_fails_when_no_executor_is_left() {
    let ctx = context("local-cluster[1,1,128]");
    let pid = *executor_pids(&ctx, 1).iter().next().unwrap();
    let job = {
        let ctx = ctx.clone();
        std::thread::spawn(move || {
            ctx.parallelize((0..8u32).collect(), 8)
                .map(|x| {
                    std::thread::sleep(Duration::from_millis(200));
                    x
                })
                .collect()
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    signal(pid, libc::SIGKILL);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !job.is_finished() {
        assert!(Instant::now() < deadline, "the job waits forever for executors");
        std::thread::sleep(Duration::from_millis(20));
    }
    let err = job.join().unwrap().unwrap_err();
    assert!(err.to_string().contains("no executor is left"), "{err}");
}

pub fn a_silent_executor_is_lost_after_the_network_timeout() {
    let ctx = context_with("local-cluster[2,1,128]", &[("ember.network.timeout", "2s")]);
    let pids: Vec<u32> = executor_pids(&ctx, 8).into_iter().collect();
    assert_eq!(pids.len(), 2);
    let frozen = pids[0];
    signal(frozen, libc::SIGSTOP);
    // The frozen executor keeps its connection open but answers nothing: its tasks run again on
    // the other once the timeout has passed.
    let job = {
        let ctx = ctx.clone();
        std::thread::spawn(move || ctx.parallelize((0..8u32).collect(), 8).map(|x| (x, std::process::id())).collect())
    };
    let started = Instant::now();
    while !job.is_finished() {
        assert!(started.elapsed() < Duration::from_secs(20), "the frozen executor's tasks never ran again");
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = job.join().unwrap().unwrap();
    assert_eq!(out.iter().map(|r| r.0).collect::<Vec<_>>(), (0..8).collect::<Vec<_>>());
    assert!(out.iter().all(|r| r.1 == pids[1]), "{out:?}");
    // Clean-up: it may be gone already.
    // SAFETY: `kill` with a valid signal number has no memory-safety preconditions.
    unsafe {
        libc::kill(frozen as libc::pid_t, libc::SIGKILL);
    }
}

pub fn broadcasts_reach_executor_processes() {
    let ctx = context("local-cluster[2,1,256]");
    // Several chunks of the driver's stream.
    let table: Vec<u64> = (0..400_000).map(|i| i * 3).collect();
    let bc = ctx.broadcast(table.clone());
    let out = ctx
        .parallelize((0..1_000u64).collect(), 8)
        .map_with(bc.clone(), |b, i| (b.value()[i as usize * 400], b.value().len(), std::process::id()))
        .collect()
        .unwrap();
    assert_eq!(out.iter().map(|r| r.0).collect::<Vec<_>>(), (0..1_000).map(|i| table[i * 400]).collect::<Vec<_>>());
    assert!(out.iter().all(|r| r.1 == table.len()));
    assert_eq!(out.iter().map(|r| r.2).collect::<HashSet<_>>().len(), 2, "both executors read it");
    // A second job reuses each executor's copy; a released value is gone from the driver.
    let sum = ctx
        .parallelize((0..10u64).collect(), 4)
        .map_with(bc.clone(), |b, i| b.value()[i as usize])
        .reduce(|a, b| a + b);
    assert_eq!(sum.unwrap(), Some((0..10).map(|i| i * 3).sum()));
    let id = bc.id();
    drop(bc);
    assert_eq!(ctx.env().broadcasts.len(), 0);
    assert!(ctx.env().broadcasts.published_bytes(id).is_err());
}

/// Files under the local directories of the executor processes `pids` whose paths contain
/// `part` (the executors' directories are `ember-executor-ID-PID` in the temporary directory).
fn executor_files(pids: &HashSet<u32>, part: &str) -> usize {
    fn walk(dir: &std::path::Path, part: &str) -> usize {
        std::fs::read_dir(dir).map_or(0, |entries| {
            entries
                .flatten()
                .map(|e| {
                    let p = e.path();
                    if p.is_dir() {
                        walk(&p, part)
                    } else {
                        usize::from(p.to_string_lossy().contains(part))
                    }
                })
                .sum()
        })
    }
    std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .flatten()
        .filter(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            name.starts_with("ember-executor-") && pids.iter().any(|p| name.ends_with(&format!("-{p}")))
        })
        .map(|e| walk(&e.path(), part))
        .sum()
}

pub fn executors_delete_the_outputs_of_a_removed_shuffle() {
    let ctx = context_with("local-cluster[2,1,256]", &[("ember.shuffle.inMemoryThreshold", "0")]);
    let pids = executor_pids(&ctx, 8);
    {
        let counts =
            ctx.parallelize((0..10_000u32).collect(), 6).map(|x| (x % 100, 1u32)).reduce_by_key(|a, b| a + b, Some(4));
        assert_eq!(counts.count().unwrap(), 100);
        assert!(executor_files(&pids, "shuffle_") > 0, "the map outputs are files on the executors");
    }
    // The driver's last handle on the shuffle is gone: the executors delete its files.
    wait_until("the executors deleted the shuffle's files", Duration::from_secs(10), || {
        executor_files(&pids, "shuffle_") == 0
    });
}

/// `0..n` in `parts` partitions, persisted at `level` and computed once (checked), with an
/// accumulator that counts every record computed: what a test of cached input reads.
fn counted_cache(
    ctx: &Context,
    n: u64,
    parts: usize,
    level: ember_core::StorageLevel,
) -> (ember_core::Rdd<u64>, ember_core::accumulator::Accumulator<ember_core::accumulator::LongSum>) {
    let computed = ctx.long_accumulator();
    let cached = ctx
        .parallelize((0..n).collect(), parts)
        .map_with(computed.clone(), |acc, x| {
            acc.add(1);
            x
        })
        .persist(level)
        .unwrap();
    assert_eq!(cached.count().unwrap(), n);
    assert_eq!(computed.value().unwrap(), n as i64);
    (cached, computed)
}

/// Cached partitions are reported to the driver, and tasks that read them run where they are:
/// jobs over a cached RDD never compute it again, and no partition is read by (and so copied
/// to) another executor, although they are spread over two executors with one slot each.
pub fn tasks_run_where_their_cached_input_is() {
    let ctx = context("local-cluster[2,1,256]");
    let (cached, computed) = counted_cache(&ctx, 4000, 8, ember_core::StorageLevel::MemoryOnly);
    let locations = &ctx.env().block_locations;
    let held: Vec<usize> = ["executor-0", "executor-1"].iter().map(|e| locations.held_by(e).len()).collect();
    assert_eq!(held.iter().sum::<usize>(), 8, "every cached partition has a known location: {held:?}");
    for round in 0..6u64 {
        let sum = cached.map_with(round, |r, x| x + r).reduce(|a, b| a + b).unwrap();
        assert_eq!(sum, Some((0..4000u64).map(|x| x + round).sum()));
        // Zipped with itself through a narrow chain: the preference is found up the lineage.
        let pairs = cached.map(|x| x * 2).zip(&cached).unwrap().filter(|(a, b)| *a == 2 * *b).count().unwrap();
        assert_eq!(pairs, 4000);
    }
    assert_eq!(computed.value().unwrap(), 4000, "a cached partition was computed again");
    // A task run away from its partition would have read it and kept a copy.
    let id = cached.id();
    assert!((0..8).all(|s| locations.locations(id, s).len() == 1), "a task ran away from its cached input");
}

/// A node cut from a task's lineage because the driver took it for cached, but cached nowhere
/// (the executors never computed it): each executor asks the driver for its lineage and
/// computes the partition once from it, and the next job reads what that cached.
pub fn a_cut_node_cached_nowhere_is_computed_from_the_drivers_lineage() {
    let ctx = context("local-cluster[2,1,256]");
    let computed = ctx.long_accumulator();
    let mid = ctx
        .parallelize((0..4000u64).collect(), 8)
        .map(|x| x + 3)
        .map_with(computed.clone(), |acc, x| {
            acc.add(1);
            x * 2
        })
        .cache()
        .unwrap();
    let locations = &ctx.env().block_locations;
    let holders: [std::sync::Arc<str>; 2] = [std::sync::Arc::from("executor-0"), std::sync::Arc::from("executor-1")];
    for split in 0..8 {
        locations.added(&holders[split % 2], mid.id(), split);
    }
    let top = mid.map(|x| x + 1);
    assert_eq!(top.collect().unwrap(), (0..4000u64).map(|x| (x + 3) * 2 + 1).collect::<Vec<_>>());
    assert!(!ctx.env().lineages.is_empty(), "the task's lineage was not cut at the node");
    assert_eq!(computed.value().unwrap(), 4000, "every partition is computed once");
    // Eight tasks missed the node on two executors: each executor fetched its lineage once.
    assert_eq!(ctx.env().lineages.served(), 2, "executors fetched the same lineage again");
    assert_eq!(top.map(|x| x * 2).count().unwrap(), 4000);
    assert_eq!(computed.value().unwrap(), 4000, "a partition computed from the driver's lineage was not cached");
}

/// One iteration of a running sum (Drizzle's example): numbers keyed by (number + offset) mod
/// `tasks`, summed through a shuffle, added to the previous state (cached, zipped by partition).
fn running_sum_step(
    data: &ember_core::Rdd<u64>,
    state: &ember_core::Rdd<(u64, u64)>,
    (offset, tasks, victim): (u64, usize, u32),
) -> ember_core::Rdd<(u64, u64)> {
    let sums = data
        .map_with((offset, tasks as u64, victim), |&(off, n, victim), x| {
            // The victim executor dies in the middle of the group (once, as it never comes back).
            if victim != 0 && std::process::id() == victim && off >= 10 * 4000 {
                std::process::abort();
            }
            ((x + off) % n, x + off)
        })
        .reduce_by_key_with(ember_core::IndexPartitioner::new(tasks), |a, b| a + b);
    sums.zip(state)
        .unwrap()
        .map(|((k, inc), (_, old))| (k, old + inc))
        .persist(ember_core::StorageLevel::MemoryOnly)
        .unwrap()
}

/// The running sums after each of `iters` iterations over 1..=n, as plain Rust computes them.
fn running_sum_model(n: u64, tasks: u64, iters: usize) -> Vec<Vec<(u64, u64)>> {
    let mut state = vec![0u64; tasks as usize];
    let mut out = Vec::new();
    for j in 0..iters as u64 {
        for x in 1..=n {
            let v = x + j * n;
            state[(v % tasks) as usize] += v;
        }
        out.push((0..tasks).map(|k| (k, state[k as usize])).collect());
    }
    out
}

/// Runs `iters` running-sum iterations on `ctx` in groups of `group` jobs; returns each job's
/// result.
/// Returns every iteration's result, and its state's RDD id.
fn running_sum_group(
    ctx: &Context,
    (iters, group): (usize, usize),
    victim: u32,
) -> (Vec<Vec<(u64, u64)>>, Vec<ember_core::storage::RddId>) {
    let (n, tasks) = (4000u64, 4usize);
    let data = ctx.parallelize((1..=n).collect(), tasks).cache().unwrap();
    let mut state = ctx
        .parallelize((0..tasks as u64).map(|k| (k, 0u64)).collect(), tasks)
        .partition_by(ember_core::IndexPartitioner::new(tasks))
        .cache()
        .unwrap();
    assert_eq!(data.count().unwrap(), n);
    assert_eq!(state.count().unwrap(), tasks as u64);
    let mut batch = Vec::new();
    for j in 0..iters {
        let next = running_sum_step(&data, &state, (j as u64 * n, tasks, victim));
        batch.push(next.clone());
        state = next;
    }
    let collect = || {
        ember_core::ship::Ship::new(ember_core::rdd::CollectPartition::default())
            as ember_core::ship::Ship<dyn ember_core::PartitionFn<(u64, u64), Vec<(u64, u64)>>>
    };
    let mut results = Vec::new();
    for chunk in batch.chunks(group) {
        let jobs = chunk.iter().map(|r| (r.clone(), collect())).collect();
        let done = ctx.run_jobs(jobs).unwrap();
        results.extend(done.into_iter().map(|parts| parts.into_iter().flatten().collect::<Vec<_>>()));
    }
    (results, batch.iter().map(|r| r.id()).collect())
}

/// Drizzle's group scheduling across processes: a group of dependent jobs goes out in one
/// round, its reducers pre-scheduled on the executors and started by the map outputs the other
/// executors announce; every job's result is exact. A lone job is scheduled stage by stage.
pub fn a_group_of_jobs_is_prescheduled_across_executors() {
    let ctx = context("local-cluster[2,1,256]");
    let start = Instant::now();
    let (results, states) = running_sum_group(&ctx, (12, 2), 0);
    let took = start.elapsed();
    assert_eq!(results, running_sum_model(4000, 4, 12));
    // Reducers start on the map outputs the other executor announces. Were the announcements
    // lost, every group would wait 300 ms before its executors ask the driver: six groups could
    // not end within 1.2 s (they take about 0.3 s).
    assert!(took < Duration::from_millis(1200), "reducers waited for the driver: {took:?}");
    // Later tasks carry earlier states (cached before their group, or made by an earlier job
    // of it) as stubs, not their lineage.
    let cut = states.iter().filter(|s| ctx.env().lineages.contains(**s)).count();
    assert!(cut >= 10, "only {cut} of 12 states were cut from later tasks' lineages");
    let summaries = ctx.job_summaries();
    let group = &summaries[summaries.len() - 12..];
    for s in group {
        assert!(s.succeeded);
        let reducers = s.stages.iter().filter(|st| st.name.contains("map")).count();
        assert!(reducers > 0, "{s:?}");
        assert!(s.stages.iter().any(|st| st.prescheduled), "job {} was not pre-scheduled: {s:?}", s.id.0);
    }
    // A single job: no group, no pre-scheduling.
    let n = ctx
        .parallelize((0..100u64).collect(), 4)
        .map(|x| (x % 3, x))
        .reduce_by_key(|a, b| a + b, None)
        .count()
        .unwrap();
    assert_eq!(n, 3);
    let last = ctx.last_job_summary().unwrap();
    assert!(last.stages.iter().all(|st| !st.prescheduled), "{last:?}");
}

/// An executor that dies in the middle of a pre-scheduled group: its tasks (held or running)
/// fail over, its cached partitions and map outputs are recomputed, and every job's result is
/// still exact.
pub fn a_prescheduled_group_survives_a_lost_executor() {
    let ctx = context_with("local-cluster[3,1,256]", &[("ember.locality.wait", "100ms")]);
    let pids: Vec<u32> = executor_pids(&ctx, 12).into_iter().collect();
    assert_eq!(pids.len(), 3);
    let victim = pids[0];
    let (results, _) = running_sum_group(&ctx, (20, 20), victim);
    assert_eq!(results, running_sum_model(4000, 4, 20));
    assert!(!alive(victim), "the victim executor ran a task of iteration 10 or later and died");
    let failed: u32 = ctx.job_summaries().iter().flat_map(|s| s.stages.iter()).map(|st| st.failed_attempts).sum();
    assert!(failed > 0, "the loss failed tasks over");
}

/// Jobs one at a time over a chain of cached partitions (each iteration's state cached where the
/// previous one was): an executor lost after ten of them takes its whole chain with it, and the
/// next job recomputes every lost partition and map output at once, not one fetch failure
/// (and stage attempt) at a time.
pub fn a_lost_chain_of_cached_partitions_is_recomputed() {
    let ctx = context("local-cluster[3,1,256]");
    let pids: Vec<u32> = executor_pids(&ctx, 12).into_iter().collect();
    let victim = pids[0];
    let (results, _) = running_sum_group(&ctx, (20, 1), victim);
    assert_eq!(results, running_sum_model(4000, 4, 20));
    assert!(!alive(victim));
    let summaries = ctx.job_summaries();
    assert!(summaries.iter().all(|s| s.succeeded));
    let fetch_failures: u32 = summaries.iter().flat_map(|s| s.stages.iter()).map(|st| st.fetch_failures).max().unwrap();
    assert!(fetch_failures <= 2, "lost outputs were found one fetch failure at a time: {fetch_failures}");
}

/// How long the straggler of the speculation test sleeps.
const STRAGGLER: Duration = Duration::from_secs(8);

/// A straggler with `ember.speculation` on: the first attempt of one task sleeps; a copy on the
/// other executor wins, the job ends in well under the straggler's time, the losing attempt is
/// killed and its accumulator updates never count.
pub fn a_straggler_is_overtaken_by_its_speculative_copy() {
    let ctx =
        context_with("local-cluster[2,1,256]", &[("ember.speculation", "true"), ("ember.speculation.quantile", "0.5")]);
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("straggler").display().to_string();
    let seen = ctx.long_accumulator();
    let start = Instant::now();
    let n = ctx
        .parallelize((0..8000u64).collect(), 8)
        .map_with((marker, seen.clone()), |(marker, seen), x| {
            // Only the first attempt to reach this record sleeps (it makes the marker).
            if x == 5000 && std::fs::OpenOptions::new().write(true).create_new(true).open(marker).is_ok() {
                std::thread::sleep(STRAGGLER);
            }
            seen.add(1);
            x
        })
        .count()
        .unwrap();
    let took = start.elapsed();
    assert_eq!(n, 8000);
    assert!(took < STRAGGLER / 2, "the job waited for its straggler: {took:?}");
    // The straggler wakes up and finishes its partition; killed and forgotten, it counts nothing.
    std::thread::sleep(STRAGGLER.saturating_sub(start.elapsed()) + Duration::from_millis(500));
    assert_eq!(seen.value().unwrap(), 8000, "accumulator updates counted once");
    let summary = ctx.last_job_summary().unwrap();
    assert_eq!(summary.stages.iter().map(|s| s.speculative_copies).sum::<usize>(), 1, "{summary:?}");
    assert_eq!(summary.stages.iter().map(|s| s.tasks).sum::<usize>(), 8);
}

/// An executor on which every task fails is excluded for the application after
/// `ember.excludeOnFailure.maxFailures` failures in a row: the job still succeeds (its tasks are
/// retried on the other executor instead of failing four times on the bad one), and later jobs
/// run only on the good executor.
pub fn an_executor_that_keeps_failing_tasks_is_excluded() {
    let ctx = context("local-cluster[2,1,256]");
    let pids: Vec<u32> = executor_pids(&ctx, 8).into_iter().collect();
    assert_eq!(pids.len(), 2);
    let bad = pids[0];
    let n = ctx
        .parallelize((0..2000u64).collect(), 40)
        .map_with(bad, |&bad, x| {
            if std::process::id() == bad {
                panic!("this executor is broken");
            }
            x
        })
        .count()
        .unwrap();
    assert_eq!(n, 2000);
    let after = executor_pids(&ctx, 8);
    assert_eq!(after.len(), 1);
    assert!(!after.contains(&bad), "the excluded executor got tasks again");
    assert!(alive(bad), "excluded, not killed");
}

/// A shuffle file corrupted on one executor and another deleted: the reducers that meet them
/// report fetch failures, exactly those two map outputs are recomputed, and the answer is right.
pub fn damaged_shuffle_files_on_executors_are_recomputed() {
    let ctx = context_with("local-cluster[2,1,256]", &[("ember.shuffle.inMemoryThreshold", "0")]);
    let model: Vec<(u64, u64)> = {
        let mut sums = vec![0u64; 1000];
        for i in 0..40_000u64 {
            sums[(i % 1000) as usize] += i * 2;
        }
        sums.into_iter().enumerate().map(|(k, v)| (k as u64, v)).collect()
    };
    let r =
        ctx.parallelize((0..40_000u64).map(|i| (i % 1000, i * 2)).collect(), 4).reduce_by_key(|a, b| a + b, Some(3));
    let sorted = |mut v: Vec<(u64, u64)>| {
        v.sort();
        v
    };
    assert_eq!(sorted(r.collect().unwrap()), model);
    let shuffle = match &r.dependencies()[0] {
        ember_core::Dependency::Shuffle(d) => d.shuffle_id(),
        other => panic!("expected a shuffle dependency, got {other:?}"),
    };
    let statuses = ctx.map_output_tracker().statuses(shuffle);
    let corrupt = statuses[1].clone().expect("map 1 is registered");
    let deleted = statuses[2].clone().expect("map 2 is registered");
    let path = corrupt.data.clone().expect("a file-backed map output");
    let mut bytes = std::fs::read(&path).unwrap();
    let mut start = 0usize;
    for len in corrupt.segments.sizes() {
        if len > 0 {
            bytes[start + len as usize / 2] ^= 0x5a;
        }
        start += len as usize;
    }
    std::fs::write(&path, bytes).unwrap();
    std::fs::remove_file(deleted.data.clone().expect("a file-backed map output")).unwrap();

    assert_eq!(sorted(r.collect().unwrap()), model, "the damaged outputs are recomputed");
    let summary = ctx.last_job_summary().unwrap();
    let map_stage = summary.stages.iter().find(|s| s.name.starts_with("shuffle ")).expect("the map stage ran again");
    assert_eq!(map_stage.launched, 2, "only the two damaged maps ran again: {summary:?}");
    let reading = summary.stages.iter().find(|s| !s.name.starts_with("shuffle ")).expect("the reading stage");
    assert!(reading.fetch_failures > 0, "{summary:?}");
}

/// A partition cached at a replicated level (`MemoryOnly2`) is kept on two executors; when one
/// of them is killed, jobs over the cached RDD read the other copy: nothing is computed again.
pub fn a_replicated_partition_survives_the_loss_of_an_executor() {
    let ctx = context_with("local-cluster[3,1,256]", &[("ember.locality.wait", "10s")]);
    let (cached, computed) = counted_cache(&ctx, 6000, 6, ember_core::StorageLevel::MemoryOnly2);
    let locations = ctx.env().block_locations.clone();
    let id = cached.id();
    wait_until("every partition has two copies", Duration::from_secs(20), || {
        (0..6).all(|s| locations.locations(id, s).len() == 2)
    });
    // An executor that holds cached partitions (tasks over the cache run where it is).
    let holders: HashSet<u32> = cached.map(|_| std::process::id()).collect().unwrap().into_iter().collect();
    let victim = *holders.iter().next().unwrap();
    signal(victim, libc::SIGKILL);
    wait_until("the killed executor is gone", Duration::from_secs(10), || !alive(victim));
    for _ in 0..3 {
        assert_eq!(cached.reduce(|a, b| a + b).unwrap(), Some((0..6000u64).sum()));
    }
    assert_eq!(computed.value().unwrap(), 6000, "a partition was computed again");
    assert!((0..6).all(|s| !locations.locations(id, s).is_empty()));
}

pub fn a_task_away_from_its_cached_input_reads_it_from_a_holder() {
    // No waiting for a busy holder: a task whose cached input is there runs elsewhere at once.
    let ctx = context_with("local-cluster[2,1,256]", &[("ember.locality.wait", "0")]);
    let (cached, computed) = counted_cache(&ctx, 4000, 2, ember_core::StorageLevel::MemoryOnly);
    // Partition 0's holder is kept busy by a task of another job, which runs there (its input
    // is there) and waits until the test lets it go (or a minute has passed).
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("busy").to_str().unwrap().to_string();
    let release = dir.path().join("release").to_str().unwrap().to_string();
    let busy = {
        let (cached, files) = (cached.clone(), (marker.clone(), release.clone()));
        std::thread::spawn(move || {
            cached
                .map_with(files, |(m, r), x| {
                    if x == 0 {
                        std::fs::write(m, b"busy").unwrap();
                        let until = Instant::now() + Duration::from_secs(60);
                        while !std::path::Path::new(r).exists() && Instant::now() < until {
                            std::thread::sleep(Duration::from_millis(10));
                        }
                    }
                    x
                })
                .count()
        })
    };
    wait_until("the holder is busy", Duration::from_secs(30), || std::path::Path::new(&marker).exists());
    let sum = cached.map(|x| x + 1).reduce(|a, b| a + b).unwrap();
    assert_eq!(sum, Some((1..=4000u64).sum()));
    assert_eq!(computed.value().unwrap(), 4000, "a partition held elsewhere was computed again");
    std::fs::write(&release, b"go").unwrap();
    assert_eq!(busy.join().unwrap().unwrap(), 4000);
    // The reader kept what it read: partition 0 is now on both executors.
    let locations = &ctx.env().block_locations;
    assert_eq!(locations.locations(cached.id(), 0).len(), 2, "{:?}", locations.locations(cached.id(), 0));
}
