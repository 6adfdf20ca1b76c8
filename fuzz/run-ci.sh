#!/usr/bin/env bash
# Builds every fuzz target with this machine's stable toolchain and runs each
# for a bounded time (FUZZ_SECONDS, default 45: eight targets within the CI budget). Exits non-zero if any target
# crashes, exceeds the RSS limit or times out; the failing input's path
# is printed. See fuzz/README.md for why it builds with plain cargo.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(dirname "$here")"
cd "$here"

FUZZ_SECONDS="${FUZZ_SECONDS:-45}"
TARGETS="${FUZZ_TARGETS:-header stream compressed indexed roundtrip extract_sandbox nbd_request lzo1x_encode}"
export CARGO_TARGET_DIR="${FUZZ_TARGET_DIR:-$here/target}"
triple="$(rustc -vV | sed -n 's/^host: //p')"

# The same instrumentation cargo-fuzz adds with `--sanitizer none`, but without
# its -Ccodegen-units=1, so the build uses both cores. No -Z flag is needed:
# this is stable Rust. --target keeps RUSTFLAGS off build scripts and proc-macros.
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing"

echo "fuzz: building targets ($(rustc --version)) into $CARGO_TARGET_DIR"
start=$(date +%s)
# Not --locked: fuzz/Cargo.lock is committed, but vma-format may gain a
# dependency before this lock file is refreshed; cargo then adds only that.
cargo build --release --target "$triple" --bins
echo "fuzz: build took $(( $(date +%s) - start ))s"
bin="$CARGO_TARGET_DIR/$triple/release"

# Seeds: the Proxmox-written vectors, small archives of our writer (seeds/:
# multi-extent, vmstate, odd sizes, diskless; zstd/gzip/lzop-wrapped for the
# compressed target) and every committed regression input.
vectors="$repo/tests/data/vectors"
seed() { # target, then files
    local t="$1"; shift
    mkdir -p "corpus/$t"
    for f in "$@"; do [ -e "$f" ] && cp -f "$f" "corpus/$t/seed-$(basename "$f")"; done
    return 0
}
for t in $TARGETS; do
    case "$t" in
        header) seed "$t" "$vectors"/*.vma seeds/*.vma ;;
        # The real CLI decompresses: its compressed seeds cover that path too.
        extract_sandbox) seed "$t" "$vectors"/*.vma seeds/*.vma seeds/*.zst seeds/*.gz seeds/*.lzo ;;
        stream) seed "$t" "$vectors"/*.vma seeds/*.vma ;;
        compressed) seed "$t" seeds/*.zst seeds/*.gz seeds/*.lzo ;;
        nbd_request) seed "$t" seeds/*.nbd ;;
        # Plain inputs to compress: archives have runs, zeros and text.
        lzo1x_encode) seed "$t" "$vectors"/*.vma seeds/*.vma ;;
        indexed)
            # 3 reads: whole first device, an unaligned middle of the second, a tail of dev 1.
            mkdir -p corpus/indexed
            for f in "$vectors"/*.vma seeds/*.vma; do
                { printf '\x03'
                  printf '\x80\x00\x00\x00\x00\x00\x00\x10\x00'
                  printf '\x81\x64\x00\x02\x00\x20\x4e\x00\x00'
                  printf '\x01\x00\x30\x10\x00\x00\x10\x00\x00'
                  cat "$f"; } > "corpus/indexed/seed-$(basename "$f")"
            done ;;
    esac
    # Every regression input is replayed by every target: raw bytes must not
    # crash any of them (the indexed and roundtrip targets read them their way).
    seed "$t" regressions/*.bin
done

# Scratch files of the targets (extract_sandbox, compressed): RAM-backed when
# possible, and removed at the end (libFuzzer exits without destructors).
TMPDIR="$(mktemp -d /dev/shm/vma-fuzz.XXXXXX 2>/dev/null || mktemp -d)"
export TMPDIR
trap 'rm -rf "$TMPDIR"' EXIT

# -max_total_time=0 would mean "forever": FUZZ_SECONDS=0 replays the corpus only.
if [ "$FUZZ_SECONDS" -gt 0 ]; then budget=(-max_total_time="$FUZZ_SECONDS"); else budget=(-runs=0); fi

failed=()
for t in $TARGETS; do
    rm -rf "artifacts/$t"
    mkdir -p "artifacts/$t"
    log="artifacts/$t/fuzz.log"
    echo "fuzz: running $t for ${FUZZ_SECONDS}s"
    set +e
    # Compressed inputs are small; longer ones only slow that target down.
    maxlen=(); case "$t" in compressed) maxlen=(-max_len=32768) ;; lzo1x_encode) maxlen=(-max_len=262144) ;; esac
    # extract_sandbox runs the real `vma`, which prints on every input: send
    # its stdout and stderr to /dev/null (reproduce without it to see a panic).
    quiet=(); [ "$t" = extract_sandbox ] && quiet=(-close_fd_mask=3)
    # A fixed seed (FUZZ_SEED, default 1) keeps CI runs comparable from one
    # submission to the next; set FUZZ_SEED=0 for a random seed when exploring.
    "$bin/$t" "${budget[@]}" "${maxlen[@]}" "${quiet[@]}" -seed="${FUZZ_SEED:-1}" -rss_limit_mb=512 -timeout=10 \
        -dict=vma.dict -print_final_stats=1 -artifact_prefix="artifacts/$t/" \
        "corpus/$t" > "$log" 2>&1
    rc=$?
    set -e
    grep -E '^(#[0-9]+ +DONE|Done|stat::number_of_executed_units|stat::peak_rss_mb)' "$log" || true
    if [ "$rc" -ne 0 ]; then
        echo "fuzz: $t FAILED (exit $rc); last lines of $here/$log:"
        tail -n 40 "$log"
        for a in artifacts/"$t"/crash-* artifacts/"$t"/oom-* artifacts/"$t"/timeout-* artifacts/"$t"/leak-*; do
            [ -e "$a" ] && echo "fuzz: artifact $here/$a (reproduce: $bin/$t $here/$a)"
        done
        failed+=("$t")
    fi
done

if [ "${#failed[@]}" -gt 0 ]; then
    echo "fuzz: ${#failed[@]} target(s) failed: ${failed[*]}"
    exit 1
fi
echo "fuzz: all targets ran ${FUZZ_SECONDS}s without a crash"
