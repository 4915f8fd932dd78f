//! The standalone cluster across hosts: the master (and the driver) and two workers each in a
//! network namespace of their own, joined by veth pairs on a bridge, every service bound to its
//! host's bridge address, so that no part of the runtime relies on 127.0.0.1. The test makes and removes the
//! namespaces itself; where the kernel refuses them it says why and does nothing else.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::standalone::{corpus, example, read_counts, wait_for_line};

const SECRET: &str = "7e57ab1e7e57ab1e7e57ab1e7e57ab1e7e57ab1e7e57ab1e7e57ab1e7e57ab1e";

/// Runs `ip` with `args`; its error output when it fails.
fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip").args(args).output().map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// Three namespaces (`m`, `a`, `b`) on one bridge in `m`, removed when dropped, with the
/// processes started in them.
struct Hosts {
    names: [String; 3],
    subnet: String,
    children: Vec<Child>,
}

impl Hosts {
    fn make() -> Result<Hosts, String> {
        let tag = std::process::id() % 100_000;
        let names = [format!("emb{tag}m"), format!("emb{tag}a"), format!("emb{tag}b")];
        let subnet = format!("10.{}.{}", 64 + tag % 64, tag % 250 + 1);
        let hosts = Hosts { names: names.clone(), subnet: subnet.clone(), children: Vec::new() };
        for n in &names {
            ip(&["netns", "add", n])?;
            // Only for a host's own address: the kernel delivers traffic to it through `lo`.
            ip(&["-n", n, "link", "set", "lo", "up"])?;
        }
        let m = &names[0];
        ip(&["-n", m, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", m, "addr", "add", &format!("{subnet}.1/24"), "dev", "br0"])?;
        ip(&["-n", m, "link", "set", "br0", "up"])?;
        for (i, n) in names[1..].iter().enumerate() {
            let (near, far) = (format!("em{tag}h{i}"), format!("em{tag}w{i}"));
            ip(&["link", "add", &near, "type", "veth", "peer", "name", &far])?;
            ip(&["link", "set", &near, "netns", m])?;
            ip(&["link", "set", &far, "netns", n])?;
            ip(&["-n", m, "link", "set", &near, "master", "br0"])?;
            ip(&["-n", m, "link", "set", &near, "up"])?;
            ip(&["-n", n, "addr", "add", &format!("{subnet}.{}/24", i + 2), "dev", &far])?;
            ip(&["-n", n, "link", "set", &far, "up"])?;
        }
        Ok(hosts)
    }

    fn address(&self, host: usize) -> String {
        format!("{}.{}", self.subnet, host + 1)
    }

    /// `ember ARGS` in namespace `host`.
    fn ember(&self, host: usize, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.names[host], env!("CARGO_BIN_EXE_ember")]).args(args).env("RUST_LOG", "warn");
        c
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for n in &self.names {
            let _ = ip(&["netns", "del", n]);
        }
    }
}

#[test]
fn a_standalone_cluster_runs_across_network_namespaces() {
    let mut hosts = match Hosts::make() {
        Ok(h) => h,
        Err(why) => {
            // Only a kernel (or container) that refuses network namespaces gets here.
            println!("network namespaces are not available here, test not run: {why}");
            assert!(why.contains("netns add"), "namespaces were made but the network was not: {why}");
            return;
        }
    };
    let secret = format!("ember.authenticate.secret={SECRET}");
    let master_ip = hosts.address(0);
    let mut master = hosts
        .ember(0, &["master", "--host", &master_ip, "--port", "7077", "--conf", &secret])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let line = wait_for_line(&mut master, "listening on");
    assert!(line.contains(&format!("ember://{master_ip}:7077")), "{line}");
    hosts.children.push(master);
    let url = format!("ember://{master_ip}:7077");
    let work = tempfile::tempdir().unwrap();
    for host in [1, 2] {
        let dir = work.path().join(format!("worker-{host}"));
        let mut worker = hosts
            .ember(
                host,
                &["worker", "--master", &url, "--host", &hosts.address(host), "--cores", "2", "--memory", "1g"],
            )
            .args(["--work-dir", dir.to_str().unwrap(), "--conf", &secret])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        wait_for_line(&mut worker, "registered with");
        hosts.children.push(worker);
    }
    let (input, expected) = corpus(work.path());
    let output = work.path().join("counts");
    let driver_host = format!("ember.driver.host={master_ip}");
    let submit = hosts
        .ember(0, &["submit", "--master", &url, "--conf", &secret, "--conf", &driver_host])
        .arg(example("word_count"))
        .args([input.to_str().unwrap(), output.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = wait_with_deadline(submit, Duration::from_secs(120));
    assert!(
        out.status.success(),
        "word_count across namespaces failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(read_counts(&output), expected);
    // Both workers ran executors of the application (their work directories say so).
    for host in [1, 2] {
        let dir = work.path().join(format!("worker-{host}"));
        assert!(app_dirs(&dir) == 1, "worker {host} ran no executor of the application");
    }
}

fn app_dirs(dir: &Path) -> usize {
    std::fs::read_dir(dir.join("apps"))
        .map(|d| d.filter(|e| e.as_ref().is_ok_and(|e| e.file_name().to_string_lossy().starts_with("app-"))).count())
        .unwrap_or(0)
}

fn wait_with_deadline(mut child: Child, limit: Duration) -> std::process::Output {
    let deadline = Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}
