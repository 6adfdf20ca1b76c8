#!/usr/bin/env bash
# CI smoke test of the static Linux `vma` (README: "Static and Windows builds").
#
# Builds it with scripts/build-static.sh, checks that it is static (file,
# ldd), runs the CLI integration tests against it (VMA_BIN: list, config,
# verify, extract, create, mount), and compares its results on the shipped
# vectors byte for byte with the normal (glibc) build's.
# Installs the musl target and musl-tools itself when missing (as root).
set -euo pipefail
cd "$(dirname "$0")/.."
target=x86_64-unknown-linux-musl

rustup target list --installed | grep -qx "$target" || rustup target add "$target"
if ! command -v musl-gcc >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq musl-tools >/dev/null
fi

start=$SECONDS
scripts/build-static.sh "$target"
echo "static build: $((SECONDS - start)) s"
bin=$PWD/target/dist/vma-$target
size=$(stat -c %s "$bin")
echo "static vma: $size bytes (stripped; debug info in $(basename "$bin").debug)"

# Static: no interpreter, no shared libraries.
file "$bin" | grep -Eq 'statically linked|static-pie linked' || { file "$bin"; echo "not static" >&2; exit 1; }
if ldd "$bin" 2>&1 | grep -q '=>'; then ldd "$bin"; echo "links shared libraries" >&2; exit 1; fi
"$bin" --version

# The normal build, to compare with.
cargo build --locked -q -p vma-cli --bin vma
ref=$PWD/target/debug/vma

tmp=$(mktemp -d)
cleanup() {
  mountpoint -q "$tmp/mnt" 2>/dev/null && { "$bin" umount "$tmp/mnt" || fusermount3 -uz "$tmp/mnt"; }
  rm -rf "$tmp"
}
trap cleanup EXIT
v=tests/data/vectors
export TZ=UTC
for a in "$v"/*.vma "$v"/*.vma.zst; do
  n=$(basename "$a")
  for b in static:"$bin" normal:"$ref"; do
    k=${b%%:*} exe=${b#*:}
    "$exe" list "$a" >"$tmp/$n.$k.list"
    "$exe" verify "$a"
    "$exe" extract "$a" "$tmp/$n.$k.x" >/dev/null
    "$exe" extract - "$tmp/$n.$k.stdin" <"$a" >/dev/null
  done
  cmp "$tmp/$n.static.list" "$tmp/$n.normal.list"
  diff -r "$tmp/$n.static.x" "$tmp/$n.normal.x"
  diff -r "$tmp/$n.static.x" "$tmp/$n.static.stdin"
  if [ -f "$v/${n%.zst}.list" ]; then cmp "$tmp/$n.static.list" "$v/${n%.zst}.list"; fi
  sums=$v/${n%.vma*}.sha256
  if [ -f "$sums" ]; then (cd "$tmp/$n.static.x" && sha256sum --quiet -c "$OLDPWD/$sums"); fi
done

# create: the same archive bytes (fixed uuid and ctime), plain and zstd.
in=$v/inputs
for out in c.vma c.vma.zst; do
  for b in static:"$bin" normal:"$ref"; do
    k=${b%%:*} exe=${b#*:}
    "$exe" create "$tmp/$k.$out" --uuid 2f8b5a8e-7a1d-4a59-9a57-0c3a4c2b6e11 --ctime 1700000000 \
      -c "$in/qemu-server.conf" -c "$in/qemu-server.fw" \
      -d "format=raw:drive-scsi0=$in/diskA.raw" -d "format=raw:drive-scsi1=$in/diskB.raw"
  done
  cmp "$tmp/static.$out" "$tmp/normal.$out"
done

# mount: the disks read through FUSE equal the extracted ones.
mkdir "$tmp/mnt"
"$bin" mount "$v/ref-two-disks.vma" "$tmp/mnt"
for d in drive-scsi0 drive-scsi1; do cmp "$tmp/mnt/$d.raw" "$tmp/ref-two-disks.vma.normal.x/disk-$d.raw"; done
cmp "$tmp/mnt/qemu-server.conf" "$in/qemu-server.conf"
"$bin" umount "$tmp/mnt"

# The CLI integration tests, run against the static binary.
VMA_BIN=$bin cargo test --locked -q -p vma-tests --test cli_vma --test create_cli --test mount_cli
echo "static smoke: OK ($((SECONDS - start)) s)"
