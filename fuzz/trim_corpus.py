#!/usr/bin/env python3
"""Trims fuzz/corpus/TARGET to at most MAX files, in place.

Keeps every hand-made seed (`seed-*`) and every saved crash (`crash-*`), then, greedily, the inputs that add the
most coverage edges not covered yet, until MAX files are kept or no input adds anything. `cargo fuzz cmin` keeps
every input with a feature of its own (thousands, most of them for one more serde error path); this keeps the
corpus small enough to commit and to replay in the ordinary test suite in a second or two.

Usage (from fuzz/, after `cargo +nightly fuzz build -O TARGET`):  ./trim_corpus.py TARGET [MAX]
"""

import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
KEEP_PREFIXES = ("seed-", "crash-")


def main():
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    target = sys.argv[1]
    limit = int(sys.argv[2]) if len(sys.argv) == 3 else 300
    binary = os.path.join(HERE, "target", "x86_64-unknown-linux-gnu", "release", target)
    corpus = os.path.join(HERE, "corpus", target)
    if not os.path.isfile(binary):
        sys.exit(f"{binary} is missing: run `cargo +nightly fuzz build -O {target}` first")

    with tempfile.TemporaryDirectory() as scratch:
        control = os.path.join(scratch, "control")
        out = os.path.join(scratch, "out")
        os.mkdir(out)
        # A merge into an empty directory runs every input once and writes its features to the control file.
        subprocess.run(
            [binary, "-merge=1", "-use_counters=0", f"-merge_control_file={control}", out, corpus],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        lines = open(control).read().split("\n")

    count = int(lines[0])
    files = lines[2 : 2 + count]
    features = {}
    for line in lines[2 + count :]:
        parts = line.split()
        if parts and parts[0] == "FT":
            features[files[int(parts[1])]] = set(map(int, parts[2:]))
    every = set().union(*features.values()) if features else set()

    kept, covered = [], set()
    for path in files:
        if os.path.basename(path).startswith(KEEP_PREFIXES):
            kept.append(path)
            covered |= features.get(path, set())
    left = {p: f for p, f in features.items() if p not in kept}
    while left and len(kept) < limit:
        # Most new features first; the smaller file on a tie.
        best = max(left, key=lambda p: (len(left[p] - covered), -os.path.getsize(p)))
        gain = left.pop(best) - covered
        if not gain:
            break
        kept.append(best)
        covered |= gain

    for path in files:
        if path not in kept:
            os.remove(path)
    size = sum(os.path.getsize(p) for p in kept)
    share = 100 * len(covered) / len(every) if every else 100
    print(f"{target}: kept {len(kept)} of {len(files)} inputs ({size} bytes), {share:.1f}% of {len(every)} features")


if __name__ == "__main__":
    main()
