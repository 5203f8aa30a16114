#!/usr/bin/env bash
# Where a small file's time goes: the latency of each call (open with O_CREAT, write, close, unlink) for N files of
# 4 KiB created one after the other on a fresh netdisk mount (release build, server on loopback), as median, 90th
# percentile and total. Usage: bench/small-latency.sh [N] [full|normal]   (defaults: 1000, full: the server's
# --durability). Needs root (FUSE mount) and python3.
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-1000}
durability=${2:-full}
cargo build --release -q -p netdisk-server -p netdisk-fusefs --bins
. bench/netdisk-mount.sh
start_netdisk --durability "$durability"
echo "machine: $(nproc) cores, $(uname -r); $n files of 4 KiB; server durability $durability"
python3 - "$work/mnt" "$n" <<'PY'
import os, statistics, sys, time
mnt, n = sys.argv[1], int(sys.argv[2])
d = os.path.join(mnt, "small")
os.mkdir(d)
data = os.urandom(4096)
calls = {"open(O_CREAT)": [], "write": [], "close": [], "unlink": []}
def timed(name, f, *args):
    t = time.perf_counter()
    r = f(*args)
    calls[name].append(time.perf_counter() - t)
    return r
for i in range(n):
    fd = timed("open(O_CREAT)", os.open, os.path.join(d, "f%05d" % i), os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
    timed("write", os.write, fd, data)
    timed("close", os.close, fd)
for i in range(n):
    timed("unlink", os.unlink, os.path.join(d, "f%05d" % i))
for name, t in calls.items():
    t.sort()
    print("%-14s median %.2f ms   p90 %.2f ms   total %.2f s" % (name, statistics.median(t) * 1e3, t[int(len(t) * 0.9)] * 1e3, sum(t)))
PY
