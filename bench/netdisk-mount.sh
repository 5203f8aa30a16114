# Sourced by the quick bench scripts: a release netdisk-server on loopback with user "bench", and a netdisk mount
# of it, in a scratch directory that goes away on exit (with the mount and both processes).
#   start_netdisk [SERVER OPTION...]   sets $work (scratch), $work/mnt (the mount), $addr
# Needs root (FUSE mount). The caller has built the release binaries and is at the repository root.
server_pid= mount_pid=
work=$(mktemp -d /var/tmp/netdisk-bench.XXXXXX)
cleanup() {
    if [ -n "$mount_pid" ]; then kill "$mount_pid" 2>/dev/null || true; wait "$mount_pid" 2>/dev/null || true; fi
    mountpoint -q "$work/mnt" 2>/dev/null && umount -l "$work/mnt"
    if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

start_netdisk() {
    export NETDISK_PASSWORD=bench
    mkdir -p "$work/mnt"
    target/release/netdisk-server user add bench --data "$work/data" >/dev/null
    target/release/netdisk-server serve "$@" --data "$work/data" --listen 127.0.0.1:0 \
        >"$work/server.out" 2>"$work/server.log" &
    server_pid=$!
    for _ in $(seq 100); do grep -q '^listening on' "$work/server.out" && break; sleep 0.1; done
    addr=$(sed -n 's/^listening on //p' "$work/server.out")
    [ -n "$addr" ] || { cat "$work/server.log"; exit 1; }
    target/release/netdisk-mount --server "$addr" --user bench --cache-dir "$work/cache" "$work/mnt" \
        >"$work/mount.out" 2>"$work/mount.log" &
    mount_pid=$!
    for _ in $(seq 100); do grep -q '^mounted' "$work/mount.out" && break; sleep 0.1; done
    grep -q '^mounted' "$work/mount.out" || { cat "$work/mount.log"; exit 1; }
}
