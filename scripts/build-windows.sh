#!/usr/bin/env bash
# Cross-builds `vma.exe` for 64-bit Windows (x86_64-pc-windows-gnu) from
# Linux, stripped, with its debug info split into vma.exe.debug. Usage:
#   scripts/build-windows.sh
# Output: target/dist/vma.exe (+ target/dist/vma.exe.debug).
# Needs: rustup target add x86_64-pc-windows-gnu; Debian's
# gcc-mingw-w64-x86-64 (linker, and C compiler for zstd).
set -euo pipefail
cd "$(dirname "$0")/.."
target=x86_64-pc-windows-gnu
cargo build --release --locked --target "$target" -p vma-cli --bin vma
mkdir -p target/dist
out=target/dist/vma.exe
cp "target/$target/release/vma.exe" "$out"
x86_64-w64-mingw32-objcopy --only-keep-debug "$out" "$out.debug"
x86_64-w64-mingw32-strip --strip-all "$out"
(cd target/dist && x86_64-w64-mingw32-objcopy --add-gnu-debuglink=vma.exe.debug vma.exe)
ls -l "$out" "$out.debug"
file "$out"
