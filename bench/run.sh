#!/usr/bin/env bash
# The benchmark: netdisk against local disk and sshfs over loopback, same workloads, one table (bench/README.md).
# Usage: bench/run.sh [netdisk-bench options]     e.g. bench/run.sh --quick, bench/run.sh --reps 1 --big-mib 256
# Builds the release binaries, then runs target/release/netdisk-bench, which finds netdisk-server and netdisk-mount
# next to itself. A full run (not --quick) writes BENCHMARKS.md at the repository root unless --out is given.
# Needs root: FUSE mounts, dropping the page cache, a private sshd (sshfs and openssh-server are installed with
# apt-get when missing; --no-install or --no-sshfs leave sshfs out).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --workspace --bins
args=("$@")
quick=0 out=0
for a in "$@"; do
    case $a in
        --quick) quick=1 ;;
        --out | --out=*) out=1 ;;
        -h | --help | -V | --version) out=1 ;;
    esac
done
if [ "$quick" = 0 ] && [ "$out" = 0 ]; then
    args+=(--out BENCHMARKS.md)
fi
NETDISK_BENCH_COMMAND="bench/run.sh${*:+ $*}"
export NETDISK_BENCH_COMMAND
exec target/release/netdisk-bench "${args[@]}"
