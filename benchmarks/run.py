#!/usr/bin/env python3
"""Ember vs Apache Spark end-to-end benchmarks: word count, sort and tiny iterative jobs, plus
Ember's tiny-job scaling with the number of tasks.

Run through `benchmarks/run.sh`, which provides a Python with pyspark installed (Spark's jars come
from the pyspark package). This file needs only the standard library. See benchmarks/README.md
for what is measured and how.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import hashlib
import json
import math
import os
import platform
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PYSPARK_VERSION = "4.3.0"

GIB = 1 << 30
MIB = 1 << 20

# Sizes per scale. "full" is the size the results are quoted at; the minimums below are checked.
SCALES = {
    "small": dict(text_bytes=50 * MIB, records=1_000_000),
    "medium": dict(text_bytes=256 * MIB, records=10_000_000),
    "full": dict(text_bytes=1 * GIB, records=50_000_000),
}
FULL_MIN_TEXT_BYTES = 1 * GIB
FULL_MIN_RECORDS = 50_000_000

# Spark programs per workload: (API, program, run by default). The default ones are those that
# came out fastest when all were timed (README.md, "Choosing Spark's fastest path"); for word count
# two were within the noise of each other, so both run and the faster of the run is the baseline.
SPARK_PROGRAMS = {
    "wordcount": [("dataset", "WordCountDs", True), ("rdd", "WordCountRdd", True),
                  ("dataframe", "WordCountDf", False)],
    "sort": [("dataframe", "SortDf", True), ("rdd", "SortRdd", False)],
}
EMBER_EXAMPLES = ["word_count", "sort", "running_sum"]
WORKLOADS = ["wordcount", "sort", "tiny", "scaling", "cluster", "cluster-tiny"]
# The cluster workload: Ember's word count and sort with executors in processes, against the same
# programs on local[2]. Target: the cluster path within 1.3x of local mode.
CLUSTER_MASTER = "local-cluster[2,1,2048]"
# Its local counterpart, with the cluster's memory in all (two executors of 2 GiB).
CLUSTER_LOCAL_MASTER = "local[2]"
CLUSTER_LOCAL_MEMORY = "4g"
CLUSTER_TARGET = 1.3
# The cluster-tiny workload: running_sum on executors in processes, Ember at several group sizes
# (Drizzle's group scheduling) against Spark's RunningSum on Spark's own local-cluster (its
# executors are JVM processes too; local[4] when it cannot start one, which the row then says).
# Targets: group 10 at least 5x lower per-iteration time than group 1; Ember's group 1 at least
# 10x below Spark. Both are checked as "ratio <= target".
CLUSTER_TINY_MASTER = "local-cluster[4,1,1024]"
CLUSTER_TINY_TASKS = 4
CLUSTER_TINY_GROUPS = ["1", "10", "50", "auto"]
CLUSTER_TINY_GROUP_TARGET = 0.2  # t(group 10) / t(group 1)
CLUSTER_TINY_SPARK_TARGET = 0.1  # t(Ember group 1) / t(Spark)
# The scaling workload: Ember's running_sum at growing task counts, as (TASKS, ITERS). The issue's
# target: with 1000 tasks an iteration costs at most 30x what it costs with 100 tasks.
SCALING_POINTS = "10:100,100:100,1000:10"
SCALING_TARGET = 30.0

TIME_BASIS_EMBER = "process wall (whole run incl. startup)"
TIME_BASIS_SPARK_JOB = "job only (excl. JVM + session start)"
TIME_BASIS_TINY = "per job after warm-up (excl. session start)"
TIME_BASIS_SCALING_RATIO = "ratio of per-job times (medians of trials)"
TIME_BASIS_CLUSTER_RATIO = "ratio of process wall times (medians of runs)"


# ------------------------------------------------------------------------------------------------
# Small helpers


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def loud(msg: str) -> None:
    bar = "!" * 78
    print(f"\n{bar}\n!!! {msg}\n{bar}\n", file=sys.stderr, flush=True)


def die(msg: str) -> None:
    print(f"run.py: error: {msg}", file=sys.stderr)
    sys.exit(2)


def parse_size(text: str, binary: bool) -> int:
    """'50m' -> 50 MiB (binary) or 50,000,000 (decimal); a plain number is taken as is."""
    m = re.fullmatch(r"\s*([0-9_]+(?:\.[0-9]+)?)\s*([kmgt]?)i?b?\s*", text.lower())
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {text!r}")
    base = 1024 if binary else 1000
    power = " kmgt".index(m.group(2) or " ")
    return int(float(m.group(1).replace("_", "")) * base**power)


def human_bytes(n: float) -> str:
    for unit in ["B", "KiB", "MiB", "GiB", "TiB"]:
        if n < 1024 or unit == "TiB":
            return f"{n:.2f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return str(n)


def sha_of(paths: list[Path], extra: str = "") -> str:
    h = hashlib.sha256(extra.encode())
    for p in sorted(paths):
        h.update(p.name.encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


def kv_pairs(line: str) -> dict[str, str]:
    return dict(re.findall(r"([A-Za-z_][A-Za-z0-9_]*)=(\S+)", line))


def run_checked(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    res = subprocess.run(cmd, text=True, capture_output=True, **kw)
    if res.returncode != 0:
        sys.stderr.write(res.stdout[-4000:] + res.stderr[-4000:])
        die(f"command failed ({res.returncode}): {shlex.join(cmd)}")
    return res


def rel(p: Path) -> str:
    try:
        return str(p.resolve().relative_to(REPO))
    except ValueError:
        return str(p)


# ------------------------------------------------------------------------------------------------
# Peak memory of a process tree


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{tid}/children") as f:
                    kids.extend(int(x) for x in f.read().split())
            except OSError:
                pass
    except OSError:
        pass
    return kids


def _address_space(pid: int) -> tuple:
    """Addresses the kernel fixes at exec (code, data, heap start, stack, argv) from
    /proc/PID/stat. A child made with vfork/posix_spawn (how the JVM starts helpers) or fork shares
    or copies its parent's address space until it execs, and its VmRSS repeats the parent's: equal
    addresses mark such a process, and it is counted once. Separately exec'd processes differ
    (address space layout randomisation), even when they run the same binary."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        # fields[0] is field 3 (state) of proc(5): startcode=26, endcode=27, startstack=28,
        # start_data=45, end_data=46, start_brk=47, arg_start=48.
        space = tuple(fields[i - 3] for i in (26, 27, 28, 45, 46, 47, 48))
        return space if space[2] != "0" else ("pid", pid)  # hidden from us: assume distinct
    except (OSError, IndexError):
        return ("pid", pid)


def _rss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


class TreeRssPoller(threading.Thread):
    """Sums VmRSS over all descendants of `root` every `interval` seconds and keeps the peak
    (processes sharing one address space are counted once, see `_address_space`).

    The root itself (the /usr/bin/time wrapper) is left out. Complements /usr/bin/time's
    "Maximum resident set size", which is exact but covers the largest single process only.
    """

    def __init__(self, root: int, interval: float = 0.1):
        super().__init__(daemon=True)
        self.root, self.interval = root, interval
        self.peak_kib = 0
        self.max_procs = 0
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.wait(self.interval):
            pids, frontier = [], _children(self.root)
            while frontier:
                pid = frontier.pop()
                pids.append(pid)
                frontier.extend(_children(pid))
            by_space: dict[tuple, int] = {}
            for p in pids:
                space = _address_space(p)
                by_space[space] = max(by_space.get(space, 0), _rss_kib(p))
            total = sum(by_space.values())
            self.peak_kib = max(self.peak_kib, total)
            self.max_procs = max(self.max_procs, len(pids))

    def stop(self) -> None:
        self._done.set()
        self.join()


# ------------------------------------------------------------------------------------------------
# Running one measured process


@dataclass
class Measured:
    returncode: int
    wall_s: float
    rss_time_kib: int  # /usr/bin/time -v "Maximum resident set size"
    rss_tree_kib: int  # polled sum over the process tree
    stdout: str
    stderr_path: Path
    timed_out: bool = False
    load_before: float = 0.0  # 1-minute load average when the run started

    @property
    def peak_rss_mib(self) -> float:
        return max(self.rss_time_kib, self.rss_tree_kib) / 1024.0


