#!/usr/bin/env bash
# POSIX conformance with the original C pjdfstest (its tests/*/*.t shell scripts, run by prove): once in a directory
# on local ext4 and once in a directory NETDISK_DEPTH bytes below the root of a fresh netdisk mount (a netdisk-server
# on loopback and a netdisk-mount of it, release binaries), and prints one summary line per file system. The C
# suite's path-length cases (*/03.t and the like) use relative paths of up to 4,095 bytes, so from a subdirectory
# the mount sees paths longer than 4,096 bytes from its root; the directory is reached as in pjdfstest.sh
# (deep-run.pl: a bind mount in a private mount namespace), so its depth may pass PATH_MAX.
#
#   tests/posix/pjdfstest-c.sh                    the whole suite
#   tests/posix/pjdfstest-c.sh chmod rename/03.t  only these groups or files (relative to pjdfstest's tests/)
#
# It needs a built C pjdfstest in PJDFSTEST_C_DIR: when the directory is missing it clones the repository there
# (pinned to $pin below) and then asks for it to be built as its README says; it never builds it itself.
# Run as root (the tests switch users and make device nodes).
#
# Environment: PJDFSTEST_C_DIR      the C pjdfstest checkout (default ${XDG_CACHE_HOME:-~/.cache}/netdisk/pjdfstest-c)
#              NETDISK_DEPTH        bytes below the mount's root the netdisk run happens in (default 28672:
#                                   MAX_PATH - 4096, the deepest a 4,095-byte relative path fits)
#              PJDFSTEST_LOCAL_DIR  where the scratch directory goes (a local ext4 file system; default /tmp)
#              PJDFSTEST_TIMEOUT    seconds each of the two runs may take (default 3600)
#              NETDISK_NO_BUILD=1   use the binaries in target/release as they are
#              KEEP_OUTPUT=DIR      keep both prove outputs (ext4.out, netdisk.out) and the two logs in DIR
# Exit status: 0 when both runs finished and netdisk failed no test that ext4 passed; 1 otherwise; 2 when
# something it needs is missing (the C pjdfstest, the network to clone it, root).
set -euo pipefail
export LC_ALL=C
cd "$(dirname "$0")/../.."
# shellcheck source=tests/posix/wait.sh
. tests/posix/wait.sh
root=$PWD

# The C pjdfstest at this commit (2026-08, "utimensat/09.t: skip Y2038 assertions on 32-bit time_t filesystems").
repo=https://github.com/pjd/pjdfstest
pin=85a8aea9e685999ef0540392fd80535f873d7ff7
pjd=${PJDFSTEST_C_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/netdisk/pjdfstest-c}
depth=${NETDISK_DEPTH:-28672}
limit=${PJDFSTEST_TIMEOUT:-3600}

if [ "$(id -u)" != 0 ]; then
    echo "pjdfstest-c.sh: run it as root (the C pjdfstest switches users and makes device nodes)" >&2
    exit 2
fi
if [ ! -d "$pjd/.git" ]; then
    mkdir -p "$(dirname "$pjd")"
    echo "cloning $repo into $pjd" >&2
    if ! timeout 300 git clone -q "$repo" "$pjd"; then
        rm -rf "$pjd"
        echo "pjdfstest-c.sh: cannot clone $repo (is the network unavailable?)" >&2
        exit 2
    fi
fi
if [ "$(git -C "$pjd" rev-parse HEAD)" != "$pin" ]; then
    git -C "$pjd" cat-file -e "$pin^{commit}" 2>/dev/null || timeout 300 git -C "$pjd" fetch -q origin || {
        echo "pjdfstest-c.sh: $pjd lacks commit $pin and cannot fetch it (is the network unavailable?)" >&2
        exit 2
    }
    git -C "$pjd" checkout -q "$pin"
