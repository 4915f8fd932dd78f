#!/usr/bin/env python3
"""TPC-H on five engines side by side: Ember, DataFusion (Python), Sail, DuckDB and Apache Spark.

Run through `benchmarks/tpch/run.sh`, which installs the engines into virtualenvs and builds
Ember. See README.md (next to this file) for what is measured and how.

The same file is also the per-engine driver: the orchestrator starts
`python run.py --driver ENGINE ...` once per engine and scale (again after a timeout or a crash),
so that each engine runs in its own process tree whose memory can be measured. Drivers report to
the orchestrator as JSON lines on a dedicated pipe; their stdout and stderr go to a log file.
Ember needs no driver: `ember tpch run` is measured directly.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import math
import os
import platform
import queue
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
QUERY_DIR = HERE / "queries"
TABLES = ["nation", "region", "part", "supplier", "partsupp", "customer", "orders", "lineitem"]
ENGINES = ["ember", "datafusion", "sail", "duckdb", "spark"]
OTHERS = [e for e in ENGINES if e != "ember"]
PARTITIONS = 2  # every engine: two partitions / threads / task slots
SAMPLE_INTERVAL = 0.05  # seconds between two samples of the process tree's memory
COMPLETE_MARKER = ".tpch-complete.json"
STARTUP_TIMEOUT = 300.0  # seconds an engine may take to start, at least (else --timeout if longer)

# Targets (ratio = Ember time / other engine's time).
TARGET_DATAFUSION = 1.3  # total and geometric mean within 1.3x of DataFusion
TARGET_SAIL = 1.0  # total and geometric mean no slower than Sail
TARGET_SPARK = 0.25  # every query at least 4x faster than Spark
MEMORY_TARGET_SCALE = 10.0  # peak memory below Sail's and Spark's, checked at this scale


def log(msg: str) -> None:
    print(f"[tpch {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def die(msg: str) -> None:
    print(f"run.py: error: {msg}", file=sys.stderr)
    sys.exit(2)


def one_line(text: str, limit: int = 600) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def parse_queries(spec: str) -> list[int]:
    out: list[int] = []
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        a, _, b = part.partition("-")
        lo, hi = int(a), int(b or a)
        if not (1 <= lo <= hi <= 22):
            raise argparse.ArgumentTypeError(f"--queries {spec}: expected numbers 1 to 22 like 1,3,5-7")
        out.extend(q for q in range(lo, hi + 1) if q not in out)
    if not out:
        raise argparse.ArgumentTypeError("--queries: empty")
    return out


def query_text(q: int) -> str:
    """The shared text of query q, without its trailing semicolon (the engines' Python APIs take
    one statement without it; Ember runs the same files, compiled in)."""
    text = (QUERY_DIR / f"q{q}.sql").read_text().strip()
    return text[:-1].rstrip() if text.endswith(";") else text


def scale_name(s: float) -> str:
    return f"{s:g}"


def rel(p: Path) -> str:
    try:
        return str(Path(p).resolve().relative_to(REPO))
    except ValueError:
        return str(p)


def human_bytes(n: float) -> str:
    for unit in ["B", "KiB", "MiB", "GiB", "TiB"]:
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit in ("B", "KiB") else f"{n:.2f} {unit}"
        n /= 1024
    return str(n)


# ================================================================================================
# Drivers (run in the engine's own process: `run.py --driver ENGINE`)


class Engine:
    """One engine inside a driver process: set up, run a query to the last row, shut down."""

    versions: dict[str, str] = {}

    def run(self, sql: str) -> int:
        raise NotImplementedError

    def alive(self) -> bool:
        return True

    def close(self) -> None:
        pass


class DataFusionEngine(Engine):
    def __init__(self, data: Path, a: argparse.Namespace):
        import datafusion
        from datafusion import SessionConfig, SessionContext

        self.versions = {"datafusion": datafusion.__version__}
        self.ctx = SessionContext(SessionConfig().with_target_partitions(PARTITIONS))
        for t in TABLES:
            self.ctx.register_parquet(t, str(data / t))

    def run(self, sql: str) -> int:
        return sum(b.num_rows for b in self.ctx.sql(sql).collect())


class DuckDBEngine(Engine):
    def __init__(self, data: Path, a: argparse.Namespace):
        import duckdb

        self.versions = {"duckdb": duckdb.__version__}
        self.con = duckdb.connect()
        self.con.execute(f"SET threads={PARTITIONS}")
        for t in TABLES:
            glob = str(data / t / "*.parquet").replace("'", "''")
            self.con.execute(f"CREATE VIEW {t} AS SELECT * FROM read_parquet('{glob}')")

    def run(self, sql: str) -> int:
        return len(self.con.execute(sql).fetchall())

    def close(self) -> None:
        self.con.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SailEngine(Engine):
    """A Sail Spark Connect server as a child process, queried with the PySpark Connect client."""

    def __init__(self, data: Path, a: argparse.Namespace):
        import importlib.metadata as md

        from pyspark.sql import SparkSession

        self.versions = {"pysail": md.version("pysail")}
        for dist in ("pyspark-client", "pyspark"):
            try:
                self.versions[dist] = md.version(dist)
                break
            except md.PackageNotFoundError:
                pass
        port = free_port()
        sail = Path(sys.executable).with_name("sail")
        cmd = [str(sail) if sail.exists() else "sail", "spark", "server", "--ip", "127.0.0.1", "--port", str(port)]
        env = dict(os.environ)
        # Sail's configuration comes from SAIL_* environment variables (key `a.b_c` is
        # SAIL_A__B_C). Local mode runs queries on threads in this one server process;
        # execution.default_parallelism is the number of partitions of its physical plans
        # (default 0: one per available CPU).
        env.update(SAIL_MODE="local", SAIL_EXECUTION__DEFAULT_PARALLELISM=str(PARTITIONS))
        env.update(dict(kv.split("=", 1) for kv in a.sail_env))
        print("starting: " + " ".join(f"{k}={v}" for k, v in env.items() if k.startswith("SAIL_")) + " " + shlex.join(cmd), flush=True)
        self.server = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while True:
            if self.server.poll() is not None:
                raise RuntimeError(f"the Sail server exited with code {self.server.returncode} at startup")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("the Sail server did not listen within 120 s")
                time.sleep(0.1)
        self.spark = SparkSession.builder.remote(f"sc://127.0.0.1:{port}").getOrCreate()
        for t in TABLES:
            self.spark.read.parquet(str(data / t)).createOrReplaceTempView(t)

    def run(self, sql: str) -> int:
        return self.spark.sql(sql).toArrow().num_rows

    def alive(self) -> bool:
        return self.server.poll() is None

    def close(self) -> None:
        try:
            self.spark.stop()
        except BaseException as e:  # noqa: BLE001 - the results are in; stop the server anyway
            print(f"stopping the Spark Connect session: {type(e).__name__}: {e}", flush=True)
        finally:
            self.server.terminate()
            try:
                self.server.wait(30)
            except subprocess.TimeoutExpired:
                self.server.kill()


class SparkEngine(Engine):
    """Apache Spark in local mode: the PySpark driver starts the JVM (spark-submit) as a child."""

    def __init__(self, data: Path, a: argparse.Namespace):
        import pyspark
        from pyspark.sql import SparkSession

        self.versions = {"pyspark": pyspark.__version__}
        b = SparkSession.builder.master(f"local[{PARTITIONS}]").appName("ember-tpch")
        for k, v in spark_conf(a).items():
            b = b.config(k, v)
        self.spark = b.getOrCreate()
        self.spark.sparkContext.setLogLevel("WARN")
        self.versions["spark"] = self.spark.version
        for t in TABLES:
            self.spark.read.parquet(str(data / t)).createOrReplaceTempView(t)

    def run(self, sql: str) -> int:
        return len(self.spark.sql(sql).collect())

    def close(self) -> None:
        self.spark.stop()


def spark_conf(a: argparse.Namespace) -> dict[str, str]:
    conf = {
        "spark.driver.memory": a.spark_memory,
        "spark.sql.adaptive.enabled": "true",
        "spark.sql.shuffle.partitions": str(a.spark_shuffle_partitions),
        "spark.ui.enabled": "false",
        "spark.driver.host": "127.0.0.1",
        "spark.driver.bindAddress": "127.0.0.1",
    }
    conf.update(dict(kv.split("=", 1) for kv in a.spark_conf))
    return conf


DRIVERS = {"datafusion": DataFusionEngine, "duckdb": DuckDBEngine, "sail": SailEngine, "spark": SparkEngine}


def driver_main(a: argparse.Namespace) -> int:
    events = os.fdopen(a.events_fd, "w", buffering=1)

    def emit(**kw) -> None:
        events.write(json.dumps(kw) + "\n")
        events.flush()

    texts = {q: query_text(q) for q in a.queries}
    started = time.perf_counter()
    try:
        engine = DRIVERS[a.driver](Path(a.data), a)
    except Exception as e:  # noqa: BLE001 - reported to the orchestrator
        emit(event="fatal", error=one_line(f"{type(e).__name__}: {e}"))
        return 2
    emit(event="ready", setup_seconds=time.perf_counter() - started, versions=engine.versions)
    for q in a.queries:
        for i in range(a.iterations):
            emit(event="begin", query=q, iteration=i)
            t0 = time.perf_counter()
            try:
                rows = engine.run(texts[q])
            except Exception as e:  # noqa: BLE001
                emit(event="error", query=q, iteration=i, error=one_line(f"{type(e).__name__}: {e}"))
                if not engine.alive():
                    return 3
                break
            emit(event="result", query=q, iteration=i, seconds=time.perf_counter() - t0, rows=rows)
    engine.close()
    emit(event="done")
    return 0


# ================================================================================================
# Memory: peak RSS of a process tree


def _address_space(pid: int) -> tuple:
    """Addresses fixed at exec (code, stack, data, heap start, argv) from /proc/PID/stat. A child
    made with fork or vfork/posix_spawn (the JVM starts helpers so) shares or copies its parent's
    address space until it execs, and its RSS repeats the parent's: equal addresses mark such a
    process, and it is counted once. Separately exec'd processes differ (address randomisation)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        space = tuple(fields[i - 3] for i in (26, 27, 28, 45, 46, 47, 48))
        return space if space[2] != "0" else ("pid", pid)
    except (OSError, IndexError):
        return ("pid", pid)


