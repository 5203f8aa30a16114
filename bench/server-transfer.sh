#!/usr/bin/env bash
# Upload/download throughput of the blocking client against a release netdisk-server over loopback.
# Usage: bench/server-transfer.sh [SIZE_MIB]   (default 1024)
set -euo pipefail
cd "$(dirname "$0")/.."
size=${1:-1024}
cargo build --release -q -p netdisk-server --bins
cargo build --release -q -p netdisk-protocol --example transfer
work=$(mktemp -d)
server_pid=
cleanup() {
    if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT
export NETDISK_PASSWORD=bench
target/release/netdisk-server user add bench --data "$work/data" >/dev/null
target/release/netdisk-server serve --data "$work/data" --listen 127.0.0.1:0 >"$work/out" 2>"$work/log" &
server_pid=$!
for _ in $(seq 100); do grep -q '^listening on' "$work/out" && break; sleep 0.1; done
addr=$(sed -n 's/^listening on //p' "$work/out")
[ -n "$addr" ] || { cat "$work/log"; exit 1; }
echo "machine: $(nproc) cores, $(uname -r), data dir on $(df --output=fstype "$work" | tail -1)"
target/release/examples/transfer "$addr" bench "$size"
