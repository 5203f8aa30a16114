#!/usr/bin/env bash
# POSIX conformance: runs pjdfstest on a fresh netdisk mount (`netdisk-mount --local`) and on a local ext4
# directory of the same machine, side by side, and prints passed/failed/skipped per group for both, then every
# case whose outcome differs. Installs pjdfstest when it is missing. Run as root (the permission, owner and
# device-node tests switch users and call mknod). On netdisk, pjdfstest runs in a directory 28,672 bytes
# (MAX_PATH - 4096) below the mount's root, bound onto a short path by deep-run.pl in a private mount namespace,
# so that its path-length cases are 4,095-byte paths relative to a directory that deep.
#
#   tests/posix/pjdfstest.sh                 every group
#   tests/posix/pjdfstest.sh chmod link      only cases whose name contains one of these words
#
# Environment: PJDFSTEST_LOCAL_DIR  where the scratch directory goes (a local ext4 file system; default /tmp)
#              NETDISK_NO_BUILD=1    use the binaries in target/debug as they are
#              KEEP_OUTPUT=DIR       keep both raw outputs (netdisk.out, ext4.out) in DIR
# Exit status: 0 when netdisk fails no case beyond tests/posix/expected-failures.txt, else 1.
set -euo pipefail
export LC_ALL=C
cd "$(dirname "$0")/../.."
# shellcheck source=tests/posix/wait.sh
. tests/posix/wait.sh
root=$PWD

tests/posix/install-tools.sh pjdfstest
export PATH="$PATH:$HOME/.cargo/bin"
[ "$(id -u)" = 0 ] || echo "warning: not root: pjdfstest skips the cases that switch users or make device nodes" >&2

if [ -z "${NETDISK_NO_BUILD:-}" ]; then
    cargo build --workspace --bins
fi
bin="${CARGO_TARGET_DIR:-$root/target}/debug"

scratch=$(mktemp -d "${PJDFSTEST_LOCAL_DIR:-/tmp}/netdisk-pjdfstest.XXXXXX")
mount_pid=
cleanup() {
    if [ -n "$mount_pid" ]; then
        kill -TERM "$mount_pid" 2>/dev/null || true
        wait "$mount_pid" 2>/dev/null || true
    fi
    if grep -q " $scratch/mnt " /proc/self/mounts; then
        umount -l "$scratch/mnt" || fusermount3 -u -z "$scratch/mnt" || true
    fi
    rm -rf "$scratch"
}
trap cleanup EXIT
mkdir -p "$scratch/ext4" "$scratch/mnt" "$scratch/secondary" "$scratch/deep"
# The users pjdfstest switches to must reach both directories (mktemp makes its directory 0700).
chmod 755 "$scratch" "$scratch/ext4" "$scratch/secondary" "$scratch/deep"

# One configuration for both; the netdisk run also names the known differences (expected-failures.txt).
expected=$(grep -v '^\s*#' tests/posix/expected-failures.txt | grep -v '^\s*$' | sed 's/.*/"&"/' | paste -sd, -)
cp tests/posix/pjdfstest.toml "$scratch/ext4.toml"
{ cat tests/posix/pjdfstest.toml; echo "expected_failures = [$expected]"; } >"$scratch/netdisk.toml"

"$bin/netdisk-mount" --local "$scratch/data" --cache-dir "$scratch/cache" "$scratch/mnt" \
    >"$scratch/mount.out" 2>"$scratch/mount.log" &
mount_pid=$!
wait_for_line "$scratch/mount.out" '^mounted ' "$mount_pid" || true
mounted_or_report "$scratch/mnt" "$scratch/mount.log" || exit 1