class TreeSampler(threading.Thread):
    """Every SAMPLE_INTERVAL seconds, sums the RSS of a process and all its descendants (with
    psutil) and keeps the peak; also the peak without the root process itself (for Sail and
    Spark the root is the Python client, the engine is its child)."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid = pid
        self.peak = 0
        self.peak_children = 0
        self.samples = 0
        self._halt = threading.Event()

    def sample(self) -> None:
        import psutil

        try:
            root = psutil.Process(self.pid)
            procs = [root] + root.children(recursive=True)
        except psutil.Error:
            return
        by_space: dict[tuple, int] = {}
        root_rss = 0
        for p in procs:
            try:
                rss = p.memory_info().rss
            except psutil.Error:
                continue
            if p.pid == self.pid:
                root_rss = rss
            space = _address_space(p.pid)
            by_space[space] = max(by_space.get(space, 0), rss)
        total = sum(by_space.values())
        self.peak = max(self.peak, total)
        self.peak_children = max(self.peak_children, total - root_rss)
        self.samples += 1

    def run(self) -> None:
        while True:
            self.sample()
            if self._halt.wait(SAMPLE_INTERVAL):
                break

    def stop(self) -> None:
        self._halt.set()
        self.join()


def kill_tree(proc: subprocess.Popen) -> None:
    import psutil

    try:
        procs = psutil.Process(proc.pid).children(recursive=True)
    except psutil.Error:
        procs = []
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver leads its own session and group
    except OSError:
        pass
    for p in procs:
        try:
            p.kill()
        except psutil.Error:
            pass
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        pass


# ================================================================================================
# Orchestrator


@dataclass
class Row:
    engine: str
    scale: float
    query: int
    iteration: int
    seconds: float | None
    rows: int | None
    status: str  # ok | warmup | error | timeout
    error: str = ""


@dataclass
class EngineRun:
    """What one engine did at one scale."""

    engine: str
    scale: float
    rows: list[Row] = field(default_factory=list)
    peak_rss: int = 0
    peak_rss_children: int = 0
    versions: dict = field(default_factory=dict)
    processes: int = 0
    setup_seconds: list[float] = field(default_factory=list)
    load_before: float = 0.0  # 1-minute load average when the engine started


class EmberParser:
    """`ember tpch run` prints `query,iteration,seconds,rows` (header once it is ready, then one
    line per run); a query's run begins when the previous line arrives."""

    def __init__(self, queries: list[int], iterations: int):
        self.order = [(q, i) for q in queries for i in range(iterations)]
        self.pos = 0

    def parse(self, line: str) -> list[dict]:
        line = line.strip()
        if line == "query,iteration,seconds,rows":
            return [{"event": "ready"}] + self._next()
        parts = line.split(",")
        if len(parts) != 4 or not parts[0].isdigit():
            return []
        q, i, secs, rows = int(parts[0]), int(parts[1]), float(parts[2]), int(parts[3])
        self.pos += 1
        return [{"event": "result", "query": q, "iteration": i, "seconds": secs, "rows": rows}] + self._next()

    def _next(self) -> list[dict]:
        if self.pos < len(self.order):
            q, i = self.order[self.pos]
            return [{"event": "begin", "query": q, "iteration": i}]
        return []