def measure(cmd: list[str], log_stem: Path, cfg: "Config", env: dict | None = None) -> Measured:
    """Runs cmd pinned to the benchmark CPUs under /usr/bin/time -v, polling the tree's RSS."""
    time_file = log_stem.with_suffix(".time")
    out_path, err_path = log_stem.with_suffix(".out"), log_stem.with_suffix(".err")
    full = ["/usr/bin/time", "-v", "-o", str(time_file)] + cmd
    if cfg.cpus:
        full = ["taskset", "-c", cfg.cpus] + full
    with open(log_stem.with_suffix(".cmd"), "w") as f:
        f.write(shlex.join(full) + "\n")
    shown = [a for a in cmd if not a.startswith(("--add-", "-XX:", "-Dio.netty", "--sun-misc", "--enable-native"))]
    log(f"  $ {shlex.join(shown)}" + ("  (JVM module options omitted; full command in the .cmd log)" if len(shown) < len(cmd) else ""))
    load = load_average()
    if load > 0.5:
        log(f"  note: load average {load:.2f} before this run: another process is using the CPUs, figures are noisy")
    with open(out_path, "w") as out, open(err_path, "w") as err:
        start = time.monotonic()
        proc = subprocess.Popen(full, stdout=out, stderr=err, env=env, cwd=REPO, start_new_session=True)
        poller = TreeRssPoller(proc.pid)
        poller.start()
        timed_out = False
        try:
            proc.wait(timeout=cfg.timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            os.killpg(proc.pid, signal.SIGKILL)  # our own session: the measured tree only
            proc.wait()
        wall = time.monotonic() - start
        poller.stop()
    rss_time = 0
    if time_file.exists():
        m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", time_file.read_text())
        rss_time = int(m.group(1)) if m else 0
    return Measured(proc.returncode, wall, rss_time, poller.peak_kib, out_path.read_text(), err_path, timed_out, load)


def load_average() -> float:
    try:
        with open("/proc/loadavg") as f:
            return float(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 0.0


def describe_failure(m: Measured) -> str:
    if m.timed_out:
        return "timed out"
    tail = m.stderr_path.read_text(errors="replace").strip().splitlines()[-5:]
    return f"exit {m.returncode}: " + " | ".join(tail)


def warm_page_cache(path: Path) -> None:
    """Reads the input once so that every engine starts with it in the page cache."""
    for f in sorted(path.iterdir()):
        with open(f, "rb", buffering=0) as fh:
            while fh.read(8 * MIB):
                pass


# ------------------------------------------------------------------------------------------------
# Configuration and tool preparation


@dataclass
class Config:
    scale: str
    text_bytes: int
    records: int
    text_parts: int
    record_parts: int
    seed: int
    workloads: list[str]
    engines: list[str]
    spark_api: str
    spark_memory: str
    spark_conf: list[str]
    ember_memory: str | None
    repeat: int
    cpus: str | None
    master: str
    iters: int
    tasks: int
    groups: list[int]
    tiny_trials: int
    scaling_trials: int
    scaling_rounds: int
    scaling_points: list[tuple[int, int]]  # (TASKS, ITERS)
    scaling_target: float
    spark_warmup_trials: int
    timeout: float
    build: bool
    ember_bin_dir: Path | None
    data_dir: Path
    results_dir: Path
    cache_dir: Path
    keep_output: bool
    command: str


@dataclass
class Tools:
    datagen: Path | None = None
    java_classes: Path | None = None
    spark_jars: Path | None = None
    jvm_module_opts: list[str] = field(default_factory=list)
    ember_bins: dict[str, Path] = field(default_factory=dict)
    ember_error: str | None = None


def prune_siblings(build_dir: Path) -> None:
    """Removes builds of older sources (`name-<hash>` directories beside `build_dir`)."""
    prefix = build_dir.name.rsplit("-", 1)[0] + "-"
    if build_dir.parent.is_dir():
        for old in build_dir.parent.glob(prefix + "*"):
            if old != build_dir and old.is_dir() and re.fullmatch(r"[0-9a-f]{16}", old.name[len(prefix):]):
                shutil.rmtree(old, ignore_errors=True)


def compile_datagen(cfg: Config) -> Path:
    src = HERE / "datagen" / "datagen.rs"
    out_dir = cfg.cache_dir / f"datagen-{sha_of([src])}"
    exe = out_dir / "datagen"
    if not exe.exists():
        prune_siblings(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        log(f"compiling {rel(src)} with rustc -O")
        run_checked(["rustc", "-O", "--edition", "2021", "-o", str(exe), str(src)])
    return exe


def spark_jars_dir() -> Path:
    try:
        import pyspark  # noqa: PLC0415 (installed by run.sh into the venv)
    except ImportError:
        die("pyspark is not importable: run through benchmarks/run.sh, which installs it")
    if pyspark.__version__ != PYSPARK_VERSION:
        log(f"warning: pyspark {pyspark.__version__} found, the benchmark is written for {PYSPARK_VERSION}")
    jars = Path(pyspark.__file__).resolve().parent / "jars"
    if not jars.is_dir():
        die(f"pyspark has no jars directory at {jars}")
    return jars


def compile_spark_programs(cfg: Config, jars: Path) -> tuple[Path, list[str]]:
    sources = sorted((HERE / "spark").glob("*.java"))
    out_dir = cfg.cache_dir / f"spark-classes-{sha_of(sources, extra=str(jars))}"
    stamp = out_dir / ".complete"
    cp = f"{jars}/*"
    if not stamp.exists():
        prune_siblings(out_dir)
        shutil.rmtree(out_dir, ignore_errors=True)
        out_dir.mkdir(parents=True)
        log(f"compiling {len(sources)} Spark programs with javac against {len(list(jars.glob('*.jar')))} pyspark jars")
        run_checked(["javac", "-nowarn", "-Xlint:-path", "--release", "17", "-cp", cp, "-d", str(out_dir)]
                    + [str(s) for s in sources])
        opts = run_checked(["java", "-cp", f"{out_dir}:{cp}", "ModuleOptions"]).stdout.split()
        (out_dir / "jvm-options.txt").write_text("\n".join(opts) + "\n")
        stamp.write_text("ok\n")
    opts = (out_dir / "jvm-options.txt").read_text().split()
    return out_dir, opts


def build_ember(cfg: Config) -> tuple[dict[str, Path], str | None]:
    """Builds the three example binaries in release mode; returns their paths or an error."""
    if cfg.ember_bin_dir is not None:
        bins = {n: cfg.ember_bin_dir / n for n in EMBER_EXAMPLES}
        missing = [str(p) for p in bins.values() if not p.exists()]
        return bins, (f"missing binaries: {', '.join(missing)}" if missing else None)
    if not cfg.build:
        target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
        if not target.is_absolute():
            target = REPO / target
        cfg.ember_bin_dir = target / "release" / "examples"
        return build_ember(cfg)
    missing_src = [n for n in EMBER_EXAMPLES if not (REPO / "examples" / f"{n}.rs").exists()]
    if missing_src:
        log(f"note: examples/{{{','.join(missing_src)}}}.rs not found at the repo root; trying cargo anyway")
    cmd = ["cargo", "build", "--release", "-p", "ember", "--message-format=json-render-diagnostics"]
    for n in EMBER_EXAMPLES:
        cmd += ["--example", n]
    log(f"building Ember: {shlex.join(cmd[:5] + cmd[6:])}")
    started = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, text=True)
    bins: dict[str, Path] = {}
    assert proc.stdout is not None
    for line in proc.stdout:
        try:
            msg = json.loads(line)
        except json.JSONDecodeError:
            continue
        target = msg.get("target", {})
        if msg.get("reason") == "compiler-artifact" and msg.get("executable") and "example" in target.get("kind", []):
            bins[target["name"]] = Path(msg["executable"])
    rc = proc.wait()
    log(f"cargo finished in {time.monotonic() - started:.0f} s (exit {rc})")
    if rc != 0:
        return {}, f"cargo build failed (exit {rc}); see the compiler output above"
    missing = [n for n in EMBER_EXAMPLES if n not in bins]
    if missing:
        return bins, f"cargo built no example named {', '.join(missing)}"
    return bins, None


# ------------------------------------------------------------------------------------------------
# Data sets


@dataclass
class DataSet:
    path: Path
    truth: dict[str, str]  # the generator's summary line: sizes, totals, checksum


def ensure_data(cfg: Config, tools: Tools, kind: str) -> DataSet:
    if kind == "text":
        name, size_args = f"text-{cfg.text_bytes}b-{cfg.text_parts}p-seed{cfg.seed}", ["--bytes", str(cfg.text_bytes)]
        parts = cfg.text_parts
    else:
        name, size_args = f"records-{cfg.records}-{cfg.record_parts}p-seed{cfg.seed}", ["--records", str(cfg.records)]
        parts = cfg.record_parts
    path = cfg.data_dir / name
    manifest = cfg.data_dir / f"{name}.json"
    assert tools.datagen is not None
    gen_id = tools.datagen.parent.name
    if manifest.exists() and path.is_dir():
        meta = json.loads(manifest.read_text())
        sizes = {f.name: f.stat().st_size for f in path.iterdir()}
        if meta.get("generator") == gen_id and meta.get("files") == sizes:
            log(f"reusing {rel(path)} ({human_bytes(sum(sizes.values()))})")
            return DataSet(path, meta["truth"])
        log(f"{rel(path)} is stale or incomplete: regenerating")
    shutil.rmtree(path, ignore_errors=True)
    manifest.unlink(missing_ok=True)
    cfg.data_dir.mkdir(parents=True, exist_ok=True)
    log(f"generating {rel(path)}")
    started = time.monotonic()
    out = run_checked([str(tools.datagen), kind, str(path), *size_args, "--parts", str(parts),
                       "--seed", str(cfg.seed)]).stdout
    truth = kv_pairs(out.strip().splitlines()[-1])
    sizes = {f.name: f.stat().st_size for f in path.iterdir()}
    if sum(sizes.values()) != int(truth["bytes"]):
        die(f"generated {rel(path)} has {sum(sizes.values())} bytes, the generator reported {truth['bytes']}")
    manifest.write_text(json.dumps({"generator": gen_id, "files": sizes, "truth": truth}, indent=1) + "\n")
    log(f"  {human_bytes(int(truth['bytes']))} in {time.monotonic() - started:.1f} s: {out.strip()}")
    return DataSet(path, truth)


def check_full_scale(cfg: Config, ds: DataSet) -> None:
    if cfg.scale != "full":
        return
    t = ds.truth
    if t["kind"] == "text" and int(t["bytes"]) < FULL_MIN_TEXT_BYTES:
        die(f"full scale needs >= {human_bytes(FULL_MIN_TEXT_BYTES)} of text, have {t['bytes']} bytes")
    if t["kind"] == "records" and int(t["records"]) < FULL_MIN_RECORDS:
        die(f"full scale needs >= {FULL_MIN_RECORDS} records, have {t['records']}")


# ------------------------------------------------------------------------------------------------
# Results


@dataclass
class Row:
    workload: str
    engine: str
    variant: str
    input: str
    time_basis: str
    wall_s: float | None = None
    process_wall_s: float | None = None
    startup_s: float | None = None
    per_job_ms: float | None = None
    peak_rss_mib: float | None = None
    rss_time_v_mib: float | None = None
    rss_tree_mib: float | None = None
    verified: str = "n/a"
    notes: str = ""
    ok: bool = True
    time_ratio: float | None = None
    mem_ratio: float | None = None
    runs: int = 1
    load_before: float | None = None
    scaling_ratio: float | None = None  # scaling workload, derived rows: t(more tasks) / t(fewer tasks)
    target_check: str = ""  # scaling workload, derived rows: pass/FAIL against the target, or "no target"

    def figure(self) -> float | None:
        """The number the ratio is computed on."""
        return self.per_job_ms if self.workload in ("tiny", "scaling", "cluster-tiny") else self.wall_s


CSV_FIELDS = ["workload", "engine", "variant", "input", "time_basis", "wall_s", "process_wall_s", "startup_s",
              "per_job_ms", "peak_rss_mib", "time_ratio_ember_over_spark", "mem_ratio_ember_over_spark",
              "rss_time_v_mib", "rss_tree_poll_mib", "load_before", "runs", "verified", "notes",
              "scaling_ratio", "target_check"]


def fmt(v: float | None, digits: int = 3) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def fmt_ratio(v: float | None) -> str:
    return "" if v is None else f"{v:.3g}"


def row_to_csv(r: Row) -> dict[str, str]:
    return {
        "workload": r.workload, "engine": r.engine, "variant": r.variant, "input": r.input,
        "time_basis": r.time_basis, "wall_s": fmt(r.wall_s), "process_wall_s": fmt(r.process_wall_s),
        "startup_s": fmt(r.startup_s), "per_job_ms": fmt(r.per_job_ms, 2), "peak_rss_mib": fmt(r.peak_rss_mib, 1),
        "time_ratio_ember_over_spark": fmt_ratio(r.time_ratio), "mem_ratio_ember_over_spark": fmt_ratio(r.mem_ratio),
        "rss_time_v_mib": fmt(r.rss_time_v_mib, 1), "rss_tree_poll_mib": fmt(r.rss_tree_mib, 1),
        "load_before": fmt(r.load_before, 2), "runs": str(r.runs), "verified": r.verified, "notes": r.notes,
        "scaling_ratio": fmt_ratio(r.scaling_ratio), "target_check": r.target_check,
    }


def fill_memory(row: Row, m: Measured) -> None:
    row.load_before = m.load_before
    row.peak_rss_mib = m.peak_rss_mib
    row.rss_time_v_mib = m.rss_time_kib / 1024.0
    row.rss_tree_mib = m.rss_tree_kib / 1024.0
    row.process_wall_s = m.wall_s


# ------------------------------------------------------------------------------------------------
# Output verification


def verify_output(cfg: Config, tools: Tools, workload: str, out_dir: Path, ds: DataSet) -> str:
    """Checks an engine's output against the generator's ground truth; returns 'ok' or 'FAIL: ...'."""
    assert tools.datagen is not None
    if not out_dir.is_dir():
        return "FAIL: no output directory"
    cmd = [str(tools.datagen), "check-wc" if workload == "wordcount" else "check-sort", str(out_dir)]
    res = subprocess.run(cmd, text=True, capture_output=True)
    if res.returncode != 0:
        return f"FAIL: checker error: {res.stderr.strip()[-300:]}"
    got, want = kv_pairs(res.stdout), ds.truth
    problems = []
    if workload == "wordcount":
        if got["words"] != want["words"]:
            problems.append(f"sum of counts {got['words']} != {want['words']} words in the input")
        if got["distinct"] != want["distinct"]:
            problems.append(f"{got['distinct']} distinct words != {want['distinct']}")
        if got["duplicates"] != "0":
            problems.append(f"{got['duplicates']} words appear on more than one line")
        if got["malformed"] != "0":
            problems.append(f"{got['malformed']} lines are not word<TAB>count")
        if not problems and got["checksum"] != want["checksum"]:
            problems.append("totals agree but some per-word counts differ (checksum)")
    else:
        if got["lines"] != want["records"]:
            problems.append(f"{got['lines']} lines != {want['records']} records")
        if got["unsorted"] != "0":
            problems.append(f"{got['unsorted']} lines out of key order ({res.stderr.strip()})")
        if got["malformed"] != "0":
            problems.append(f"{got['malformed']} lines without a TAB")
        if not problems and got["checksum"] != want["checksum"]:
            problems.append("output lines are not the input lines (checksum)")
    return "ok" if not problems else "FAIL: " + "; ".join(problems)


# ------------------------------------------------------------------------------------------------
# Engines


def spark_cmd(cfg: Config, tools: Tools, program: str, args: list[str], master: str | None = None) -> list[str]:
    cmd = ["java", *tools.jvm_module_opts, f"-Xmx{cfg.spark_memory}",
           f"-Dlog4j2.configurationFile={HERE / 'spark' / 'log4j2.properties'}",
           "-cp", f"{tools.java_classes}:{tools.spark_jars}/*", program, *args, "--master", master or cfg.master]
    for kv in cfg.spark_conf:
        cmd += ["--conf", kv]
    return cmd


def spark_env() -> dict:
    env = dict(os.environ)
    env["SPARK_LOCAL_IP"] = "127.0.0.1"  # local mode needs no network interface
    return env


def spark_cluster_env(cfg: Config, tools: Tools) -> dict:
    """The environment Spark's local-cluster needs with the pip package: a SPARK_HOME that looks
    like a Spark distribution (its jars, its bin, a RELEASE file), made once under the cache, and
    the Scala version (local-cluster runs with Spark's testing flag, which otherwise looks for a
    source build)."""
    home = cfg.cache_dir / f"spark-home-{PYSPARK_VERSION}"
    if not (home / "RELEASE").exists():
        home.mkdir(parents=True, exist_ok=True)
        for name in ("jars", "bin"):
            link = home / name
            if not link.exists():
                link.symlink_to(Path(tools.spark_jars).parent / name)
        (home / "RELEASE").write_text(f"Spark {PYSPARK_VERSION} (the pyspark package's jars)\n")
    env = spark_env()
    env["SPARK_HOME"] = str(home)
    env["SPARK_SCALA_VERSION"] = "2.13"
    return env


def ember_cmd(cfg: Config, tools: Tools, example: str, args: list[str], master: str | None = None,
              memory: str | None = None) -> list[str]:
    cmd = [str(tools.ember_bins[example]), *args, "--master", master or cfg.master]
    if memory or cfg.ember_memory:
        cmd += ["--memory", memory or cfg.ember_memory]
    return cmd


class Bench:
    def __init__(self, cfg: Config, tools: Tools, run_dir: Path):
        self.cfg, self.tools, self.run_dir = cfg, tools, run_dir
        self.logs = run_dir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.rows: list[Row] = []
        self.failures: list[str] = []
        self.missed_targets: list[str] = []  # performance targets: reported loudly, exit status unaffected

    def fail(self, row: Row, why: str) -> None:
        row.ok = False
        if not row.verified.startswith("FAIL"):
            row.verified = "FAIL"
        row.notes = (row.notes + "; " if row.notes else "") + why
        self.failures.append(f"{row.workload}/{row.engine}/{row.variant}: {why}")
        loud(f"{row.workload} {row.engine} {row.variant}: {why}")

    def check_target(self, row: Row, target: float, missed: str) -> None:
        """Marks a ratio row pass or FAIL against `target`; a miss is printed loudly with the
        message `missed` but is not a run failure (the exit status is unaffected)."""
        assert row.scaling_ratio is not None
        if row.scaling_ratio <= target:
            row.target_check = f"pass (<= {target:g}x)"
            return
        row.target_check = f"FAIL (> {target:g}x)"
        self.missed_targets.append(missed)
        loud(missed + "; a performance target, not a failed run: the exit status is unaffected")

    # -- word count and sort ---------------------------------------------------------------------

    def batch_workload(self, workload: str, ds: DataSet) -> None:
        cfg = self.cfg
        size = (f"{human_bytes(int(ds.truth['bytes']))} text, {ds.truth['words']} words"
                if workload == "wordcount" else f"{ds.truth['records']} records ({human_bytes(int(ds.truth['bytes']))})")
        variants: list[tuple[str, str, str | None]] = []  # (engine, variant, spark program)
        if "ember" in cfg.engines:
            variants.append(("ember", "rdd", None))
        if "spark" in cfg.engines:
            variants += [("spark", api, prog) for api, prog, default in SPARK_PROGRAMS[workload]
                         if default or cfg.spark_api == "all"]
        results: dict[tuple[str, str], list[Row]] = {}
        for rep in range(cfg.repeat):
            order = variants if rep % 2 == 0 else list(reversed(variants))
            for engine, variant, program in order:
                row = self.batch_run(workload, engine, variant, program, ds, size, rep)
                results.setdefault((engine, variant), []).append(row)
        for key, reps in results.items():
            self.rows.append(aggregate(reps))

    def batch_run(self, workload: str, engine: str, variant: str, program: str | None, ds: DataSet,
                  size: str, rep: int, master: str | None = None, row_workload: str | None = None,
                  memory: str | None = None) -> Row:
        cfg = self.cfg
        basis = TIME_BASIS_EMBER if engine == "ember" else TIME_BASIS_SPARK_JOB
        row = Row(row_workload or workload, engine, variant, size, basis)
        if engine == "ember" and self.tools.ember_error:
            self.fail(row, f"not run: {self.tools.ember_error}")
            return row
        out_dir = cfg.data_dir / "out" / f"{row.workload}-{workload}-{engine}-{re.sub(r'[^A-Za-z0-9]+', '_', variant)}"
        shutil.rmtree(out_dir, ignore_errors=True)
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        warm_page_cache(ds.path)
        log(f"{workload}: {engine} ({variant}), run {rep + 1}/{cfg.repeat}")
        if engine == "ember":
            example = "word_count" if workload == "wordcount" else "sort"
            # Spark's sort programs order by the key before the TAB; `--by-key` does the same.
            extra = ["--by-key"] if workload == "sort" else []
            cmd, env = ember_cmd(cfg, self.tools, example, [str(ds.path), str(out_dir), *extra], master, memory), None
        else:
            assert program is not None
            cmd, env = spark_cmd(cfg, self.tools, program, [str(ds.path), str(out_dir)]), spark_env()
        log_name = f"{row.workload}-{workload}-{engine}-{re.sub(r'[^A-Za-z0-9]+', '_', variant)}-{rep + 1}"
        m = measure(cmd, self.logs / log_name, cfg, env)
        fill_memory(row, m)
        if m.returncode != 0 or m.timed_out:
            self.fail(row, describe_failure(m))
            return row
        if engine == "ember":
            row.wall_s = m.wall_s
            own = re.search(r" in ([0-9.]+) s\b", m.stdout)
            if own:
                row.notes = f"Ember's own timer (excl. context start): {float(own.group(1)):.2f} s"
        else:
            line = next((l for l in m.stdout.splitlines() if l.startswith("BENCH ")), None)
            if line is None:
                self.fail(row, "no BENCH line in the Spark program's output")
                return row
            kv = kv_pairs(line)
            row.wall_s = float(kv["job_s"])
            row.startup_s = float(kv["jvm_start_s"]) + float(kv["session_start_s"])
            row.notes = f"program {program}; driver heap -Xmx{cfg.spark_memory}"
        row.verified = verify_output(cfg, self.tools, workload, out_dir, ds)
        if row.verified != "ok":
            self.fail(row, f"output check: {row.verified}")
        if not cfg.keep_output:
            shutil.rmtree(out_dir, ignore_errors=True)
        log(f"  {engine} {variant}: {fmt(row.wall_s, 2)} s ({basis}), process {m.wall_s:.2f} s, "
            f"peak RSS {row.peak_rss_mib:.0f} MiB, output {row.verified}")
        return row

    # -- tiny jobs -------------------------------------------------------------------------------

    def tiny_workload(self) -> None:
        cfg = self.cfg
        label = f"running_sum ITERS={cfg.iters} TASKS={cfg.tasks}"
        if "ember" in cfg.engines:
            for group in cfg.groups:
                reps = [self.tiny_ember(group, label, rep) for rep in range(cfg.repeat)]
                self.rows.append(aggregate(reps))
        if "spark" in cfg.engines:
            reps = [self.tiny_spark_running_sum(label, rep) for rep in range(cfg.repeat)]
            self.rows.append(aggregate(reps))
            by_variant: dict[str, list[Row]] = {}
            for rep in range(cfg.repeat):
                for r in self.tiny_spark_reference(rep):
                    by_variant.setdefault(r.variant, []).append(r)
            self.rows += [aggregate(v) for v in by_variant.values()]

    def tiny_ember(self, group: int, label: str, rep: int) -> Row:
        cfg = self.cfg
        log(f"tiny: ember running_sum group={group}, run {rep + 1}/{cfg.repeat}")
        cmd = ember_cmd(cfg, self.tools, "running_sum",
                        [str(cfg.iters), str(cfg.tasks), str(group), "--trials", str(cfg.tiny_trials)])
        return self.ember_running_sum("tiny", f"running_sum group={group}", label, cmd,
                                      f"tiny-ember-group{group}-{rep + 1}", cfg.tasks)

    def ember_running_sum(self, workload: str, variant: str, label: str, cmd: list[str], stem: str,
                          tasks: int) -> Row:
        """Runs one Ember running_sum command and reads its trials into a row."""
        row = Row(workload, "ember", variant, label, TIME_BASIS_TINY)
        if self.tools.ember_error:
            self.fail(row, f"not run: {self.tools.ember_error}")
            return row
        m = measure(cmd, self.logs / stem, self.cfg)
        fill_memory(row, m)
        if m.returncode != 0 or m.timed_out:
            self.fail(row, describe_failure(m))
            return row
        self.fill_trials(row, m.stdout, "ember", self.cfg.iters, tasks)
        return row

    def tiny_spark_running_sum(self, label: str, rep: int) -> Row:
        cfg = self.cfg
        row = Row("tiny", "spark", "running_sum (no grouping)", label, TIME_BASIS_TINY)
        log(f"tiny: spark RunningSum, run {rep + 1}/{cfg.repeat}")
        cmd = spark_cmd(cfg, self.tools, "RunningSum", [str(cfg.iters), str(cfg.tasks), str(cfg.tiny_trials),
                                                        "--warmup-trials", str(cfg.spark_warmup_trials)])
        m = measure(cmd, self.logs / f"tiny-spark-running_sum-{rep + 1}", cfg, spark_env())
        fill_memory(row, m)
        if m.returncode != 0 or m.timed_out:
            self.fail(row, describe_failure(m))
            return row
        self.fill_trials(row, m.stdout, "spark", cfg.iters, cfg.tasks)
        return row

    def fill_trials(self, row: Row, stdout: str, engine: str, iters: int, tasks: int) -> None:
        trials = [kv_pairs(l) for l in stdout.splitlines() if "per_iter_ms=" in l and "iters=" in l]
        # Warm-up trials (Ember runs one of its own and does not print it; the Spark program prints
        # its JIT warm-up trials with warmup=1) do not count: the figure is the median of the rest.
        used = [t for t in trials if t.get("warmup", "0") == "0"]
        if not used:
            self.fail(row, "no `iters=.. per_iter_ms=..` line in the output")
            return
        per = [float(t["per_iter_ms"]) for t in used]
        row.per_job_ms = statistics.median(per)
        row.wall_s = statistics.median(float(t["total_ms"]) for t in used) / 1000.0
        if "session_start_s" in trials[0]:
            row.startup_s = float(trials[0]["session_start_s"]) + float(trials[0].get("jvm_start_s", 0))
        seen = {k: trials[0].get(k) for k in ("iters", "tasks", "group") if k in trials[0]}
        bad = [t for t in trials if t.get("result_ok") == "false"]
        row.verified = "FAIL: wrong running sum" if bad else ("ok" if "result_ok" in trials[0] else "n/a")
        if bad:
            self.fail(row, "wrong running sum")
        warm = [t for t in trials if t not in used]
        row.notes = (f"median of {len(used)} trials: {', '.join('%.1f' % float(t['per_iter_ms']) for t in used)} ms/job"
                     + (f" (after warm-up trials at {', '.join('%.1f' % float(t['per_iter_ms']) for t in warm)})"
                        if warm else "") + "; " + " ".join(f"{k}={v}" for k, v in seen.items()))
        if engine == "ember" and (seen.get("iters") not in (None, str(iters))
                                  or seen.get("tasks") not in (None, str(tasks))):
            self.fail(row, f"Ember ran {seen}, expected iters={iters} tasks={tasks}")
        log(f"  {row.engine} {row.variant}: {row.per_job_ms:.2f} ms/job, peak RSS {row.peak_rss_mib:.0f} MiB")

    def tiny_spark_reference(self, rep: int) -> list[Row]:
        cfg = self.cfg
        log(f"tiny: spark reference jobs (single stage, two stages), run {rep + 1}/{cfg.repeat}")
        m = measure(spark_cmd(cfg, self.tools, "TinyJobs", [str(cfg.tasks)]),
                    self.logs / f"tiny-spark-reference-{rep + 1}", cfg, spark_env())
        rows = []
        lines = [kv_pairs(l) for l in m.stdout.splitlines() if l.startswith("BENCH program=TinyJobs")]
        for job, label in [("single_stage", f"single-stage job, {cfg.tasks} tasks"),
                           ("two_stage_reduce_by_key", f"two-stage reduceByKey job, {cfg.tasks}+{cfg.tasks} tasks")]:
            row = Row("tiny", "spark", job, label, TIME_BASIS_TINY)
            fill_memory(row, m)
            kv = next((l for l in lines if l.get("job") == job), None)
            if m.returncode != 0 or kv is None:
                self.fail(row, describe_failure(m) if m.returncode else "no BENCH line")
            else:
                row.per_job_ms = float(kv["median_ms"])
                row.wall_s = float(kv["median_ms"]) * int(kv["jobs"]) / 1000.0
                row.startup_s = float(kv["jvm_start_s"]) + float(kv["session_start_s"])
                row.notes = (f"median of {kv['jobs']} jobs after warm-up (p10 {float(kv['p10_ms']):.1f} ms, "
                             f"p90 {float(kv['p90_ms']):.1f} ms); reference only, no Ember counterpart")
                log(f"  spark {job}: {row.per_job_ms:.2f} ms/job")
            rows.append(row)
        return rows

    # -- cluster-tiny: running_sum on executors in processes, Ember's group sizes and Spark -------

    def cluster_tiny_workload(self) -> None:
        cfg = self.cfg
        label = f"running_sum ITERS={cfg.iters} TASKS={CLUSTER_TINY_TASKS} on {CLUSTER_TINY_MASTER}"
        by_group: dict[str, Row] = {}
        if "ember" in cfg.engines:
            for group in CLUSTER_TINY_GROUPS:
                reps = [self.cluster_tiny_ember(group, label, rep) for rep in range(cfg.repeat)]
                by_group[group] = aggregate(reps)
                self.rows.append(by_group[group])
        spark = None
        if "spark" in cfg.engines:
            spark = aggregate([self.cluster_tiny_spark(label, rep) for rep in range(cfg.repeat)])
            self.rows.append(spark)
        if "10" in by_group and "1" in by_group:
            self.ratio_row(by_group["10"], by_group["1"], "t(group 10)/t(group 1)", label, CLUSTER_TINY_GROUP_TARGET)
        if spark is not None and "1" in by_group:
            self.ratio_row(by_group["1"], spark, "t(ember group 1)/t(spark)", label, CLUSTER_TINY_SPARK_TARGET)

    def ratio_row(self, a: Row, b: Row, name: str, label: str, target: float) -> None:
        row = Row("cluster-tiny", "ember", f"ratio {name}", label, TIME_BASIS_SCALING_RATIO)
        if a.ok and b.ok and a.per_job_ms and b.per_job_ms:
            row.scaling_ratio = a.per_job_ms / b.per_job_ms
            row.notes = f"{a.per_job_ms:.3f} ms / {b.per_job_ms:.3f} ms"
            self.check_target(row, target, f"cluster-tiny target missed: {name} = {row.scaling_ratio:.3f} (> {target:g})")
        else:
            row.target_check = "not measured"
            row.notes = "a measured run failed: no ratio"
        log(f"  cluster-tiny {name}: {fmt_ratio(row.scaling_ratio) or '-'}  {row.target_check}")
        self.rows.append(row)

    def cluster_tiny_ember(self, group: str, label: str, rep: int) -> Row:
        cfg = self.cfg
        log(f"cluster-tiny: ember running_sum group={group} on {CLUSTER_TINY_MASTER}, run {rep + 1}/{cfg.repeat}")
        args = [str(cfg.iters), str(CLUSTER_TINY_TASKS)]
        args += ["--conf", "ember.scheduler.groupSize=auto"] if group == "auto" else [group]
        cmd = [str(self.tools.ember_bins.get("running_sum", "running_sum")), *args, "--trials", str(cfg.tiny_trials),
               "--master", CLUSTER_TINY_MASTER]
        return self.ember_running_sum("cluster-tiny", f"running_sum group={group}", label, cmd,
                                      f"cluster-tiny-ember-group{group}-{rep + 1}", CLUSTER_TINY_TASKS)

    def cluster_tiny_spark(self, label: str, rep: int) -> Row:
        cfg = self.cfg
        row = Row("cluster-tiny", "spark", f"RunningSum on {CLUSTER_TINY_MASTER}", label, TIME_BASIS_TINY)
        args = [str(cfg.iters), str(CLUSTER_TINY_TASKS), str(cfg.tiny_trials),
                "--warmup-trials", str(cfg.spark_warmup_trials)]
        log(f"cluster-tiny: spark RunningSum on {CLUSTER_TINY_MASTER}, run {rep + 1}/{cfg.repeat}")
        # The executors load the benchmark's classes from where the driver does.
        cmd = spark_cmd(cfg, self.tools, "RunningSum", args, master=CLUSTER_TINY_MASTER)
        cmd += ["--conf", f"spark.executor.extraClassPath={self.tools.java_classes}"]
        m = measure(cmd, self.logs / f"cluster-tiny-spark-{rep + 1}", cfg, spark_cluster_env(cfg, self.tools))
        if m.returncode != 0 or m.timed_out:
            why = describe_failure(m)
            loud(f"Spark could not run on {CLUSTER_TINY_MASTER} ({why}); measuring it on local[4] instead")
            row.variant = "RunningSum on local[4] (its local-cluster failed)"
            m = measure(spark_cmd(cfg, self.tools, "RunningSum", args, master="local[4]"),
                        self.logs / f"cluster-tiny-spark-local-{rep + 1}", cfg, spark_env())
        fill_memory(row, m)
        if m.returncode != 0 or m.timed_out:
            self.fail(row, describe_failure(m))
            return row
        self.fill_trials(row, m.stdout, "spark", cfg.iters, CLUSTER_TINY_TASKS)
        return row

    # -- cluster: executors in processes against local mode ---------------------------------------

    def cluster_workload(self, datasets: dict[str, DataSet]) -> None:
        """Ember's word count and sort on CLUSTER_MASTER and on CLUSTER_LOCAL_MASTER with the same
        memory in all, in turn and each verified, then one ratio row per program (cluster over
        local), checked against CLUSTER_TARGET (a miss is printed loudly but does not change the
        exit status)."""
        cfg = self.cfg
        if "ember" not in cfg.engines:
            log("cluster: Ember only; skipped (--engines has no ember)")
            return
        for workload, ds in datasets.items():
            size = (f"{human_bytes(int(ds.truth['bytes']))} text" if workload == "wordcount"
                    else f"{ds.truth['records']} records")
            local_master = CLUSTER_LOCAL_MASTER
            runs: dict[str, list[Row]] = {local_master: [], CLUSTER_MASTER: []}
            for rep in range(cfg.repeat):
                masters = [local_master, CLUSTER_MASTER] if rep % 2 == 0 else [CLUSTER_MASTER, local_master]
                for master in masters:
                    memory = CLUSTER_LOCAL_MEMORY if master == local_master else None
                    variant = f"{workload} on {master}" + (f" ({memory})" if memory else "")
                    runs[master].append(self.batch_run(workload, "ember", variant, None, ds, size, rep, master=master,
                                                       row_workload="cluster", memory=memory))
            local, cluster = aggregate(runs[local_master]), aggregate(runs[CLUSTER_MASTER])
            self.rows += [local, cluster]
            row = Row("cluster", "ember", f"ratio {workload} cluster/local", f"{CLUSTER_MASTER} vs {local_master}",
                      TIME_BASIS_CLUSTER_RATIO)
            if local.ok and cluster.ok and local.wall_s and cluster.wall_s:
                row.scaling_ratio = cluster.wall_s / local.wall_s
                row.notes = f"{cluster.wall_s:.2f} s / {local.wall_s:.2f} s"
                self.check_target(row, CLUSTER_TARGET,
                                  f"cluster target missed: {workload} on {CLUSTER_MASTER} took "
                                  f"{row.scaling_ratio:.2f}x its time on {local_master}")
            else:
                row.target_check = "not measured"
                row.notes = "a measured run failed: no ratio"
            log(f"  cluster {workload}: {fmt_ratio(row.scaling_ratio) or '-'}x  {row.target_check}")
            self.rows.append(row)

    # -- scaling: running_sum at 10, 100, 1000 tasks -----------------------------------------------

    def scaling_workload(self) -> None:
        """Ember's running_sum (group 1: every job scheduled on its own) at each (TASKS, ITERS) of
        --scaling-points, then one derived row per pair of neighbouring points with the ratio of
        the per-job times. A ratio over the target (only for 100 -> 1000 tasks, the issue's) is
        printed loudly and marked FAIL in `target_check`, but is not a run failure: the exit
        status stays that of the runs and output checks."""
        cfg = self.cfg
        if "ember" not in cfg.engines:
            log("scaling: Ember only; skipped (--engines has no ember)")
            return
        # The points take turns, round after round, so that a change in the machine's load
        # during the workload falls on every point alike instead of on one end of the ratio;
        # each point's figure is the median of its rounds' medians.
        rounds = cfg.repeat * cfg.scaling_rounds
        runs: list[list[Row]] = [[] for _ in cfg.scaling_points]
        for rep in range(rounds):
            for point, (tasks, iters) in enumerate(cfg.scaling_points):
                label = f"running_sum ITERS={iters} TASKS={tasks}"
                runs[point].append(self.scaling_ember(tasks, iters, label, rep, rounds))
        measured: list[tuple[int, Row]] = []
        for (tasks, _), point_runs in zip(cfg.scaling_points, runs):
            row = aggregate(point_runs)
            self.rows.append(row)
            measured.append((tasks, row))
        for (t0, r0), (t1, r1) in zip(measured, measured[1:]):
            row = Row("scaling", "ember", f"ratio t({t1})/t({t0})", f"running_sum TASKS={t0} -> {t1}",
                      TIME_BASIS_SCALING_RATIO)
            has_target = (t0, t1) == (100, 1000)
            if r0.ok and r1.ok and r0.per_job_ms and r1.per_job_ms is not None:
                row.scaling_ratio = r1.per_job_ms / r0.per_job_ms
                # Work per iteration: TASKS map x TASKS reduce shuffle blocks; after the map-side
                # combine each map task (1000 numbers, keys mod TASKS) writes min(1000, TASKS) records.
                blocks, recs = (t1 / t0) ** 2, t1 * min(1000, t1) / (t0 * min(1000, t0))
                row.notes = (f"{r1.per_job_ms:.3f} / {r0.per_job_ms:.3f} ms/job; tasks x{t1 / t0:g}, "
                             f"shuffle blocks x{blocks:g}, shuffled records x{recs:g}")
                if not has_target:
                    row.target_check = "no target"
                else:
                    self.check_target(row, cfg.scaling_target,
                                      f"scaling target missed: running_sum t({t1})/t({t0}) = {row.scaling_ratio:.1f}x "
                                      f"> {cfg.scaling_target:g}x ({r1.per_job_ms:.3f} vs {r0.per_job_ms:.3f} ms/job)")
            else:
                row.target_check = "not measured" if has_target else "no target"
                row.notes = "a measured run failed: no ratio"
            log(f"  scaling t({t1})/t({t0}): {fmt_ratio(row.scaling_ratio) or '-'}x  {row.target_check}")
            self.rows.append(row)

    def scaling_ember(self, tasks: int, iters: int, label: str, rep: int, rounds: int) -> Row:
        cfg = self.cfg
        row = Row("scaling", "ember", f"running_sum tasks={tasks} group=1", label, TIME_BASIS_TINY)
        if self.tools.ember_error:
            self.fail(row, f"not run: {self.tools.ember_error}")
            return row
        log(f"scaling: ember running_sum {iters} iterations x {tasks} tasks, round {rep + 1}/{rounds}")
        cmd = ember_cmd(cfg, self.tools, "running_sum", [str(iters), str(tasks), "1", "--trials", str(cfg.scaling_trials)])
        m = measure(cmd, self.logs / f"scaling-ember-tasks{tasks}-iters{iters}-{rep + 1}", cfg)
        fill_memory(row, m)
        if m.returncode != 0 or m.timed_out:
            self.fail(row, describe_failure(m))
            return row
        self.fill_trials(row, m.stdout, "ember", iters, tasks)
        return row


def aggregate(reps: list[Row]) -> Row:
    """Folds repeated runs of one variant: median times, max memory, all checks must pass."""
    if len(reps) == 1:
        return reps[0]
    good = [r for r in reps if r.ok]
    base = Row(**{**reps[0].__dict__})
    base.runs = len(reps)
    base.ok = len(good) == len(reps)
    if good:
        for attr in ("wall_s", "process_wall_s", "startup_s", "per_job_ms"):
            vals = [getattr(r, attr) for r in good if getattr(r, attr) is not None]
            setattr(base, attr, statistics.median(vals) if vals else None)
        for attr in ("peak_rss_mib", "rss_time_v_mib", "rss_tree_mib", "load_before"):
            vals = [getattr(r, attr) for r in good if getattr(r, attr) is not None]
            setattr(base, attr, max(vals) if vals else None)
    verdicts = {r.verified for r in reps}
    base.verified = "ok" if verdicts == {"ok"} else "; ".join(sorted(v for v in verdicts if v != "ok")) or "n/a"
    notes = {r.notes for r in reps if r.notes}
    base.notes = f"median of {len(reps)} runs ({len(good)} ok); " + " | ".join(sorted(notes))
    return base


def compute_ratios(rows: list[Row]) -> None:
    """Ember/Spark ratios against the fastest successful Spark variant of the same workload
    (for tiny jobs: Spark's running_sum)."""
    for workload in WORKLOADS:
        spark = [r for r in rows if r.workload == workload and r.engine == "spark" and r.ok
                 and r.figure() is not None and (workload != "tiny" or r.variant.startswith("running_sum"))]
        if not spark:
            continue
        base = min(spark, key=lambda r: r.figure())
        base.notes = ("ratio baseline; " + base.notes) if base.notes else "ratio baseline"
        for r in rows:
            if r.workload == workload and r.engine == "ember" and r.figure() is not None:
                r.time_ratio = r.figure() / base.figure()
                if r.peak_rss_mib and base.peak_rss_mib:
                    r.mem_ratio = r.peak_rss_mib / base.peak_rss_mib


def print_table(rows: list[Row]) -> None:
    headers = ["workload", "engine", "variant", "time", "per job", "startup", "peak RSS", "time x", "mem x", "check"]
    table = []
    for r in rows:
        table.append([
            r.workload, r.engine, r.variant,
            f"{r.wall_s:.2f} s" if r.wall_s is not None else "-",
            f"{r.per_job_ms:.1f} ms" if r.per_job_ms is not None else "",
            f"{r.startup_s:.1f} s" if r.startup_s is not None else "",
            f"{r.peak_rss_mib:.0f} MiB" if r.peak_rss_mib else "-",
            fmt_ratio(r.time_ratio),
            fmt_ratio(r.mem_ratio),
            (f"{fmt_ratio(r.scaling_ratio)}x {r.target_check}" if r.scaling_ratio is not None else r.target_check)
            if r.time_basis in (TIME_BASIS_SCALING_RATIO, TIME_BASIS_CLUSTER_RATIO) else
            r.verified if len(r.verified) < 30 else r.verified[:27] + "...",
        ])
    widths = [max(len(h), *(len(t[i]) for t in table)) if table else len(h) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths))
    print("\n" + line + "\n" + "-" * len(line))
    for t in table:
        print("  ".join(c.ljust(w) for c, w in zip(t, widths)))
    print("time x / mem x: Ember divided by Spark (below 1 means Ember is faster / smaller). "
          "Word count and sort compare Ember's whole process with Spark's job time excluding "
          "JVM and session start; tiny jobs compare per-job latency. Scaling ratio rows: Ember's "
          "per-job time at more tasks over fewer, in `check`.\n")


def environment(cfg: Config, tools: Tools) -> dict:
    def out(cmd: list[str]) -> str:
        try:
            r = subprocess.run(cmd, text=True, capture_output=True, cwd=REPO)
            return (r.stdout + r.stderr).strip()
        except OSError as e:
            return f"unavailable ({e})"

    cpu = ""
    try:
        cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "")
    except OSError:
        pass
    return {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "command": cfg.command,
        "scale": cfg.scale,
        "master": cfg.master,
        "cpus_pinned": cfg.cpus or "not pinned",
        "spark_driver_heap": cfg.spark_memory,
        "spark_conf": cfg.spark_conf,
        "ember_memory": cfg.ember_memory or "engine default",
        "host_cpus": os.cpu_count(),
        "cpu_model": cpu,
        "mem_total": next((l.split(":")[1].strip() for l in open("/proc/meminfo") if l.startswith("MemTotal")), ""),
        "kernel": platform.release(),
        "java": out(["java", "-version"]).splitlines()[0] if shutil.which("java") else "missing",
        "pyspark": PYSPARK_VERSION,
        "rustc": out(["rustc", "--version"]),
        "git_commit": out(["git", "rev-parse", "--short", "HEAD"]),
        "git_dirty": bool(out(["git", "status", "--porcelain", "--untracked-files=no"])),
        "ember_binaries": {k: rel(v) for k, v in tools.ember_bins.items()},
    }