fi
if [ ! -x "$pjd/pjdfstest" ] || [ "$pjd/pjdfstest.c" -nt "$pjd/pjdfstest" ]; then
    echo "pjdfstest-c.sh: no pjdfstest binary built from $pjd/pjdfstest.c: build it there as its README says" \
        "(section \"Building pjdfstest\"), then run this again" >&2
    exit 2
fi
# prove (Debian's perl) runs the .t files; their names come from openssl md5.
for tool in prove openssl unshare; do
    command -v "$tool" >/dev/null || { echo "pjdfstest-c.sh: $tool is missing" >&2; exit 2; }
done

if [ -z "${NETDISK_NO_BUILD:-}" ]; then
    cargo build --release --bins --locked
fi
bin="${CARGO_TARGET_DIR:-$root/target}/release"

# What to run: the whole tests/ directory, or the groups and files named.
targets=()
for t in "$@"; do
    [ -e "$pjd/tests/$t" ] || { echo "pjdfstest-c.sh: no $t in $pjd/tests" >&2; exit 2; }
    targets+=("$pjd/tests/$t")
done
[ ${#targets[@]} -gt 0 ] || targets=("$pjd/tests")

scratch=$(mktemp -d "${PJDFSTEST_LOCAL_DIR:-/tmp}/netdisk-pjdfstest-c.XXXXXX")
server_pid=
mount_pid=
run_pid=
cleanup() {
    if [ -n "$run_pid" ]; then
        kill -TERM "$run_pid" 2>/dev/null || true
        wait "$run_pid" 2>/dev/null || true
    fi
    if [ -n "$mount_pid" ]; then
        kill -TERM "$mount_pid" 2>/dev/null || true
        wait "$mount_pid" 2>/dev/null || true
    fi
    if grep -q " $scratch/mnt " /proc/self/mounts; then
        umount -l "$scratch/mnt" || fusermount3 -u -z "$scratch/mnt" || true
    fi
    if [ -n "$server_pid" ]; then
        kill -TERM "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    if [ -n "${KEEP_OUTPUT:-}" ]; then
        mkdir -p "$KEEP_OUTPUT"
        cp "$scratch"/*.out "$scratch"/*.log "$KEEP_OUTPUT/" 2>/dev/null || true
    fi
    grep -q " $scratch/mnt " /proc/self/mounts || rm -rf "$scratch"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM HUP
mkdir -p "$scratch/ext4" "$scratch/mnt" "$scratch/deep"
# pjdfstest switches to other users in its directory: they must reach it (mktemp makes its directory 0700).
chmod 755 "$scratch" "$scratch/ext4" "$scratch/deep"

# A server on loopback with one user, and a mount of it (as root: shared with all users, allow_other).
export NETDISK_PASSWORD
NETDISK_PASSWORD=$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')
"$bin/netdisk-server" user add pjd --data "$scratch/data" >/dev/null
"$bin/netdisk-server" serve --listen 127.0.0.1:0 --data "$scratch/data" --log-file "$scratch/server.log" \
    >"$scratch/server.out" &
server_pid=$!
wait_for_line "$scratch/server.out" '^listening on ' "$server_pid" || true
addr=$(sed -n 's/^listening on //p' "$scratch/server.out")
if [ -z "$addr" ]; then
    echo "netdisk-server did not start:" >&2
    cat "$scratch/server.log" >&2 || true
    exit 1
fi
"$bin/netdisk-mount" --server "$addr" --user pjd --cache-dir "$scratch/cache" "$scratch/mnt" \
    >"$scratch/mount.out" 2>"$scratch/mount.log" &
mount_pid=$!
wait_for_line "$scratch/mount.out" '^mounted ' "$mount_pid" || true
mounted_or_report "$scratch/mnt" "$scratch/mount.log" || exit 1
unset NETDISK_PASSWORD

# prove exits non-zero when a test fails: the summary reports it. timeout puts the run in a process group of its
# own (a terminal's Ctrl-C reaches only this script) and passes on the TERM the cleanup sends it to that group; the
# run is waited for in the background so that a signal to this script ends the wait at once.
run() { # NAME DIRECTORY [COMMAND TO RUN prove UNDER...]
    local started=$SECONDS name=$1 dir=$2
    shift 2
    timeout -k 30 "$limit" "$@" sh -c 'cd "$1" && shift && exec prove -rv "$@"' sh "$dir" "${targets[@]}" \
        >"$scratch/$name.out" 2>&1 </dev/null &
    run_pid=$!
    wait "$run_pid" || true
    run_pid=
    echo "$((SECONDS - started))" >"$scratch/$name.secs"
}

# One line from prove's closing report: files, tests, passed, failed, and each failing file with its failing
# test numbers (or why it failed: a bad plan, a non-zero exit).
summary() { # NAME LABEL
    awk -v label="$2" -v prefix="$pjd/tests/" -v secs="$(cat "$scratch/$1.secs")" '
        function flush() { if (cur != "" && bad) list = list (list == "" ? "" : ", ") cur " (" why ")"; cur = ""; bad = 0; why = "" }
        function note(s) { why = why (why == "" ? "" : "; ") s }
        /^Test Summary Report/ { report = 1; next }
        report && /^[^ ].* \(Wstat: [0-9]+/ {
            flush(); cur = $1; sub(prefix, "", cur)
            if (match($0, /Failed: [0-9]+\)/)) { n = substr($0, RSTART + 8, RLENGTH - 9) + 0; failed += n; if (n) bad = 1 }
            cont = ""; next
        }
        report && /^  Failed tests?: / { s = $0; sub(/^  Failed tests?: +/, "", s); note(s); cont = "failed"; next }
        report && /^  (Parse errors|Non-zero (exit|wait) status): / { s = $0; sub(/^ +/, "", s); note(s); bad = 1; cont = "other"; next }
        report && /^  TODO passed: / { cont = ""; next }
        report && /^    +[^ ]/ && cont != "" { s = $0; sub(/^ +/, "", s); why = why (cont == "failed" ? ", " : "; ") s; next }
        /^Files=[0-9]+, Tests=[0-9]+/ { flush(); split($0, f, /[=,]/); files = f[2]; tests = f[4]; done = 1 }
        END {
            if (!done) { printf "%s: no summary from prove (it crashed or timed out) [%d s]\n", label, secs; exit }
            printf "%s: %d files, %d tests, %d passed, %d failed [%d s]", label, files, tests, tests - failed, failed, secs
            if (list != "") printf "; failing: %s", list
            printf "\n"
        }' "$scratch/$1.out"
}

echo "C pjdfstest ${pin:0:12} on $(uname -sr); netdisk from $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- fusefs server protocol || echo '+changes')"
run ext4 "$scratch/ext4"
run netdisk "$scratch/deep" unshare --mount --propagation private perl tests/posix/deep-run.pl "$scratch/mnt" "$depth" "$scratch/deep"
fs_type=$(findmnt -n -o FSTYPE -T "$scratch/ext4" 2>/dev/null || stat -f -c %T "$scratch/ext4")
summary ext4 "$fs_type ($scratch/ext4)"
summary netdisk "netdisk ($depth bytes below the mount's root)"

# Pass unless netdisk did not finish or failed a test that ext4 passed.
failures() { # NAME: one "FILE NUMBER" a line, from prove's verbose output
    awk -v prefix="$pjd/tests/" '
        /^\/.*\.t \.+/ { file = $1; sub(prefix, "", file) }
        /^not ok [0-9]+/ && $0 !~ /# TODO/ { print file, $3 }' "$scratch/$1.out" | sort -u
}
grep -q '^Files=' "$scratch/netdisk.out" || exit 1
extra=$(comm -23 <(failures netdisk) <(failures ext4))
if [ -n "$extra" ]; then
    echo "netdisk fails $(echo "$extra" | wc -l) tests that ext4 passes"
    exit 1
fi
