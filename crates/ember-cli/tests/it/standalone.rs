use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::certs;

const SECRET: &str = "5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed";

/// [`ember`] with its working directory at `cwd`, when given.
fn ember_in(cwd: Option<&Path>) -> Command {
    let mut c = ember();
    if let Some(dir) = cwd {
        c.current_dir(dir);
    }
    c
}

fn ember() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ember"));
    c.env("RUST_LOG", "warn");
    c
}

/// An example program built with the workspace.
pub(crate) fn example(name: &str) -> PathBuf {
    let deps = std::env::current_exe().unwrap().parent().unwrap().to_path_buf();
    let path = deps.parent().unwrap().join("examples").join(name);
    assert!(
        path.exists(),
        "{} is missing: build the examples first (`cargo test --workspace` does, or `cargo build -p ember --examples`)",
        path.display()
    );
    path
}

/// A line a child prints on standard output that contains `needle`, within a minute.
pub(crate) fn wait_for_line(child: &mut Child, needle: &str) -> String {
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    let needle = needle.to_string();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if line.contains(&needle) {
                let _ = tx.send(line);
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(60)).expect("the expected line within a minute")
}

/// A master and workers, killed when dropped.
struct Standalone {
    url: String,
    /// `key=value` settings every command gets: the cluster's secret, and TLS when on.
    common: Vec<String>,
    /// The working directory of every command, when not the test's.
    cwd: Option<PathBuf>,
    master: Child,
    workers: Vec<Child>,
    dir: tempfile::TempDir,
}

impl Standalone {
    fn start(workers: usize, cores: u32, extra: &[&str]) -> Standalone {
        Standalone::start_with(workers, cores, extra, &[], None)
    }

    /// [`Standalone::start`] with more settings for every command (master, workers, submit,
    /// status).
    fn start_with(workers: usize, cores: u32, extra: &[&str], common: &[String], cwd: Option<&Path>) -> Standalone {
        let dir = tempfile::tempdir().unwrap();
        let mut common = common.to_vec();
        common.push(format!("ember.authenticate.secret={SECRET}"));
        let cwd = cwd.map(Path::to_path_buf);
        let mut master = ember_in(cwd.as_deref())
            .args(["master", "--host", "127.0.0.1", "--port", "0"])
            .args(common.iter().flat_map(|kv| ["--conf", kv]))
            .args(extra)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let line = wait_for_line(&mut master, "listening on");
        let url = line.split_whitespace().last().unwrap().to_string();
        let mut cluster = Standalone { url, common, cwd, master, workers: Vec::new(), dir };
        for _ in 0..workers {
            cluster.add_worker(cores);
        }
        cluster
    }

    /// Starts a worker and waits until it registered.
    fn add_worker(&mut self, cores: u32) {
        let work = self.dir.path().join(format!("worker-{}", self.workers.len() + 1));
        let mut worker = ember_in(self.cwd.as_deref())
            .args(["worker", "--master", &self.url, "--cores", &cores.to_string(), "--memory", "2g", "--work-dir"])
            .arg(&work)
            .args(self.common.iter().flat_map(|kv| ["--conf", kv]))
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        wait_for_line(&mut worker, "registered with");
        self.workers.push(worker);
    }

