#!/usr/bin/env bash
# CI smoke test of the Windows `vma.exe` under Wine (README: "Static and
# Windows builds").
#
# Cross-builds it with scripts/build-windows.sh, then runs it under Debian's
# wine64 on the shipped vectors: list (same bytes as Proxmox's listing),
# config, verify, extract (file, stdin, zstd, -d, --salvage of a cut
# archive; the files' sha256 are Proxmox's; a disk that is mostly hole
# stays unallocated), index of the .zst, and create
# (the same archive bytes as the Linux build writes), with Unix and
# drive-letter/backslash paths. Installs the target, mingw-w64 and wine64
# itself when missing (as root).
#
# Wine 8.0 lacks bcryptprimitives.dll, whose ProcessPrng Rust's std
# imports: tests/windows/bcryptprimitives.c is built into a stub DLL that
# sits next to vma.exe (test-only).
set -euo pipefail
cd "$(dirname "$0")/.."
target=x86_64-pc-windows-gnu

rustup target list --installed | grep -qx "$target" || rustup target add "$target"
need=()
command -v x86_64-w64-mingw32-gcc >/dev/null || need+=(gcc-mingw-w64-x86-64)
[ -x /usr/lib/wine/wine64 ] || need+=(wine64)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

start=$SECONDS
scripts/build-windows.sh
# Lints of the Windows-only code (the cfg(windows) halves), so portability
# cannot rot: warnings are errors, as in the Linux lint step.
cargo clippy --locked --target "$target" -p vma-format -p vma-cli --lib --bins --tests -- -D warnings
echo "windows build + lints: $((SECONDS - start)) s"

tmp=$(mktemp -d)
trap 'wineserver -k 2>/dev/null || true; rm -rf "$tmp"' EXIT
cp target/dist/vma.exe "$tmp/"
x86_64-w64-mingw32-gcc -shared -O2 -o "$tmp/bcryptprimitives.dll" \
  tests/windows/bcryptprimitives.c -ladvapi32

export WINEARCH=win64 WINEPREFIX=$tmp/wineprefix WINEDEBUG=-all WINEDLLOVERRIDES="mscoree,mshtml="
export TZ=UTC
w0=$SECONDS
vma() { /usr/lib/wine/wine64 "$tmp/vma.exe" "$@"; }
# The first run creates the prefix (the slow part).
vma --version
echo "wine prefix + first run: $((SECONDS - w0)) s"

# The normal Linux build, to compare with.
cargo build --locked -q -p vma-cli --bin vma
ref=$PWD/target/debug/vma

