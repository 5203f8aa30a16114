#!/usr/bin/env bash
# Time `cp` of one file into and out of a netdisk mount (release build, server on loopback), next to the same cp on local disk.
# Usage: bench/mount-copy.sh [SIZE_MIB]   (default 1024). Needs root (FUSE mount, drop_caches).
set -euo pipefail
cd "$(dirname "$0")/.."
size=${1:-1024}
cargo build --release -q -p netdisk-server -p netdisk-fusefs --bins
work=$(mktemp -d /var/tmp/netdisk-bench.XXXXXX)
server_pid= mount_pid=
cleanup() {
    if [ -n "$mount_pid" ]; then kill "$mount_pid" 2>/dev/null || true; wait "$mount_pid" 2>/dev/null || true; fi
    mountpoint -q "$work/mnt" 2>/dev/null && umount -l "$work/mnt"
    if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT
export NETDISK_PASSWORD=bench
mkdir -p "$work/mnt" "$work/local"
target/release/netdisk-server user add bench --data "$work/data" >/dev/null
target/release/netdisk-server serve --data "$work/data" --listen 127.0.0.1:0 >"$work/server.out" 2>"$work/server.log" &
server_pid=$!
for _ in $(seq 100); do grep -q '^listening on' "$work/server.out" && break; sleep 0.1; done
addr=$(sed -n 's/^listening on //p' "$work/server.out")
target/release/netdisk-mount --server "$addr" --user bench --cache-dir "$work/cache" "$work/mnt" >"$work/mount.out" 2>"$work/mount.log" &
mount_pid=$!
for _ in $(seq 100); do grep -q '^mounted' "$work/mount.out" && break; sleep 0.1; done
grep -q '^mounted' "$work/mount.out" || { cat "$work/mount.log"; exit 1; }

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