def log_tail(path: Path, lines: int = 6) -> str:
    """The last meaningful lines of a log (INFO/WARN chatter left out)."""
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    keep = [l for l in text if l.strip() and not re.search(r"\b(INFO|WARN|DEBUG|TRACE)\b", l)]
    return one_line(" | ".join(keep[-lines:]))


class Orchestrator:
    def __init__(self, a: argparse.Namespace, out: Path):
        self.a = a
        self.out = out
        self.logs = out / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.cpus = a.cpu_list

    def _preexec(self):
        cpus = self.cpus

        def f():
            if cpus:
                os.sched_setaffinity(0, cpus)

        return f

    def command(self, engine: str, data: Path, queries: list[int], iterations: int) -> list[str]:
        qs = ",".join(map(str, queries))
        if engine == "ember":
            return [self.a.ember, "tpch", "run", "--data", str(data), "--master", f"local[{PARTITIONS}]",
                    "--queries", qs, "--iterations", str(iterations)]
        py = self.a.sail_python if engine == "sail" else sys.executable
        cmd = [py, str(Path(__file__).resolve()), "--driver", engine, "--data", str(data),
               "--queries", qs, "--iterations", str(iterations),
               "--spark-memory", self.a.spark_memory, "--spark-shuffle-partitions", str(self.a.spark_shuffle_partitions)]
        for kv in self.a.spark_conf:
            cmd += ["--spark-conf", kv]
        for kv in self.a.sail_env:
            cmd += ["--sail-env", kv]
        return cmd

    def run_engine(self, engine: str, scale: float, data: Path) -> EngineRun:
        """Runs every query on one engine: one process, restarted after a timeout or a crash with
        the queries still to run."""
        iterations = self.a.iterations + 1  # iteration 0 is the warm-up
        er = EngineRun(engine, scale, load_before=os.getloadavg()[0])
        todo = list(self.a.queries)
        attempt = 0
        while todo:
            attempt += 1
            done = self._run_process(engine, scale, data, todo, iterations, er, attempt)
            todo = [q for q in todo if q not in done]
        return er

    def _run_process(self, engine, scale, data, todo, iterations, er: EngineRun, attempt: int) -> set[int]:
        stem = f"{engine}-sf{scale_name(scale)}-{attempt}"
        cmd = self.command(engine, data, todo, iterations)
        log_path = self.logs / f"{stem}.log"
        (self.logs / f"{stem}.cmd").write_text(shlex.join(cmd) + "\n")
        logf = open(log_path, "w")
        lines: queue.Queue = queue.Queue()
        if engine == "ember":
            parser = EmberParser(todo, iterations)
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=logf, stdin=subprocess.DEVNULL, text=True,
                                    start_new_session=True, preexec_fn=self._preexec(), cwd=REPO)
            stream = proc.stdout
            convert = parser.parse
        else:
            r, w = os.pipe()
            proc = subprocess.Popen(cmd + ["--events-fd", str(w)], stdout=logf, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, pass_fds=(w,), start_new_session=True,
                                    preexec_fn=self._preexec(), cwd=REPO)
            os.close(w)
            stream = os.fdopen(r, "r")

            def convert(line: str) -> list[dict]:
                try:
                    return [json.loads(line)]
                except ValueError:
                    return []

        er.processes += 1
        sampler = TreeSampler(proc.pid)
        sampler.start()

        def reader():
            for line in stream:
                lines.put(line)
            lines.put(None)

        threading.Thread(target=reader, daemon=True).start()

        finished: set[int] = set()  # queries with a final outcome
        current: tuple[int, int] | None = None
        clock = time.monotonic()  # when the current phase (setup or a query's run) began
        ready = False
        fatal = ""
        timed_out = False
        timeout = self.a.timeout
        while True:
            # starting up (JVM, server, registering the tables) may take longer than one query
            limit = timeout if timeout is None or current is not None else max(timeout, STARTUP_TIMEOUT)
            wait = None if limit is None else max(0.0, clock + limit - time.monotonic())
            try:
                line = lines.get(timeout=wait)
            except queue.Empty:
                timed_out = True
                break
            if line is None:
                break
            for ev in convert(line):
                kind = ev.get("event")
                if kind == "ready":
                    ready = True
                    er.versions.update(ev.get("versions") or {})
                    if "setup_seconds" in ev:
                        er.setup_seconds.append(ev["setup_seconds"])
                    clock = time.monotonic()
                elif kind == "begin":
                    current = (ev["query"], ev["iteration"])
                    clock = time.monotonic()
                elif kind == "result":
                    q, i = ev["query"], ev["iteration"]
                    er.rows.append(Row(engine, scale, q, i, ev["seconds"], ev["rows"], "warmup" if i == 0 else "ok"))
                    current = None
                    if i == iterations - 1:
                        finished.add(q)
                    self._progress(engine, scale, q, i, ev["seconds"], ev["rows"])
                elif kind == "error":
                    q, i = ev["query"], ev["iteration"]
                    er.rows.append(Row(engine, scale, q, i, None, None, "error", ev.get("error", "")))
                    finished.add(q)
                    current = None
                    log(f"  {engine} sf{scale_name(scale)} q{q}: FAILED: {ev.get('error', '')[:300]}")
                elif kind == "fatal":
                    fatal = ev.get("error", "")
        if timed_out:
            kill_tree(proc)
        else:
            try:
                proc.wait(max(60, self.a.timeout or 60))
            except subprocess.TimeoutExpired:
                kill_tree(proc)
        sampler.stop()
        logf.close()
        er.peak_rss = max(er.peak_rss, sampler.peak)
        er.peak_rss_children = max(er.peak_rss_children, sampler.peak_children)
        code = proc.returncode

        if current is not None:  # a query was running when the process stopped
            q, i = current
            if timed_out:
                msg = f"timed out after {timeout:g} s"
                status = "timeout"
            else:
                msg = f"engine process exited with code {code}: {log_tail(log_path)}"
                status = "error"
            er.rows.append(Row(engine, scale, q, i, None, None, status, msg))
            finished.add(q)
            log(f"  {engine} sf{scale_name(scale)} q{q}: {status.upper()}: {msg[:300]}")
        elif not ready or fatal:
            # the engine never got going: every query left fails with the reason
            msg = fatal or (f"timed out after {max(timeout, STARTUP_TIMEOUT):g} s while starting" if timed_out
                            else f"engine process exited with code {code} before running a query: {log_tail(log_path)}")
            for q in todo:
                if q not in finished:
                    er.rows.append(Row(engine, scale, q, 0, None, None, "timeout" if timed_out and not fatal else "error", msg))
                    finished.add(q)
            log(f"  {engine} sf{scale_name(scale)}: FAILED to start: {msg[:300]}")
        # Otherwise the process ended between two queries (a driver exits after an error that
        # killed its engine, e.g. a dead Sail server): the queries not reached run in a new one.
        if not finished:  # nothing settled: another process would do the same, so give up
            msg = f"engine process exited with code {code} without running a query: {log_tail(log_path)}"
            for q in todo:
                er.rows.append(Row(engine, scale, q, 0, None, None, "error", msg))
                finished.add(q)
        return finished

    def _progress(self, engine, scale, q, i, secs, rows) -> None:
        tag = "warm-up" if i == 0 else f"run {i}"
        log(f"  {engine} sf{scale_name(scale)} q{q} {tag}: {secs:.3f} s, {rows} rows")