v=tests/data/vectors
# Wine maps Z: to /, so Z:\path\to\x is the same file as /path/to/x.
win() { echo "Z:${1//\//\\}"; }
t=$tmp/out
mkdir "$t"
for a in "$v"/*.vma "$v"/*.vma.zst; do
  n=$(basename "$a")
  base=${n%.vma*}
  vma list "$a" | tr -d '\r' >"$t/$n.list"
  "$ref" list "$a" | cmp - "$t/$n.list"
  vma verify "$a"
  vma extract "$(win "$PWD/$a")" "$(win "$t/$n.x")" >/dev/null
  vma extract - "$t/$n.stdin" <"$a" >/dev/null
  "$ref" extract "$a" "$t/$n.linux" >/dev/null
  diff -r "$t/$n.x" "$t/$n.linux"
  diff -r "$t/$n.stdin" "$t/$n.linux"
  if [ -f "$v/$base.sha256" ]; then (cd "$t/$n.x" && sha256sum --quiet -c "$OLDPWD/$v/$base.sha256"); fi
done
cmp "$t/ref-two-disks.vma.list" "$v/ref-two-disks.list"

# config, extract -d, --salvage of a cut archive.
vma config "$v/ref-two-disks.vma" -c qemu-server.fw | cmp - "$v/inputs/qemu-server.fw"
vma extract -d drive-scsi1 "$v/ref-two-disks.vma" "$t/only1" >/dev/null
[ "$(ls "$t/only1" | grep -c '^disk-')" = 1 ] && cmp "$t/only1/disk-drive-scsi1.raw" "$t/ref-two-disks.vma.linux/disk-drive-scsi1.raw"
head -c 200000 "$v/ref-two-disks.vma" >"$t/cut.vma"
set +e
vma extract --salvage "$t/cut.vma" "$t/salv.win" >/dev/null 2>&1; s_win=$?
"$ref" extract --salvage "$t/cut.vma" "$t/salv.linux" >/dev/null 2>&1; s_linux=$?
set -e
[ "$s_win" = 3 ] && [ "$s_linux" = 3 ]
diff -r "$t/salv.win" "$t/salv.linux"

# index of a compressed archive (the sidecar goes to --cache-dir).
cp "$v/ref-two-disks.vma.zst" "$t/"
mkdir "$t/cache"
vma index --cache-dir "$(win "$t/cache")" "$t/ref-two-disks.vma.zst"
ls "$t/cache" | grep -q vmaidx

# create: the same bytes as the Linux build, plain and zstd.
in=$v/inputs
for out in c.vma c.vma.zst; do
  args=(--uuid 2f8b5a8e-7a1d-4a59-9a57-0c3a4c2b6e11 --ctime 1700000000
    -c "$in/qemu-server.conf" -c "$in/qemu-server.fw")
  vma create "$(win "$t/win.$out")" "${args[@]}" \
    -d "format=raw:drive-scsi0=$(win "$PWD/$in/diskA.raw")" -d "format=raw:drive-scsi1=$in/diskB.raw"
  "$ref" create "$t/linux.$out" "${args[@]}" \
    -d "format=raw:drive-scsi0=$in/diskA.raw" -d "format=raw:drive-scsi1=$in/diskB.raw"
  cmp "$t/win.$out" "$t/linux.$out"
done

# Holes: Wine 8.0 accepts FSCTL_SET_SPARSE and ignores it (README), but the
# file behind is a Unix file: extract sets the length and writes only the
# data, so a disk that is mostly hole stays unallocated. Fails if the Windows
# path ever writes zeros for holes (NTFS would then allocate them).
truncate -s 256M "$t/holey.raw"
printf start | dd of="$t/holey.raw" conv=notrunc status=none
printf end | dd of="$t/holey.raw" bs=65536 seek=4095 conv=notrunc status=none
"$ref" create "$t/holey.vma" -d "format=raw:drive-scsi0=$t/holey.raw"
vma extract "$t/holey.vma" "$t/holey.x" >/dev/null
cmp "$t/holey.x/disk-drive-scsi0.raw" "$t/holey.raw"
kib=$(du -k "$t/holey.x/disk-drive-scsi0.raw" | cut -f1)
[ "$kib" -lt 1024 ] || { echo "a 256 MiB disk with two data clusters takes $kib KiB extracted under Wine" >&2; exit 1; }

# Names Windows cannot hold (a device name, a stream separator) are refused,
# and nothing is written outside the target directory.
mkdir "$t/hostile"
printf 'x\n' >"$t/hostile/aux"
printf 'y\n' >"$t/hostile/a:b"
for c in aux a:b; do
  "$ref" create "$t/hostile-$c.vma" -c "$t/hostile/$c"
  if vma extract "$t/hostile-$c.vma" "$t/hostile-$c.x" 2>"$t/err"; then
    echo "config name '$c' was extracted on Windows" >&2; exit 1
  fi
  tr -d '\r' <"$t/err" | grep -q "Windows" || { cat "$t/err"; exit 1; }
done

# mount, umount, serve and backup are not part of the Windows program, and
# --help says so.
if vma mount "$v/ref-two-disks.vma" "$t/mnt" 2>/dev/null; then echo "mount ran on Windows" >&2; exit 1; fi
for c in mount umount serve backup; do
  if vma "$c" --help >/dev/null 2>&1; then echo "vma $c exists on Windows" >&2; exit 1; fi
done
vma --help | tr -d '\r' >"$t/help"
grep -q "mount, umount (FUSE), serve (NBD) and backup (QMP and NBD) are Unix-only" "$t/help" \
  || { cat "$t/help"; exit 1; }

echo "windows smoke: OK ($((SECONDS - start)) s, of which wine $((SECONDS - w0)) s)"
