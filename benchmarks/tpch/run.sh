#!/usr/bin/env bash
# TPC-H on Ember, DataFusion, Sail, DuckDB and Apache Spark, side by side on the same Parquet files.
# Usage: bash benchmarks/tpch/run.sh [--scale 1,10] [--engines ember,spark] [--queries 1-22] [...]
# (`bash benchmarks/tpch/run.sh --help` lists the options; README.md next to this file explains
# the figures.)
#
# Installs what it needs by itself, under the cache directory ($EMBER_BENCH_CACHE, default
# ~/.cache/ember-bench):
#   venv-tpch  pyspark 4.3.0 (Spark's jars), datafusion, duckdb, psutil: runs run.py and the
#              DataFusion, DuckDB and Spark drivers;
#   venv-sail  pysail and the Spark Connect client (pyspark-client) at the version pysail is
#              tested with: a separate virtualenv, as pyspark-client and pyspark both provide the
#              `pyspark` module;
# and, when run as root on Debian/Ubuntu and it is missing, a Java 17 runtime with apt-get.
# Builds Ember with `cargo build --release -p ember-cli` unless `--ember PATH` is given.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
pyspark_version="4.3.0"
cache="${EMBER_BENCH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ember-bench}"
venv="$cache/venv-tpch"
sail_venv="$cache/venv-sail"
python="${PYTHON:-python3}"

say() { echo "[tpch setup] $*" >&2; }

apt_install() {
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        say "installing $* with apt-get"
        apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
    else
        say "please install: $*"; exit 2
    fi
}

make_venv() {  # make_venv DIR
    rm -rf "$1"
    mkdir -p "$cache"
    if ! "$python" -m venv "$1" 2>/dev/null; then
        apt_install python3-venv
        "$python" -m venv "$1"
    fi
}

pip_install() {  # pip_install VENV PACKAGE...
    local v="$1"; shift
    "$v/bin/python" -m pip install --quiet --disable-pip-version-check "$@"
}

# Which engines, whether Ember is given, whether only help is asked for.
engines="ember,datafusion,sail,duckdb,spark"
ember_given=0
help=0
prev=""
for arg in "$@"; do
    case "$prev" in --engines) engines="$arg" ;; esac
    case "$arg" in
        --engines=*) engines="${arg#--engines=}" ;;
        --ember|--ember=*) ember_given=1 ;;
        -h|--help) help=1 ;;
    esac
    prev="$arg"
done
has_engine() { case ",$engines," in *",$1,"*) return 0 ;; *) return 1 ;; esac; }

if [ "$help" = 1 ]; then
    runner="$venv/bin/python"; [ -x "$runner" ] || runner="$python"
    exec "$runner" "$here/run.py" --help
fi

# The runner's virtualenv (also DataFusion's, DuckDB's and Spark's drivers).
if ! "$venv/bin/python" -c "import pyspark, datafusion, duckdb, psutil, sys; sys.exit(pyspark.__version__ != '$pyspark_version')" 2>/dev/null; then
    say "installing pyspark==$pyspark_version datafusion duckdb psutil into $venv"
    make_venv "$venv"
    pip_install "$venv" "pyspark==$pyspark_version" datafusion duckdb psutil
fi

# Sail's: pysail, then the Spark Connect client at the version pysail's own tests pin.
# (The check imports no pyspark.sql.connect: under `python -c` that module takes itself for a
# doctest run and exits.)
if has_engine sail && ! "$sail_venv/bin/python" -c "import pysail, psutil, pyarrow, pandas, grpc, importlib.metadata as m; m.version('pyspark-client')" 2>/dev/null; then
    say "installing pysail and pyspark-client into $sail_venv"
    make_venv "$sail_venv"
    pip_install "$sail_venv" pysail psutil
    client="$("$sail_venv/bin/python" - <<'EOF'
import importlib.metadata as md, re
for req in md.requires("pysail") or []:
    m = re.match(r"pyspark-client\s*==\s*([0-9][0-9A-Za-z.]*)", req)
    if m:
        print(m.group(1))
        break
EOF
)"
    # pandas < 3 as in pysail's tests: the client warns that it does not fully support pandas 3.
    pip_install "$sail_venv" "pyspark-client${client:+==$client}" "pandas<3"
fi

if has_engine spark && ! command -v java >/dev/null; then
    apt_install openjdk-17-jre-headless
fi

# Ember, in release mode, unless given.
if [ "$ember_given" = 0 ]; then
    command -v cargo >/dev/null || { say "cargo not found: install Rust or pass --ember PATH"; exit 2; }
    say "building Ember: cargo build --release -p ember-cli"
    (cd "$repo" && cargo build --release -p ember-cli)
    target="${CARGO_TARGET_DIR:-$repo/target}"
    case "$target" in /*) ;; *) target="$repo/$target" ;; esac
    export EMBER_BENCH_EMBER_BIN="$target/release/ember"
fi

# run.py records the exact command (this script's path and the arguments) with the results.
self="$0"
case "$self" in "$repo"/*) self="${self#"$repo"/}" ;; esac
export EMBER_BENCH_SCRIPT="$self" EMBER_BENCH_CACHE="$cache" EMBER_BENCH_SAIL_PYTHON="$sail_venv/bin/python"
exec "$venv/bin/python" "$here/run.py" "$@"