# pjdfstest exits non-zero when a case fails: the comparison below reports it.
run() { # NAME PATH SECONDARY_FS [COMMAND TO RUN pjdfstest UNDER...]
    local started=$SECONDS name=$1 path=$2 secondary=$3
    shift 3
    NO_COLOR=1 CLICOLOR=0 timeout -s KILL 1800 "$@" pjdfstest -c "$scratch/$name.toml" -p "$path" -s "$secondary" \
        "${patterns[@]}" >"$scratch/$name.out" 2>&1 || true
    echo "$name: $(grep '^Summary' "$scratch/$name.out" || echo 'no summary (pjdfstest crashed or timed out)') [$((SECONDS - started)) s]"
}
patterns=("$@")
fs_type=$(findmnt -n -o FSTYPE -T "$scratch/ext4" 2>/dev/null || stat -f -c %T "$scratch/ext4")
echo "pjdfstest $(pjdfstest --version | awk '{print $2}') on $(uname -sr); local directory: $fs_type"
# Each run's secondary file system (for the EXDEV cases) is another one: ext4 for netdisk, tmpfs for ext4.
run netdisk "$scratch/deep" "$scratch/secondary" \
    unshare --mount --propagation private perl tests/posix/deep-run.pl "$scratch/mnt" 28672 "$scratch/deep"
run ext4 "$scratch/ext4" /dev/shm

# One line per case: NAME OUTCOME (pass, fail, skip; an expected failure counts as fail).
outcomes() {
    sed -nE 's/^([a-z0-9_:]+) +(ok|FAILED|skipped|failed as expected|PASSED UNEXPECTEDLY)$/\1 \2/p' "$1" |
        sed -E 's/ ok$/ pass/; s/ (FAILED|failed as expected)$/ fail/; s/ PASSED UNEXPECTEDLY$/ pass/; s/ skipped$/ skip/' |
        sort
}
outcomes "$scratch/netdisk.out" >"$scratch/netdisk.cases"
outcomes "$scratch/ext4.out" >"$scratch/ext4.cases"

echo
printf '%-16s %24s   %24s\n' "group" "netdisk pass/fail/skip" "ext4 ($fs_type) pass/fail/skip"
join -a1 -a2 -e missing -o 0,1.2,2.2 "$scratch/netdisk.cases" "$scratch/ext4.cases" | awk '
    function cell(a, b, c) { return sprintf("%d/%d/%d", a, b, c) }
    { split($1, p, "::"); groups[p[1]] = 1; n[p[1], $2]++; e[p[1], $3]++; n["total", $2]++; e["total", $3]++ }
    END {
        for (g in groups) {
            printf "%-16s %24s   %24s\n", g, cell(n[g, "pass"], n[g, "fail"], n[g, "skip"]), cell(e[g, "pass"], e[g, "fail"], e[g, "skip"]) | "sort"
        }
        close("sort")
        g = "total"
        printf "%-16s %24s   %24s\n", g, cell(n[g, "pass"], n[g, "fail"], n[g, "skip"]), cell(e[g, "pass"], e[g, "fail"], e[g, "skip"])
    }'

echo
echo "cases whose outcome differs (netdisk, ext4):"
join -a1 -a2 -e missing -o 0,1.2,2.2 "$scratch/netdisk.cases" "$scratch/ext4.cases" | awk '$2 != $3 { print "  " $0; d++ } END { if (!d) print "  none" }'

if [ -n "${KEEP_OUTPUT:-}" ]; then
    mkdir -p "$KEEP_OUTPUT"
    cp "$scratch/netdisk.out" "$scratch/ext4.out" "$scratch/mount.log" "$KEEP_OUTPUT/"
fi

# netdisk passes unless pjdfstest failed a case not listed as a known difference (it then says "FAILED"), or a
# listed one passed ("PASSED UNEXPECTEDLY"), or it did not finish.
if grep -qE ' (FAILED|PASSED UNEXPECTEDLY)$' "$scratch/netdisk.out" || ! grep -q '^Summary' "$scratch/netdisk.out"; then
    echo
    echo "netdisk: unexpected results:"
    grep -E -A3 ' (FAILED|PASSED UNEXPECTEDLY)$' "$scratch/netdisk.out" | grep -vE '^\s+[0-9]+:|^Backtrace' || true
    exit 1
fi