# ------------------------------------------------------------------------------------------------
# Data


def ensure_data(a: argparse.Namespace, scale: float, data: Path) -> int:
    """Generates the tables at `scale` into `data` with `ember tpch generate` unless a previous
    generation completed there (its marker file). Returns the Parquet bytes."""
    marker = data / COMPLETE_MARKER
    if marker.exists():
        info = json.loads(marker.read_text())
        if float(info.get("scale", -1)) != scale:
            die(f"{data} holds TPC-H data at scale {info.get('scale')}, not {scale_name(scale)}; pass another --data-dir")
        log(f"data: {rel(data)} (scale {scale_name(scale)}, generated {info.get('generated', '?')})")
    else:
        log(f"data: generating scale {scale_name(scale)} into {rel(data)} with ember tpch generate")
        data.mkdir(parents=True, exist_ok=True)
        for t in TABLES:  # leftovers of an interrupted generation
            shutil.rmtree(data / t, ignore_errors=True)
        t0 = time.monotonic()
        res = subprocess.run([a.ember, "tpch", "generate", "--scale", scale_name(scale), "--out", str(data)],
                             text=True, capture_output=True)
        (a.out / "logs").mkdir(parents=True, exist_ok=True)
        (a.out / "logs" / f"generate-sf{scale_name(scale)}.log").write_text(res.stdout + res.stderr)
        if res.returncode != 0:
            sys.stderr.write(res.stderr[-4000:])
            die(f"ember tpch generate failed ({res.returncode})")
        missing = [t for t in TABLES if not any((data / t).glob("*.parquet"))]
        if missing:
            die(f"ember tpch generate wrote no Parquet files for {', '.join(missing)}")
        marker.write_text(json.dumps({
            "scale": scale, "generated": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "seconds": round(time.monotonic() - t0, 1), "generator": "ember tpch generate",
        }, indent=1) + "\n")
        log(f"data: generated in {time.monotonic() - t0:.1f} s")
    return sum(f.stat().st_size for t in TABLES for f in (data / t).glob("*.parquet"))


