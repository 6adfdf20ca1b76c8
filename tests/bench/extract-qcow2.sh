#!/bin/sh
# `vma extract --format qcow2` against `vma extract` + `qemu-img convert -O qcow2`
# (issue 14, point 4: target <= 0.6x). Release build first:
#   cargo build --release -p vma-cli --bin vma
#   tests/bench/extract-qcow2.sh [DIR]        # env: VMA, RUNS (5), SIZE_MIB (1024)
# Generates a deterministic sparse image (about 45 % zero clusters, 30 % random,
# 15 % text-like, 10 % with one to three scattered 4 KiB blocks, as vma-bench),
# archives it with `vma create`, then times each command RUNS times, alternating,
# and prints the medians. The outputs are removed and `sync` runs (untimed)
# before every timed command, so no run pays for the previous one's writeback.
set -eu
VMA=$(realpath "${VMA:-target/release/vma}")
DIR=${1:-/var/tmp/vma-bench-qcow2}
RUNS=${RUNS:-5}
SIZE_MIB=${SIZE_MIB:-1024}
mkdir -p "$DIR"
cd "$DIR"

if [ ! -f img.raw ] || [ "$(stat -c %s img.raw)" -ne $((SIZE_MIB << 20)) ]; then
    python3 - "$SIZE_MIB" <<'EOF'
import random, sys
size = int(sys.argv[1]) << 20
rng = random.Random(14)
words = b"the quick brown fox jumps over a lazy dog while vma writes clusters "
with open("img.raw", "wb") as f:
    f.truncate(size)
    for c in range(size // 65536):
        r = rng.random()
        if r < 0.45:
            continue
        f.seek(c * 65536)
        if r < 0.75:
            f.write(rng.randbytes(65536))
        elif r < 0.90:
            f.write((words * 1000)[:65536])
        else:
            for b in rng.sample(range(16), rng.randint(1, 3)):
                f.seek(c * 65536 + b * 4096)
                f.write(rng.randbytes(4096))
EOF
    rm -f a.vma
fi
[ -f a.vma ] || "$VMA" create a.vma -d "format=raw:drive-scsi0=$DIR/img.raw"

now() { date +%s.%N; }
median() { sort -n | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }
run() { # name, command...
    name=$1; shift
    rm -rf o; sync
    t0=$(now); "$@" > /dev/null; t1=$(now)
    echo "$t1 - $t0" | bc >> "times.$name"
}
ours() { "$VMA" extract --format qcow2 a.vma o; }
ours_stdin() { "$VMA" extract --format qcow2 - o < a.vma; }
two_pass() {
    "$VMA" extract a.vma o && qemu-img convert -O qcow2 o/disk-drive-scsi0.raw o/out.qcow2
}
two_pass_unsafe() {
    "$VMA" extract a.vma o && qemu-img convert -t unsafe -O qcow2 o/disk-drive-scsi0.raw o/out.qcow2
}
rm -f times.*
for _ in $(seq "$RUNS"); do
    run ours ours
    run two_pass two_pass
    run ours_stdin ours_stdin
    run two_pass_unsafe two_pass_unsafe
done
# The result must be the same disk.
rm -rf o; ours > /dev/null
qemu-img check -q o/disk-drive-scsi0.qcow2
qemu-img compare -q -f qcow2 -F raw o/disk-drive-scsi0.qcow2 img.raw
echo "image $(stat -c %s img.raw) bytes, archive $(stat -c %s a.vma) bytes," \
    "qcow2 $(stat -c %s o/disk-drive-scsi0.qcow2) bytes; medians of $RUNS:"
for n in ours ours_stdin two_pass two_pass_unsafe; do
    echo "$n $(median < "times.$n")"
done
rm -rf o
