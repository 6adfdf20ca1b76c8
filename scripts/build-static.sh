#!/usr/bin/env bash
# Builds a static `vma` for Linux (musl), stripped, with its debug info split
# into a separate file. Usage:
#   scripts/build-static.sh [TARGET [CARGO_ARGS...]]   # default x86_64-unknown-linux-musl
#   e.g. scripts/build-static.sh x86_64-unknown-linux-musl --no-default-features
#   (without object storage: no HTTP/TLS stack, half the size)
# Output: target/dist/vma-TARGET (static, no debug info) and
#         target/dist/vma-TARGET.debug (its DWARF; gdb finds it through the
#         .gnu_debuglink section when both sit in the same directory).
# Needs: rustup target TARGET; for x86_64 Debian's musl-tools (musl-gcc, for
# the C code of zstd and ring); for aarch64 gcc-aarch64-linux-gnu.
set -euo pipefail
cd "$(dirname "$0")/.."
target=${1:-x86_64-unknown-linux-musl}
shift || true

case "$target" in
  x86_64-unknown-linux-musl)
    export CC_x86_64_unknown_linux_musl=${CC_x86_64_unknown_linux_musl:-musl-gcc}
    objcopy=objcopy ;;
  aarch64-unknown-linux-musl)
    export CC_aarch64_unknown_linux_musl=${CC_aarch64_unknown_linux_musl:-aarch64-linux-gnu-gcc}
    export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER=${CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER:-aarch64-linux-gnu-gcc}
    objcopy=aarch64-linux-gnu-objcopy ;;
  *) echo "build-static.sh: unsupported target $target" >&2; exit 2 ;;
esac

# Rust's musl targets link statically by default (static-pie on x86_64).
cargo build --release --locked --target "$target" -p vma-cli --bin vma "$@"
mkdir -p target/dist
out=target/dist/vma-$target
cp "target/$target/release/vma" "$out"
# Split: keep the debug info beside the binary, strip it from the binary.
"$objcopy" --only-keep-debug "$out" "$out.debug"
"$objcopy" --strip-all "$out"
(cd target/dist && "$objcopy" --add-gnu-debuglink="vma-$target.debug" "vma-$target")
ls -l "$out" "$out.debug"
file "$out"
