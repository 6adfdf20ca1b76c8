#!/usr/bin/env bash
# Installs what the test suite needs on a fresh machine (idempotent), then runs every test.
# Used by the README and by .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v fusermount3 >/dev/null || need+=(fuse3)
command -v lzop >/dev/null || need+=(lzop)
command -v pigz >/dev/null || need+=(pigz)
command -v zstd >/dev/null || need+=(zstd)
command -v qemu-storage-daemon >/dev/null || need+=(qemu-utils)
command -v nbdinfo >/dev/null && command -v nbdcopy >/dev/null || need+=(libnbd-bin)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  else
    echo "tests need: ${need[*]} (install them, or run as root)" >&2
    exit 1
  fi
fi
# The independent Python reader used as a second opinion on archives we write.
python3 -c "import dissect.archive" 2>/dev/null || python3 -m pip install -q dissect.archive
# The local S3 server of the remote_s3 tests (s3:// archives).
command -v moto_server >/dev/null || python3 -m pip install -q 'moto[server]'

cargo test --workspace --locked --no-fail-fast "$@"