# ------------------------------------------------------------------------------------------------


def parse_args(argv: list[str]) -> Config:
    p = argparse.ArgumentParser(
        prog="benchmarks/run.sh",
        description="Ember vs Apache Spark (pyspark %s jars, Java programs) on word count, sort and tiny "
                    "iterative jobs, and Ember's tiny-job scaling with the task count. Writes benchmarks/results/<time>/results.csv." % PYSPARK_VERSION)
    p.add_argument("--scale", choices=SCALES, default="full",
                   help="data size preset: small = 50 MiB text / 1M records, medium = 256 MiB / 10M, "
                        "full = 1 GiB / 50M (default)")
    p.add_argument("--text-size", type=lambda s: parse_size(s, True), help="override the text size (e.g. 2g = 2 GiB)")
    p.add_argument("--records", type=lambda s: parse_size(s, False), help="override the record count (e.g. 20m)")
    p.add_argument("--parts", type=int, help="input files per data set (default: about 64 MiB each, at least 2)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--workloads", default=",".join(WORKLOADS), help="comma list of %s" % ",".join(WORKLOADS))
    p.add_argument("--engines", default="ember,spark", help="comma list of ember,spark")
    p.add_argument("--spark-api", choices=["default", "all"], default="default",
                   help="default: Spark's fastest programs (word count: Dataset and RDD; sort: DataFrame); "
                        "all: every variant (RDD, Dataset, DataFrame). Ratios use the fastest of the run")
    p.add_argument("--spark-memory", default="1g", help="Spark driver heap (-Xmx; local mode), default 1g")
    p.add_argument("--spark-conf", action="append", default=[], metavar="KEY=VALUE",
                   help="extra Spark setting (repeatable)")
    p.add_argument("--ember-memory", help="pass --memory SIZE to the Ember examples (default: not passed)")
    p.add_argument("--repeat", type=int, default=1, help="runs per engine and workload (median reported)")
    p.add_argument("--cpus", default="auto",
                   help="CPU list both engines are pinned to with taskset (default: the first two CPUs "
                        "this process may use); 'none' to not pin")
    p.add_argument("--master", default="local[2]")
    p.add_argument("--iters", type=int, default=100)
    p.add_argument("--tasks", type=int, default=10)
    p.add_argument("--groups", default="1,10", help="Ember group sizes for running_sum")
    p.add_argument("--tiny-trials", type=int, default=3,
                   help="measured running_sum trials per process, both engines, tiny workload (default 3)")
    p.add_argument("--scaling-trials", type=int, default=7,
                   help="measured running_sum trials per process in the scaling workload (default 7: a "
                        "ratio of two medians of runs of a fraction of a second needs more than 3 to be stable)")
    p.add_argument("--scaling-rounds", type=int, default=3,
                   help="scaling workload: rounds in which every point runs once, in turn (default 3); "
                        "a point's figure is the median of its rounds (times --repeat)")
    p.add_argument("--scaling-points", default=SCALING_POINTS, metavar="TASKS:ITERS,...",
                   help="scaling workload: Ember running_sum runs, as TASKS:ITERS (default %s)" % SCALING_POINTS)
    p.add_argument("--scaling-target", type=float, default=SCALING_TARGET,
                   help="scaling workload: most t(1000 tasks)/t(100 tasks) may be (default %g); a miss is "
                        "printed loudly but does not change the exit status" % SCALING_TARGET)
    p.add_argument("--spark-warmup-trials", type=int, default=2,
                   help="unmeasured running_sum trials Spark runs first to JIT-compile (default 2; "
                        "Ember's example runs one warm-up trial of its own)")
    p.add_argument("--timeout", type=float, default=3600, help="seconds before a run is killed")
    p.add_argument("--no-build", action="store_true",
                   help="do not run cargo; use the binaries in $CARGO_TARGET_DIR/release/examples")
    p.add_argument("--ember-bin-dir", type=Path, help="directory with word_count, sort, running_sum binaries")
    p.add_argument("--data-dir", type=Path, default=HERE / "data")
    p.add_argument("--results-dir", type=Path, default=HERE / "results")
    p.add_argument("--cache-dir", type=Path,
                   default=Path(os.environ.get("EMBER_BENCH_CACHE",
                                               Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
                                               / "ember-bench")))
    p.add_argument("--keep-output", action="store_true", help="keep the engines' output directories")
    a = p.parse_args(argv)

    scale = SCALES[a.scale]
    text_bytes = a.text_size or scale["text_bytes"]
    records = a.records or scale["records"]
    workloads = [w.strip() for w in a.workloads.split(",") if w.strip()]
    engines = [e.strip() for e in a.engines.split(",") if e.strip()]
    for w in workloads:
        if w not in WORKLOADS:
            p.error(f"unknown workload {w!r}")
    for e in engines:
        if e not in ("ember", "spark"):
            p.error(f"unknown engine {e!r}")
    try:
        scaling_points = [(int(t), int(i)) for t, i in
                          (pt.split(":") for pt in a.scaling_points.split(",") if pt.strip())]
    except ValueError:
        p.error(f"--scaling-points: expected TASKS:ITERS,..., got {a.scaling_points!r}")
    if any(t < 1 or i < 1 for t, i in scaling_points):
        p.error("--scaling-points: TASKS and ITERS must be positive")
    if a.cpus == "auto":
        allowed = sorted(os.sched_getaffinity(0))
        cpus = ",".join(str(c) for c in allowed[:2]) if shutil.which("taskset") else None
    elif a.cpus == "none":
        cpus = None
    else:
        cpus = a.cpus
    script = os.environ.get("EMBER_BENCH_SCRIPT")
    command = shlex.join(["bash", script, *argv] if script else ["python3", rel(Path(__file__)), *argv])
    return Config(
        scale=a.scale if not (a.text_size or a.records) else f"{a.scale}+overrides",
        text_bytes=text_bytes, records=records,
        text_parts=a.parts or max(2, math.ceil(text_bytes / (64 * MIB))),
        record_parts=a.parts or max(2, math.ceil(records * 20 / (64 * MIB))),
        seed=a.seed, workloads=workloads, engines=engines, spark_api=a.spark_api,
        spark_memory=a.spark_memory, spark_conf=a.spark_conf, ember_memory=a.ember_memory,
        repeat=max(1, a.repeat), cpus=cpus, master=a.master, iters=a.iters, tasks=a.tasks,
        groups=[int(g) for g in a.groups.split(",") if g.strip()], tiny_trials=max(1, a.tiny_trials),
        scaling_trials=max(1, a.scaling_trials), scaling_rounds=max(1, a.scaling_rounds), scaling_points=scaling_points, scaling_target=a.scaling_target,
        spark_warmup_trials=max(0, a.spark_warmup_trials),
        timeout=a.timeout, build=not a.no_build, ember_bin_dir=a.ember_bin_dir,
        data_dir=a.data_dir.resolve(), results_dir=a.results_dir.resolve(), cache_dir=a.cache_dir.resolve(),
        keep_output=a.keep_output, command=command,
    )