    fn submit(&self, conf: &[&str], program: &Path, args: &[&str]) -> Child {
        let mut c = ember_in(self.cwd.as_deref());
        c.args(["submit", "--master", &self.url]).args(self.common.iter().flat_map(|kv| ["--conf", kv]));
        for kv in conf {
            c.args(["--conf", kv]);
        }
        c.arg(program).args(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap()
    }

    fn status(&self) -> String {
        let out = ember_in(self.cwd.as_deref())
            .args(["status", "--master", &self.url])
            .args(self.common.iter().flat_map(|kv| ["--conf", kv]))
            .output()
            .unwrap();
        assert!(out.status.success(), "ember status failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    }

    /// Application directories the workers made (one per application that got an executor).
    fn apps_seen(&self) -> std::collections::BTreeSet<String> {
        (1..=self.workers.len()).flat_map(|w| self.apps_on(w)).collect()
    }

    /// The applications worker `n` (from 1) started executors of.
    fn apps_on(&self, n: usize) -> std::collections::BTreeSet<String> {
        let dir = self.dir.path().join(format!("worker-{n}")).join("apps");
        std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .filter(|name| name.starts_with("app-"))
            .collect()
    }
}

impl Drop for Standalone {
    fn drop(&mut self) {
        for c in self.workers.iter_mut().chain(std::iter::once(&mut self.master)) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn finish(child: Child, what: &str) -> Output {
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A corpus with known counts: word `wN` appears N times, for N in 1..=300, plus `common` on
/// every line.
pub(crate) fn corpus(dir: &Path) -> (PathBuf, BTreeMap<String, u64>) {
    let input = dir.join("corpus");
    std::fs::create_dir_all(&input).unwrap();
    let mut expected = BTreeMap::new();
    let mut lines = Vec::new();
    for n in 1..=300u64 {
        for _ in 0..n {
            lines.push(format!("common w{n}"));
        }
        expected.insert(format!("w{n}"), n);
    }
    expected.insert("common".to_string(), lines.len() as u64);
    for (i, chunk) in lines.chunks(lines.len() / 3 + 1).enumerate() {
        std::fs::write(input.join(format!("part-{i}.txt")), chunk.join("\n") + "\n").unwrap();
    }
    (input, expected)
}

pub(crate) fn read_counts(out: &Path) -> BTreeMap<String, u64> {
    assert!(out.join("_SUCCESS").exists(), "no _SUCCESS in {}", out.display());
    let mut counts = BTreeMap::new();
    for entry in std::fs::read_dir(out).unwrap() {
        let path = entry.unwrap().path();
        if !path.file_name().unwrap().to_string_lossy().starts_with("part-") {
            continue;
        }
        for line in std::fs::read_to_string(&path).unwrap().lines() {
            let (w, c) = line.split_once('\t').unwrap();
            assert!(counts.insert(w.to_string(), c.parse().unwrap()).is_none(), "{w} counted twice");
        }
    }
    counts
}

/// Acceptance: a master and two workers on ports the test picks; `word_count` and `running_sum`
/// submitted at the same time with `ember submit`; both outputs right, both run on the cluster.
#[test]
fn submits_word_count_and_running_sum_at_the_same_time() {
    let cluster = Standalone::start(2, 2, &[]);
    let status = cluster.status();
    assert!(status.contains("2 workers, 0/4 cores in use"), "{status}");
    assert_eq!(status.matches("worker-").count(), 2, "{status}");
    let work = tempfile::tempdir().unwrap();
    let (input, expected) = corpus(work.path());
    let output = work.path().join("counts");
    let wc = cluster.submit(
        &["ember.app.name=word-count"],
        &example("word_count"),
        &[input.to_str().unwrap(), output.to_str().unwrap()],
    );
    let rs = cluster.submit(&["ember.app.name=running-sum"], &example("running_sum"), &["20", "4", "--trials", "1"]);
    let rs = finish(rs, "running_sum");
    finish(wc, "word_count");
    assert_eq!(read_counts(&output), expected);
    // running_sum checks its own sum and fails otherwise; it reports one trial.
    let printed = String::from_utf8_lossy(&rs.stdout);
    assert_eq!(printed.lines().filter(|l| l.starts_with("iters=20 tasks=4 group=1")).count(), 1, "{printed}");
    assert_eq!(cluster.apps_seen().len(), 2, "both applications ran executors on the workers");
    // Finished applications free their executors.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status = cluster.status();
        if status.contains("0/4 cores in use") && !status.contains("app-") {
            break;
        }
        assert!(Instant::now() < deadline, "executors were not freed:\n{status}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// TLS on every connection of a standalone cluster: master, worker, driver and executors present
/// or check the test authority's certificates; a client in the clear is refused. The files are
/// named relative to the commands' working directory, which the worker's executors do not share.
#[test]
fn a_standalone_cluster_runs_over_tls() {
    let certs = certs::make(&["127.0.0.1"]);
    let tls = [
        "ember.ssl.enabled=true".to_string(),
        "ember.ssl.certFile=node.pem".to_string(),
        "ember.ssl.keyFile=node.key".to_string(),
        "ember.ssl.trustFile=ca.pem".to_string(),
    ];
    let cluster = Standalone::start_with(1, 2, &[], &tls, Some(certs.dir.path()));
    let work = tempfile::tempdir().unwrap();
    let (input, expected) = corpus(work.path());
    let output = work.path().join("counts");
    let wc = cluster.submit(&[], &example("word_count"), &[input.to_str().unwrap(), output.to_str().unwrap()]);
    finish(wc, "word_count over TLS");
    assert_eq!(read_counts(&output), expected);
    assert!(cluster.status().contains("1 workers"));
    // The same request in the clear, or trusting another authority, is refused.
    for conf in [
        vec![],
        vec!["ember.ssl.enabled=true".to_string(), format!("ember.ssl.trustFile={}", certs.other_ca.display())],
    ] {
        let out = ember()
            .args(["status", "--master", &cluster.url, "--conf", &format!("ember.authenticate.secret={SECRET}")])
            .args(conf.iter().flat_map(|kv| ["--conf", kv]))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains("cannot reach the master"), "{conf:?}: {err}");
        let why = if conf.is_empty() { "if the peer requires TLS" } else { "certificate" };
        assert!(err.contains(why), "the refusal says why: {err}");
    }
}

/// Acceptance (fault injection): a worker killed while two applications run; both finish with
/// the right answer, the one that lost its executor on the worker left.
#[test]
fn a_worker_killed_while_two_applications_run() {
    let mut cluster = Standalone::start(2, 2, &[]);
    let rs_a = cluster.submit(
        &["ember.cores.max=2", "ember.app.name=a"],
        &example("running_sum"),
        &["120", "4", "--trials", "1"],
    );
    let rs_b = cluster.submit(
        &["ember.cores.max=2", "ember.app.name=b"],
        &example("running_sum"),
        &["120", "4", "--trials", "1"],
    );
    // Each application holds one worker; a third stands by.
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        let status = cluster.status();
        if status.matches("RUNNING").count() == 2 {
            break status;
        }
        assert!(Instant::now() < deadline, "the applications did not start:\n{status}");
        std::thread::sleep(Duration::from_millis(50));
    };
    cluster.add_worker(2);
    assert_eq!(status.matches("executor-0").count(), 2, "each application holds one executor:\n{status}");
    // Let both make progress, then kill the first worker (and with it its executors).
    std::thread::sleep(Duration::from_millis(700));
    let victim = &mut cluster.workers[0];
    unsafe_kill(victim.id());
    let _ = victim.wait();
    let running = cluster.status();
    assert_eq!(
        running.matches("RUNNING").count() + running.matches("WAITING").count(),
        2,
        "both still run:\n{running}"
    );
    for (child, name) in [(rs_a, "a"), (rs_b, "b")] {
        let out = finish(child, name);
        let printed = String::from_utf8_lossy(&out.stdout);
        assert!(printed.lines().any(|l| l.starts_with("iters=120 tasks=4 group=1")), "{name}: {printed}");
    }
    let status = cluster.status();
    assert!(status.contains("2 workers"), "the killed worker is gone:\n{status}");
    // The application that lost its executor with the worker got another on the third.
    assert_eq!(cluster.apps_on(3).len(), 1, "the spare worker took over the lost executor");
}

/// SIGKILL, as `kill -9` does.
fn unsafe_kill(pid: u32) {
    // SAFETY: `kill` has no memory-safety preconditions; the pid is a child of this process
    // that has not been reaped.
    let r = unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
    assert_eq!(r, 0);
}

/// A worker (and `ember status`) without the cluster's secret is refused, and says so.
#[test]
fn peers_without_the_clusters_secret_are_refused() {
    let cluster = Standalone::start(0, 1, &[]);
    let wrong = "0".repeat(64);
    let out = ember()
        .args(["worker", "--master", &cluster.url, "--cores", "1", "--memory", "1g", "--conf"])
        .arg(format!("ember.authenticate.secret={wrong}"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("authentication"), "{err}");
    let out = ember().args(["status", "--master", &cluster.url]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("authentication"));
    assert!(cluster.status().contains("0 workers"));
}

/// Bad command lines and settings are errors that name what is wrong, before anything starts.
#[test]
fn bad_command_lines_are_reported() {
    let cases: &[(&[&str], &str)] = &[
        (&["submit", "--master", "local[2]", "prog"], "expected a standalone master"),
        (&["submit", "--master", "ember://127.0.0.1:1", "--conf", "ember.cores.max=0", "prog"], "ember.cores.max"),
        (&["submit", "--master", "ember://127.0.0.1:1", "--conf", "ember.bogus=1", "prog"], "unknown key"),
        (&["submit", "--master", "ember://127.0.0.1:1"], "needs a PROGRAM"),
        (&["worker", "--master", "ember://127.0.0.1:1", "--cores", "0"], "--cores"),
        (&["master", "--port", "http"], "--port"),
        (&["master", "--properties-file", "/nonexistent/ember.conf"], "/nonexistent/ember.conf"),
        (&["status", "--master", "ember://nohost"], "HOST:PORT"),
        (&["launch"], "unknown subcommand"),
    ];
    for (args, needle) in cases {
        let out = ember().args(*args).output().unwrap();
        assert!(!out.status.success(), "{args:?} succeeded");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{args:?}: expected `{needle}` in: {err}");
    }
}

/// `--properties-file` is read, and `--conf` overrides it; a driver started by `ember submit`
/// gets its master and settings from it.
#[test]
fn a_submitted_driver_gets_its_master_and_settings() {
    let cluster = Standalone::start(1, 2, &[]);
    let dir = tempfile::tempdir().unwrap();
    let props = dir.path().join("ember.conf");
    std::fs::write(&props, "ember.app.name=from-file\nember.executor.memory=512m\n").unwrap();
    let mut c = ember();
    c.args(["submit", "--master", &cluster.url, "--properties-file"])
        .arg(&props)
        .args(["--conf", &format!("ember.authenticate.secret={SECRET}"), "--conf", "ember.app.name=from-conf"])
        .arg(example("running_sum"))
        .args(["300", "2", "--trials", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = c.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        let status = cluster.status();
        if status.contains("RUNNING") {
            break status;
        }
        assert!(Instant::now() < deadline, "the application did not start:\n{status}");
        std::thread::sleep(Duration::from_millis(50));
    };
    finish(child, "running_sum");
    assert!(status.contains("from-conf"), "--conf overrides the file:\n{status}");
    assert!(status.contains(" 512"), "the file's executor memory:\n{status}");
}