# ------------------------------------------------------------------------------------------------
# Summary


def geomean(xs: list[float]) -> float:
    return math.exp(sum(math.log(max(x, 1e-9)) for x in xs) / len(xs))


def fmt_s(x: float | None) -> str:
    if x is None:
        return "–"
    return f"{x:.3f}" if x < 100 else f"{x:.1f}"


def fmt_ratio(x: float | None) -> str:
    return "–" if x is None else f"{x:.2f}"


@dataclass
class QueryOutcome:
    median: float | None
    rows: int | None
    status: str  # ok | error | timeout
    error: str = ""


def outcomes(er: EngineRun, queries: list[int]) -> dict[int, QueryOutcome]:
    out = {}
    for q in queries:
        rs = [r for r in er.rows if r.query == q]
        bad = [r for r in rs if r.status not in ("ok", "warmup")]
        timed = [r for r in rs if r.status == "ok"]
        counts = {r.rows for r in rs if r.rows is not None}
        if bad or not timed:
            b = bad[0] if bad else None
            out[q] = QueryOutcome(None, None, b.status if b else "error", b.error if b else "no timed run")
        elif len(counts) > 1:
            out[q] = QueryOutcome(statistics.median(r.seconds for r in timed), None, "error",
                                  f"row counts differ between iterations: {sorted(counts)}")
        else:
            out[q] = QueryOutcome(statistics.median(r.seconds for r in timed), counts.pop(), "ok")
    return out


def machine_info() -> dict[str, str]:
    def first(path: str, key: str) -> str:
        try:
            with open(path) as f:
                for line in f:
                    if line.startswith(key):
                        return line.split(":", 1)[1].strip()
        except OSError:
            pass
        return "?"

    mem = first("/proc/meminfo", "MemTotal")
    try:
        mem = f"{int(mem.split()[0]) / 1024 / 1024:.1f} GiB"
    except (ValueError, IndexError):
        pass
    return {
        "nproc": str(os.cpu_count()),
        "cpus allowed": str(len(os.sched_getaffinity(0))),
        "model name": first("/proc/cpuinfo", "model name"),
        "memory": mem,
        "os": f"{platform.system()} {platform.release()}",
    }


def tool_versions(a: argparse.Namespace) -> dict[str, str]:
    v = {}
    try:
        commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short=12", "HEAD"], text=True,
                                capture_output=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                               text=True, capture_output=True).stdout.strip()
        v["ember"] = f"{commit}{' (modified)' if dirty else ''}, {rel(Path(a.ember))}"
    except OSError:
        v["ember"] = rel(Path(a.ember))
    if "spark" in a.engines:
        try:
            j = subprocess.run(["java", "-version"], text=True, capture_output=True)
            v["java"] = (j.stderr or j.stdout).splitlines()[0]
        except (OSError, IndexError):
            pass
    return v