def main(argv: list[str]) -> int:
    cfg = parse_args(argv)
    for tool in ["rustc", "/usr/bin/time"] + (["java", "javac"] if "spark" in cfg.engines else []):
        if not shutil.which(tool):
            die(f"{tool} not found (benchmarks/run.sh installs it when it can)")
    cfg.cache_dir.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir = cfg.results_dir / stamp
    run_dir.mkdir(parents=True, exist_ok=True)
    log(f"results go to {rel(run_dir)}; command: {cfg.command}")
    log(f"scale {cfg.scale}: {human_bytes(cfg.text_bytes)} text, {cfg.records} records; master {cfg.master}; "
        f"pinned to CPUs {cfg.cpus or '(not pinned)'}; Spark driver heap {cfg.spark_memory}")

    tools = Tools(datagen=compile_datagen(cfg))
    if "spark" in cfg.engines:
        tools.spark_jars = spark_jars_dir()
        tools.java_classes, tools.jvm_module_opts = compile_spark_programs(cfg, tools.spark_jars)
    if "ember" in cfg.engines:
        tools.ember_bins, tools.ember_error = build_ember(cfg)
        if tools.ember_error:
            loud(f"Ember is not runnable: {tools.ember_error}. Spark runs anyway; Ember rows are marked failed.")

    bench = Bench(cfg, tools, run_dir)
    for workload in cfg.workloads:
        if workload == "tiny":
            bench.tiny_workload()
            continue
        if workload == "scaling":
            bench.scaling_workload()
            continue
        if workload == "cluster-tiny":
            bench.cluster_tiny_workload()
            continue
        if workload == "cluster":
            datasets = {w: ensure_data(cfg, tools, "text" if w == "wordcount" else "records") for w in ("wordcount", "sort")}
            for ds in datasets.values():
                check_full_scale(cfg, ds)
            bench.cluster_workload(datasets)
            continue
        ds = ensure_data(cfg, tools, "text" if workload == "wordcount" else "records")
        check_full_scale(cfg, ds)
        bench.batch_workload(workload, ds)

    compute_ratios(bench.rows)
    csv_path = run_dir / "results.csv"
    with open(csv_path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        w.writeheader()
        for r in bench.rows:
            w.writerow(row_to_csv(r))
    (run_dir / "command.txt").write_text(cfg.command + "\n")
    (run_dir / "environment.json").write_text(json.dumps(environment(cfg, tools), indent=1) + "\n")
    shutil.copyfile(csv_path, cfg.results_dir / "latest.csv")
    print_table(bench.rows)
    log(f"wrote {rel(csv_path)} (also {rel(cfg.results_dir / 'latest.csv')}); command in {rel(run_dir / 'command.txt')}")
    if bench.missed_targets:
        loud("PERFORMANCE TARGETS MISSED (not failures; the exit status is unaffected):\n"
             + "\n".join(f"!!!   {t}" for t in bench.missed_targets))
    if bench.failures:
        loud("FAILURES:\n" + "\n".join(f"!!!   {f}" for f in bench.failures))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
