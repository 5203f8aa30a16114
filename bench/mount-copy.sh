#!/usr/bin/env bash
# Time `cp` of one file into and out of a netdisk mount (release build, server on loopback), next to the same cp on local disk.
# Usage: bench/mount-copy.sh [SIZE_MIB]   (default 1024). Needs root (FUSE mount, drop_caches).
set -euo pipefail
cd "$(dirname "$0")/.."
size=${1:-1024}
cargo build --release -q -p netdisk-server -p netdisk-fusefs --bins
. bench/netdisk-mount.sh
start_netdisk
mkdir -p "$work/local"

head -c "$((size << 20))" /dev/urandom >"$work/src.bin"
secs() { local t0 t1; t0=$(date +%s.%N); "$@"; t1=$(date +%s.%N); awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }'; }
rate() { awk -v s="$size" -v t="$1" 'BEGIN { printf "%.1f", s / t }'; }
echo "machine: $(nproc) cores, $(uname -r); file: $size MiB of random bytes"
sync
t=$(secs cp "$work/src.bin" "$work/local/copy.bin"); sync
echo "local disk  cp in          $(rate "$t") MiB/s"
t=$(secs cp "$work/src.bin" "$work/mnt/copy.bin")
echo "netdisk     cp in          $(rate "$t") MiB/s   (returns after the server verified and stored it)"
sync; echo 3 >/proc/sys/vm/drop_caches
t=$(secs cp "$work/mnt/copy.bin" "$work/back.bin")
echo "netdisk     cp out (cold)  $(rate "$t") MiB/s"
t=$(secs cp "$work/mnt/copy.bin" /dev/null)
echo "netdisk     cp out (warm)  $(rate "$t") MiB/s"
cmp "$work/src.bin" "$work/back.bin" && echo "integrity: the copy out equals the source"
t=$(secs cp "$work/src.bin" "$work/mnt/again.bin")
echo "netdisk     cp in again    $(rate "$t") MiB/s   (the server holds the content: instant upload)"
