#!/usr/bin/env bash
# Two builds of netdisk side by side on the same machine, alternating, each on a fresh server and mount:
# a 1 GiB cp in, then 2000 files of 4 KiB created, read after dropping the caches, and removed (rm -rf).
# For "did this change make it slower?" (bench/run.sh compares netdisk with its peers instead).
# Usage: bench/compare-builds.sh OLD_BIN_DIR NEW_BIN_DIR [ROUNDS]   (each dir holds netdisk-server and netdisk-mount;
# e.g. a release build of an older commit in a worktree: git worktree add /tmp/old REV && cargo build --release
# --manifest-path /tmp/old/Cargo.toml --target-dir /tmp/old-target). Needs root (FUSE mount, drop_caches) and python3.
set -euo pipefail
old=$1 new=$2 rounds=${3:-2}
scratch=$(mktemp -d /var/tmp/netdisk-compare.XXXXXX)
server_pid= mount_pid= work=
stop() {
    if [ -n "$mount_pid" ]; then kill "$mount_pid" 2>/dev/null || true; wait "$mount_pid" 2>/dev/null || true; fi
    if [ -n "$work" ] && mountpoint -q "$work/mnt" 2>/dev/null; then umount -l "$work/mnt"; fi
    if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
    mount_pid= server_pid=
}
trap 'stop; rm -rf "$scratch"' EXIT
head -c 1G /dev/urandom >"$scratch/big.src"
run() { # BIN_DIR LABEL
    local bin=$1 label=$2
    work=$(mktemp -d "$scratch/run.XXXXXX")
    mkdir -p "$work/mnt"
    export NETDISK_PASSWORD=bench
    "$bin/netdisk-server" user add bench --data "$work/data" >/dev/null
    "$bin/netdisk-server" serve --data "$work/data" --listen 127.0.0.1:0 >"$work/server.out" 2>"$work/server.log" &
    server_pid=$!
    for _ in $(seq 100); do grep -q '^listening on' "$work/server.out" && break; sleep 0.1; done
    local addr; addr=$(sed -n 's/^listening on //p' "$work/server.out")
    "$bin/netdisk-mount" --server "$addr" --user bench --cache-dir "$work/cache" "$work/mnt" \
        >"$work/mount.out" 2>"$work/mount.log" &
    mount_pid=$!
    for _ in $(seq 100); do grep -q '^mounted' "$work/mount.out" && break; sleep 0.1; done
    grep -q '^mounted' "$work/mount.out" || { cat "$work/mount.log"; exit 1; }
    python3 - "$work/mnt" "$label" "$scratch/big.src" <<'PY'
import os, shutil, subprocess, sys, time
mnt, label, src = sys.argv[1:4]
with open(src, "rb") as f:
    while f.read(1 << 24):
        pass
t = time.perf_counter(); shutil.copyfile(src, os.path.join(mnt, "big")); big = 1024 / (time.perf_counter() - t)
d = os.path.join(mnt, "small"); os.mkdir(d); data = os.urandom(4096); n = 2000
t = time.perf_counter()
for i in range(n):
    with open(os.path.join(d, "f%05d" % i), "wb") as f: f.write(data)
create = n / (time.perf_counter() - t)
subprocess.run(["sh", "-c", "sync; echo 3 > /proc/sys/vm/drop_caches"], check=True)
t = time.perf_counter()
for i in range(n):
    with open(os.path.join(d, "f%05d" % i), "rb") as f: f.read()
read = n / (time.perf_counter() - t)
t = time.perf_counter(); subprocess.run(["rm", "-rf", d], check=True); rm = n / (time.perf_counter() - t)
print("%-4s cp in %6.1f MiB/s   create %5.0f files/s   read %5.0f files/s   rm %5.0f files/s" % (label, big, create, read, rm))
PY
    stop
    rm -rf "$work"
}
echo "machine: $(nproc) cores, $(uname -r); old: $old; new: $new"
for _ in $(seq "$rounds"); do run "$old" old; run "$new" new; done