def write_outputs(a: argparse.Namespace, runs: dict[tuple[str, float], EngineRun], data_bytes: dict[float, int],
                  data_dirs: dict[float, Path], started: str) -> list[str]:
    """Writes results.csv, summary.csv, memory.csv and summary.md; returns the problems found."""
    out: Path = a.out
    problems: list[str] = []
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["engine", "scale", "query", "iteration", "seconds", "rows", "status", "error"])
        for er in runs.values():
            for r in sorted(er.rows, key=lambda r: (r.query, r.iteration)):
                w.writerow([r.engine, scale_name(r.scale), r.query, r.iteration,
                            "" if r.seconds is None else f"{r.seconds:.6f}", "" if r.rows is None else r.rows,
                            r.status, r.error])
    outs = {k: outcomes(er, a.queries) for k, er in runs.items()}
    with open(out / "summary.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["engine", "scale", "query", "median_seconds", "rows"])
        for (engine, scale), oc in outs.items():
            for q in a.queries:
                o = oc[q]
                w.writerow([engine, scale_name(scale), q, "" if o.median is None else f"{o.median:.6f}",
                            "" if o.rows is None else o.rows])
    with open(out / "memory.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["engine", "scale", "peak_rss_bytes", "peak_rss_without_python_client_bytes", "processes_started"])
        for (engine, scale), er in runs.items():
            w.writerow([engine, scale_name(scale), er.peak_rss,
                        er.peak_rss_children if engine in ("sail", "spark") else "", er.processes])

    versions: dict[str, str] = tool_versions(a)
    for er in runs.values():
        for k, val in er.versions.items():
            versions.setdefault(k, val)

    md: list[str] = []
    md.append("# TPC-H: Ember, DataFusion, Sail, DuckDB, Spark\n")
    md.append(f"Run started {started}. Median of {a.iterations} timed run(s) per query after one warm-up run, in "
              f"seconds, from submitting the query to holding all its rows in the client. "
              f"Ratios are Ember's time divided by the other engine's (below 1: Ember is faster).\n")
    engines = a.engines
    others = [e for e in engines if e != "ember"]
    for scale in a.scales:
        oc = {e: outs[(e, scale)] for e in engines}
        md.append(f"## Scale factor {scale_name(scale)}\n")
        md.append(f"Data: `{rel(data_dirs[scale])}`, {human_bytes(data_bytes[scale])} of Parquet.\n")
        # row counts
        mismatch: dict[int, str] = {}
        for q in a.queries:
            counts = {e: oc[e][q].rows for e in engines if oc[e][q].rows is not None}
            if len(set(counts.values())) > 1:
                mismatch[q] = ", ".join(f"{e} {n}" for e, n in counts.items())
                problems.append(f"sf{scale_name(scale)} q{q}: row counts differ: {mismatch[q]}")
        failed = {(e, q): oc[e][q] for e in engines for q in a.queries if oc[e][q].status != "ok"}
        for (e, q), o in failed.items():
            problems.append(f"sf{scale_name(scale)} {e} q{q}: {o.status}: {o.error}")
        head = ["query"] + engines + ([f"ember/{e}" for e in others] if "ember" in engines else []) + ["rows"]
        md.append("| " + " | ".join(head) + " |")
        md.append("|" + "|".join(["---"] + ["---:"] * (len(head) - 2) + ["---"]) + "|")
        for q in a.queries:
            cells = [f"Q{q}"]
            for e in engines:
                o = oc[e][q]
                cells.append(fmt_s(o.median) if o.status == "ok" else f"**{o.status}**")
            if "ember" in engines:
                em = oc["ember"][q].median if oc["ember"][q].status == "ok" else None
                for e in others:
                    om = oc[e][q].median if oc[e][q].status == "ok" else None
                    cells.append(fmt_ratio(em / om if em is not None and om else None))
            counts = [oc[e][q].rows for e in engines if oc[e][q].rows is not None]
            cells.append(f"**differ: {mismatch[q]}**" if q in mismatch else (str(counts[0]) if counts else "–"))
            md.append("| " + " | ".join(cells) + " |")
        common = [q for q in a.queries if all(oc[e][q].status == "ok" for e in engines)]
        totals = {e: sum(oc[e][q].median for q in common) for e in engines} if common else {}
        geos = {e: geomean([oc[e][q].median for q in common]) for e in engines} if common else {}
        for label, agg in (("total", totals), ("geomean", geos)):
            cells = [f"**{label}**"] + [fmt_s(agg.get(e)) for e in engines]
            if "ember" in engines:
                cells += [fmt_ratio(agg["ember"] / agg[e] if agg and agg[e] else None) for e in others]
            cells.append("")
            md.append("| " + " | ".join(cells) + " |")
        md.append("")
        if common and len(common) < len(a.queries):
            md.append(f"Total and geometric mean cover the {len(common)} queries every engine ran: "
                      f"{', '.join(f'Q{q}' for q in common)}.\n")
        elif not common:
            md.append("No query ran on every engine: no total or geometric mean.\n")
        if failed:
            md.append("Failures:\n")
            for (e, q), o in failed.items():
                md.append(f"- {e} Q{q}: {o.status}: {o.error}")
            md.append("")

        md.append("Peak memory (sum of the resident set sizes of the engine's whole process tree, sampled every "
                  f"{int(SAMPLE_INTERVAL * 1000)} ms over the whole run, start-up included):\n")
        md.append("| engine | peak RSS, process tree | without the Python client | ember/engine |")
        md.append("|---|---:|---:|---:|")
        em_peak = runs[("ember", scale)].peak_rss if "ember" in engines else None
        for e in engines:
            er = runs[(e, scale)]
            without = human_bytes(er.peak_rss_children) if e in ("sail", "spark") else "–"
            ratio = fmt_ratio(em_peak / er.peak_rss) if em_peak and er.peak_rss and e != "ember" else "–"
            md.append(f"| {e} | {human_bytes(er.peak_rss)} | {without} | {ratio} |")
        md.append("")
        md.append("1-minute load average when each engine started (above about 0.5, something else was "
                  "using the CPUs): " + ", ".join(f"{e} {runs[(e, scale)].load_before:.2f}" for e in engines) + ".\n")

        checks = targets(scale, engines, oc, common, totals, geos, runs) if "ember" in engines else []
        if checks:
            md.append("Targets:\n")
            md.extend(checks)
            md.append("")

    md.append("## Settings\n")
    md.append(f"- every engine: {PARTITIONS} partitions / threads, one engine at a time"
              + (f", pinned to CPUs {','.join(map(str, a.cpu_list))}" if a.cpu_list else ", not pinned (the machine has no more CPUs than that)"))
    settings = {
        "ember": f"`ember tpch run --master local[{PARTITIONS}] --iterations {a.iterations + 1}` (the first run of each query is the warm-up)",
        "datafusion": f"`SessionContext(SessionConfig().with_target_partitions({PARTITIONS}))`, `register_parquet` per table directory; `collect()`",
        "sail": f"`sail spark server` in local mode with `SAIL_EXECUTION__DEFAULT_PARALLELISM={PARTITIONS}`"
                + (f" and `{' '.join(a.sail_env)}`" if a.sail_env else "")
                + "; Spark Connect client; temp views over `spark.read.parquet`; `toArrow()`",
        "duckdb": f"`SET threads={PARTITIONS}`, views over `read_parquet('DIR/table/*.parquet')`; `fetchall()`",
        "spark": f"`local[{PARTITIONS}]`, " + ", ".join(f"`{k}={v}`" for k, v in spark_conf(a).items())
                 + "; temp views over `spark.read.parquet`; `collect()`",
    }
    md.extend(f"- {e}: {settings[e]}" for e in engines)
    if a.timeout:
        md.append(f"- timeout per query run: {a.timeout:g} s")
    md.append("\n## Versions\n")
    for k, val in versions.items():
        md.append(f"- {k}: {val}")
    md.append("\n## Machine\n")
    for k, val in machine_info().items():
        md.append(f"- {k}: {val}")
    md.append("\n## Command\n")
    md.append("```sh\n" + a.command_line + "\n```\n")
    if problems:
        md.append("## Problems\n")
        md.extend(f"- {p}" for p in problems)
        md.append("")
    (out / "summary.md").write_text("\n".join(md) + "\n")
    (out / "command.txt").write_text(a.command_line + "\n")
    return problems


def targets(scale, engines, oc, common, totals, geos, runs) -> list[str]:
    lines = []

    def verdict(ok: bool | None) -> str:
        return "**holds**" if ok else ("**missed**" if ok is not None else "not checked")

    if "datafusion" in engines:
        if common:
            rt, rg = totals["ember"] / totals["datafusion"], geos["ember"] / geos["datafusion"]
            lines.append(f"- total and geometric mean within {TARGET_DATAFUSION}x of DataFusion: "
                         f"{verdict(rt <= TARGET_DATAFUSION and rg <= TARGET_DATAFUSION)} (total {rt:.2f}x, geomean {rg:.2f}x)")
        else:
            lines.append("- within 1.3x of DataFusion: not checked (no common queries)")
    if "sail" in engines:
        if common:
            rt, rg = totals["ember"] / totals["sail"], geos["ember"] / geos["sail"]
            lines.append(f"- total and geometric mean no slower than Sail: "
                         f"{verdict(rt <= TARGET_SAIL and rg <= TARGET_SAIL)} (total {rt:.2f}x, geomean {rg:.2f}x)")
        else:
            lines.append("- no slower than Sail: not checked (no common queries)")
    if "spark" in engines:
        slow, worst, missing = [], None, []
        for q in sorted(oc["ember"]):
            em, sp = oc["ember"][q], oc["spark"][q]
            if em.status != "ok":
                missing.append(q)
                continue
            if sp.status != "ok":
                continue  # Spark failed: Ember cannot be slower than a failure
            r = em.median / sp.median
            worst = max(worst or (r, q), (r, q))
            if r > TARGET_SPARK:
                slow.append(f"Q{q} {r:.2f}")
        ok = not slow and not missing
        detail = f"slowest ember/spark ratio {worst[0]:.2f} (Q{worst[1]})" if worst else "no query compared"
        if slow:
            detail += "; above 0.25: " + ", ".join(slow)
        if missing:
            detail += "; Ember failed: " + ", ".join(f"Q{q}" for q in missing)
        lines.append(f"- every query at least 4x faster than Spark (ratio ≤ {TARGET_SPARK}): {verdict(ok)} ({detail})")
    mem_engines = [e for e in ("sail", "spark") if e in engines]
    if mem_engines:
        em = runs[("ember", scale)].peak_rss
        cmp = ", ".join(f"{e} {human_bytes(runs[(e, scale)].peak_rss)}" for e in mem_engines)
        if scale == MEMORY_TARGET_SCALE:
            ok = all(em < runs[(e, scale)].peak_rss for e in mem_engines)
            ok_strict = all(em < runs[(e, scale)].peak_rss_children for e in mem_engines)
            lines.append(f"- peak memory below {' and '.join(mem_engines)}'s at SF{scale_name(MEMORY_TARGET_SCALE)}: {verdict(ok)} "
                         f"(ember {human_bytes(em)}; {cmp}; against their engines without the Python client: "
                         f"{'holds' if ok_strict else 'missed'})")
        else:
            lines.append(f"- peak memory below {' and '.join(mem_engines)}'s: checked at SF{scale_name(MEMORY_TARGET_SCALE)} only "
                         f"(here: ember {human_bytes(em)}; {cmp})")
    return lines


# ------------------------------------------------------------------------------------------------
# Main


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="benchmarks/tpch/run.sh",
        description="TPC-H on Ember, DataFusion, Sail, DuckDB and Spark, side by side on the same Parquet files.")
    p.add_argument("--scale", action="append", default=None, metavar="S",
                   help="scale factor; repeatable or a comma list (default 1)")
    p.add_argument("--engines", default=",".join(ENGINES), help=f"comma list of engines (default {','.join(ENGINES)})")
    p.add_argument("--queries", default="1-22", type=parse_queries, help="queries like 1,3,5-7 (default 1-22)")
    p.add_argument("--iterations", type=int, default=3, help="timed runs per query after one warm-up run (default 3)")
    p.add_argument("--ember", default=os.environ.get("EMBER_BENCH_EMBER_BIN"), help="the ember binary (run.sh builds it in release mode unless given)")
    p.add_argument("--data-dir", type=Path, help="TPC-H data directory (default benchmarks/data/tpch-sf<S>); "
                   "with several scales it must contain {scale}")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds a single query run may take (0: none; default 600)")
    p.add_argument("--out", type=Path, help="results directory (default benchmarks/results/tpch-<UTC time>)")
    p.add_argument("--cpus", default="auto", help="CPUs to pin every engine to, e.g. 0,1, or 'none' "
                   "(default: the first two allowed ones when more are available)")
    p.add_argument("--spark-memory", default="8g", help="Spark driver memory (default 8g)")
    p.add_argument("--spark-shuffle-partitions", type=int, default=8, help="spark.sql.shuffle.partitions (default 8)")
    p.add_argument("--spark-conf", action="append", default=[], metavar="K=V", help="extra Spark setting (repeatable)")
    p.add_argument("--sail-env", action="append", default=[], metavar="SAIL_X=V", help="extra Sail setting as an environment variable (repeatable)")
    p.add_argument("--sail-python", default=os.environ.get("EMBER_BENCH_SAIL_PYTHON", sys.executable),
                   help="Python with pysail and the Spark Connect client (run.sh sets it)")
    # driver mode (internal)
    p.add_argument("--driver", choices=sorted(DRIVERS), help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    p.add_argument("--events-fd", type=int, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    for kv in a.spark_conf + a.sail_env:
        if "=" not in kv:
            p.error(f"expected KEY=VALUE, not {kv!r}")
    if a.driver:
        return a
    if a.iterations < 1:
        p.error("--iterations must be at least 1")
    try:
        a.scales = []
        for s in a.scale or ["1"]:
            for part in s.split(","):
                if part.strip():
                    v = float(part)
                    if not (v > 0 and math.isfinite(v)):
                        raise ValueError
                    if v not in a.scales:
                        a.scales.append(v)
    except ValueError:
        p.error("--scale: expected positive numbers")
    a.engines = [e.strip() for e in a.engines.split(",") if e.strip()]
    bad = [e for e in a.engines if e not in ENGINES]
    if bad or not a.engines:
        p.error(f"--engines: unknown {', '.join(bad)}; choose from {', '.join(ENGINES)}")
    a.engines = [e for e in ENGINES if e in a.engines]  # fixed order: ember first
    if not a.ember:
        p.error("--ember PATH is required when run.py is started directly (run.sh builds Ember and passes it)")
    a.ember = str(Path(a.ember).resolve())
    if not os.access(a.ember, os.X_OK):
        p.error(f"--ember {a.ember}: not an executable")
    if a.data_dir and len(a.scales) > 1 and "{scale}" not in str(a.data_dir):
        p.error("--data-dir with several scales must contain {scale}")
    a.timeout = a.timeout or None
    allowed = sorted(os.sched_getaffinity(0))
    if a.cpus == "none":
        a.cpu_list = []
    elif a.cpus == "auto":
        a.cpu_list = allowed[:PARTITIONS] if len(allowed) > PARTITIONS else []
    else:
        try:
            a.cpu_list = [int(c) for c in a.cpus.split(",")]
        except ValueError:
            p.error("--cpus: expected a list like 0,1, 'auto' or 'none'")
    script = os.environ.get("EMBER_BENCH_SCRIPT")  # set by run.sh
    a.command_line = shlex.join((["bash", script] if script else ["python3", "benchmarks/tpch/run.py"]) + argv)
    return a


def main(argv: list[str]) -> int:
    a = parse_args(argv)
    if a.driver:
        return driver_main(a)
    try:
        import psutil  # noqa: F401
    except ImportError:
        die("psutil is missing: run through benchmarks/tpch/run.sh, which installs it")
    stamp = dt.datetime.now(dt.timezone.utc)
    a.out = (a.out or REPO / "benchmarks" / "results" / f"tpch-{stamp:%Y%m%d-%H%M%S}").resolve()
    a.out.mkdir(parents=True, exist_ok=True)
    log(f"results: {rel(a.out)}")
    log(f"engines {','.join(a.engines)}; scales {','.join(map(scale_name, a.scales))}; "
        f"queries {len(a.queries)}; {a.iterations} timed run(s) after a warm-up")
    data_dirs, data_bytes = {}, {}
    for s in a.scales:
        if a.data_dir:
            d = Path(str(a.data_dir).replace("{scale}", scale_name(s)))
        else:
            d = REPO / "benchmarks" / "data" / f"tpch-sf{scale_name(s)}"
        data_dirs[s] = d.resolve()
        data_bytes[s] = ensure_data(a, s, data_dirs[s])

    orch = Orchestrator(a, a.out)
    runs: dict[tuple[str, float], EngineRun] = {}
    for s in a.scales:
        for e in a.engines:
            log(f"{e} at scale {scale_name(s)}")
            t0 = time.monotonic()
            er = orch.run_engine(e, s, data_dirs[s])
            runs[(e, s)] = er
            log(f"{e} at scale {scale_name(s)}: done in {time.monotonic() - t0:.1f} s, peak RSS {human_bytes(er.peak_rss)}")
            # partial results after every engine, so an interrupted run still leaves numbers
            with open(a.out / "results.partial.jsonl", "a") as f:
                for r in er.rows:
                    f.write(json.dumps(r.__dict__) + "\n")
    problems = write_outputs(a, runs, data_bytes, data_dirs, f"{stamp:%Y-%m-%d %H:%M:%S} UTC")
    (a.out / "results.partial.jsonl").unlink(missing_ok=True)
    print((a.out / "summary.md").read_text())
    log(f"wrote {rel(a.out)}/results.csv, summary.csv, memory.csv, summary.md")
    if problems:
        bar = "!" * 78
        print(f"\n{bar}\n" + "\n".join(f"!!! {p}" for p in problems) + f"\n{bar}\n", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
