# Shared by the POSIX runners (sourced): waiting for a process they started, bounded.

# wait_for_line FILE REGEX PID: waits up to 20 s for a line matching REGEX in FILE; stops early if PID is gone.
wait_for_line() {
    for _ in $(seq 100); do
        grep -qs "$2" "$1" && return 0
        kill -0 "$3" 2>/dev/null || return 1
        sleep 0.2
    done
    return 1
}

# mounted_or_report MOUNTPOINT LOG: true if MOUNTPOINT is mounted; else prints the mount's LOG and fails.
mounted_or_report() {
    grep -q " $1 " /proc/self/mounts && return 0
    echo "netdisk-mount did not mount:" >&2
    cat "$2" >&2
    return 1
}
