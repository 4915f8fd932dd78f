#!/usr/bin/env bash
# Ember vs Apache Spark benchmarks. Usage: bash benchmarks/run.sh [--scale small|medium|full] [...]
# (`bash benchmarks/run.sh --help` lists the options; README.md explains the figures.)
#
# Installs what it needs by itself: pyspark into a virtualenv under the cache directory
# ($EMBER_BENCH_CACHE, default ~/.cache/ember-bench), and, when run as root on Debian/Ubuntu and they
# are missing, a JDK 17 and GNU time with apt-get.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
pyspark_version="4.3.0"
cache="${EMBER_BENCH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ember-bench}"
venv="$cache/venv-pyspark-$pyspark_version"

say() { echo "[bench setup] $*" >&2; }

apt_install() {
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        say "installing $* with apt-get"
        apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
    else
        say "please install: $*"; exit 2
    fi
}

needs_spark=1
case " $* " in *" --engines ember "*|*" --engines=ember "*) needs_spark=0 ;; esac

if [ "$needs_spark" = 1 ] && { ! command -v javac >/dev/null || ! command -v java >/dev/null; }; then
    apt_install openjdk-17-jdk-headless
fi
[ -x /usr/bin/time ] || apt_install time
command -v taskset >/dev/null || say "taskset not found: engines will not be pinned to CPUs"

python="${PYTHON:-python3}"
# With `--engines ember` run.py needs the standard library only: no pyspark install.
if [ "$needs_spark" = 1 ] && ! "$venv/bin/python" -c "import pyspark, sys; sys.exit(pyspark.__version__ != '$pyspark_version')" 2>/dev/null; then
    say "installing pyspark==$pyspark_version into $venv"
    rm -rf "$venv"
    mkdir -p "$cache"
    if ! "$python" -m venv "$venv" 2>/dev/null; then
        apt_install python3-venv
        "$python" -m venv "$venv"
    fi
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "pyspark==$pyspark_version"
fi

# run.py records the exact command (this script's path and the arguments) with the results.
self="$0"
case "$self" in "$here"/*) self="benchmarks/${self#"$here"/}" ;; esac
export EMBER_BENCH_SCRIPT="$self" EMBER_BENCH_CACHE="$cache"
runner_python="$venv/bin/python"
[ -x "$runner_python" ] || runner_python="$python"
exec "$runner_python" "$here/run.py" "$@"
