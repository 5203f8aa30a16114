#!/usr/bin/env bash
# Data integrity under random operations: runs fsx (the Rust fsx crate) with tests/posix/fsx.toml on one file of
# a fresh netdisk mount (`netdisk-mount --local`), once per seed. fsx checks every read against its own copy of
# what the file must hold and stops at the first miscompare. Installs fsx when it is missing.
#
#   tests/posix/fsx.sh                       20,000 operations, seed 1 (what tests/tests/posix.rs runs)
#   tests/posix/fsx.sh -N 1000000 -S 42      the long run recorded in tests/posix/RESULTS.md
#   tests/posix/fsx.sh -N 50000 -S 1 -S 2    several seeds, each on a fresh file
#   tests/posix/fsx.sh -c tests/posix/fsx-mapread.toml -N 5000     with mapped reads (see fsx.toml on why apart)
#
# Environment: NETDISK_NO_BUILD=1 uses the binaries in target/debug as they are; FSX_LOCAL_DIR is where the
# scratch directory goes (default /tmp); on a miscompare fsx's artifacts (.fsxlog, .fsxgood) are kept there.
# Exit status: 0 when every seed ran all its operations A-OK.
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=tests/posix/wait.sh
. tests/posix/wait.sh
root=$PWD

ops=20000
seeds=()
config=tests/posix/fsx.toml
while getopts "c:N:S:" opt; do
    case $opt in
        c) config=$OPTARG ;;
        N) ops=$OPTARG ;;
        S) seeds+=("$OPTARG") ;;
        *) sed -n '2,14p' "$0" >&2; exit 2 ;;
    esac
done
[ ${#seeds[@]} -gt 0 ] || seeds=(1)

tests/posix/install-tools.sh fsx
export PATH="$PATH:$HOME/.cargo/bin"

if [ -z "${NETDISK_NO_BUILD:-}" ]; then
    cargo build --workspace --bins
fi
bin="${CARGO_TARGET_DIR:-$root/target}/debug"

scratch=$(mktemp -d "${FSX_LOCAL_DIR:-/tmp}/netdisk-fsx.XXXXXX")
mount_pid=
failed=0
cleanup() {
    if [ -n "$mount_pid" ]; then
        kill -TERM "$mount_pid" 2>/dev/null || true
        wait "$mount_pid" 2>/dev/null || true
    fi
    if grep -q " $scratch/mnt " /proc/self/mounts; then
        umount -l "$scratch/mnt" || fusermount3 -u -z "$scratch/mnt" || true
    fi
    if [ "$failed" = 0 ]; then
        rm -rf "$scratch"
    else
        echo "fsx artifacts and the mount's log are kept in $scratch" >&2
    fi
}
trap cleanup EXIT
mkdir -p "$scratch/mnt" "$scratch/artifacts"

"$bin/netdisk-mount" --local "$scratch/data" --cache-dir "$scratch/cache" "$scratch/mnt" \
    >"$scratch/mount.out" 2>"$scratch/mount.log" &
mount_pid=$!
wait_for_line "$scratch/mount.out" '^mounted ' "$mount_pid" || true
mounted_or_report "$scratch/mnt" "$scratch/mount.log" || { failed=1; exit 1; }

echo "fsx $(fsx --version | awk '{print $2}') on netdisk, $(uname -sr), config $config"
for seed in "${seeds[@]}"; do
    started=$(date +%s.%N)
    if fsx -f "$config" -N "$ops" -S "$seed" -P "$scratch/artifacts" "$scratch/mnt/fsx-$seed.data" \
        >"$scratch/fsx-$seed.out" 2>&1; then
        result=$(tail -1 "$scratch/fsx-$seed.out")
    else
        result="FAILED (exit $?)"
        failed=1
    fi
    awk -v seed="$seed" -v ops="$ops" -v result="$result" -v started="$started" -v now="$(date +%s.%N)" \
        'BEGIN { s = now - started; printf "seed %s: %s operations: %s  [%.0f s, %.0f ops/s]\n", seed, ops, result, s, ops / s }'
    if [ "$failed" != 0 ]; then
        tail -40 "$scratch/fsx-$seed.out" >&2
        cp "$scratch/fsx-$seed.out" "$scratch/artifacts/" 2>/dev/null || true
        exit 1
    fi
done
