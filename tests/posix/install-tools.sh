#!/usr/bin/env bash
# Installs the public test suites tests/posix/ and tests/tests/posix.rs use, when missing, into ~/.cargo/bin:
# pjdfstest 0.2.2 (POSIX conformance; links libacl, from Debian's libacl1-dev) and fsx 0.3.2 (random I/O).
#   tests/posix/install-tools.sh              both
#   tests/posix/install-tools.sh pjdfstest    one of them
set -euo pipefail
tools=("$@")
[ ${#tools[@]} -gt 0 ] || tools=(pjdfstest fsx)
for tool in "${tools[@]}"; do
    case $tool in
        pjdfstest) version=0.2.2 ;;
        fsx) version=0.3.2 ;;
        *) echo "unknown tool $tool (pjdfstest, fsx)" >&2; exit 2 ;;
    esac
    if command -v "$tool" >/dev/null || [ -x "$HOME/.cargo/bin/$tool" ]; then
        continue
    fi
    if [ "$tool" = pjdfstest ] && ! ls /usr/lib/*/libacl.so >/dev/null 2>&1; then
        export DEBIAN_FRONTEND=noninteractive
        apt-get install -y libacl1-dev || { apt-get update && apt-get install -y libacl1-dev; }
    fi
    cargo install --locked "$tool@$version"
done
