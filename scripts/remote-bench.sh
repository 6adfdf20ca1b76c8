#!/usr/bin/env bash
# Object-storage benchmark (issue #15): `vma extract` of an archive in S3
# (moto's server on localhost) against the floor, one plain GET of the whole
# object written to a file, all in one run on the same object.
#
#   cargo build --release -p vma-cli && scripts/remote-bench.sh
#   SERVER=range scripts/remote-bench.sh
#
# SERVER=moto (default): moto's S3 server, through s3://. moto reads the
# whole object for every ranged GET (about 1 ms per MiB of object here), so
# its ranged GETs of a 2 GiB object cost seconds each, which real S3's do
# not: the -d runs are stopped after DTIMEOUT seconds (default 120).
# SERVER=range: a small threaded Python HTTP server answering range
# requests by seek (cost proportional to the range, as S3), through
# http://; the same commands, without moto's per-request cost.
#
# Makes DISKS (4) disks of DISK_MIB (512) MiB of random data, `vma create`s
# one plain archive of them (2 GiB), uploads it (one PUT), then measures:
#   floor         curl GET of the whole object into a file, fsynced
#   extract       vma extract -v s3://... (all disks; it stores the index)
#   extract -d    vma extract -v -d drive-scsi1 s3://... (one disk, through
#                 the index), twice
#   vma index     (SERVER=range) the index again, by extent-header GETs
# and prints wall time, the ratio to the floor, requests and bytes fetched
# (from vma's -v line; the floor is one request of the object's size).
# Every restored disk is compared with its source. Needs moto_server
# (pip install 'moto[server]') and curl. WORK (default a new directory under
# /var/tmp) needs ~3 × DISKS × DISK_MIB MiB; it is removed at the end.
set -euo pipefail

cd "$(dirname "$0")/.."
VMA=${VMA:-$PWD/target/release/vma}
DISKS=${DISKS:-4}
DISK_MIB=${DISK_MIB:-512}
WORK=${WORK:-$(mktemp -d /var/tmp/vma-remote-bench.XXXXXX)}
PORT=${PORT:-$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
[ -x "$VMA" ] || { echo "no $VMA: cargo build --release -p vma-cli" >&2; exit 1; }

MOTO_PID=
cleanup() {
    if [ -n "$MOTO_PID" ]; then
        kill "$MOTO_PID" 2>/dev/null || true
        wait "$MOTO_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

# moto checks only that an Authorization header is there (see
# tests/tests/support/moto.rs); curl sends a dummy one.
AUTH="Authorization: AWS4-HMAC-SHA256 Credential=AKIDBENCH/20261129/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=00"
URL=http://127.0.0.1:$PORT
export AWS_ACCESS_KEY_ID=AKIDBENCH AWS_SECRET_ACCESS_KEY=benchsecretbenchsecret AWS_REGION=us-east-1
export AWS_ENDPOINT_URL=$URL
unset AWS_PROFILE AWS_SESSION_TOKEN
# An index that cannot go beside the object (http://) stays in WORK.
export VMA_CACHE_DIR=$WORK/cache

LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)
SERVER=${SERVER:-moto}
DTIMEOUT=${DTIMEOUT:-120}
mkdir -p "$WORK/srv"
case $SERVER in
moto)
    moto_server -H 127.0.0.1 -p "$PORT" >"$WORK/moto.out" 2>&1 &
    ARCHIVE=s3://bench/a.vma
    ;;
range)
    # GET with or without Range, HEAD; ETag and Last-Modified from the file.
    python3 - "$PORT" "$WORK/srv" >"$WORK/moto.out" 2>&1 <<'PY' &
import http.server, os, re, sys
root = sys.argv[2]
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are separate writes
    def log_message(self, fmt, *a):
        sys.stderr.write('"%s" %s\n' % (self.requestline, a[1] if len(a) > 1 else ""))
    def send(self, head):
        p = os.path.join(root, os.path.basename(self.path))
        if not os.path.isfile(p):
            self.send_response(404); self.send_header("Content-Length", "0"); self.end_headers(); return
        st = os.stat(p); size = st.st_size; a, b = 0, size - 1; status = 200
        m = re.match(r"bytes=(\d+)-(\d*)$", self.headers.get("Range", ""))
        if m:
            a = int(m.group(1)); b = min(int(m.group(2)) if m.group(2) else size - 1, size - 1)
            if a >= size:
                self.send_response(416); self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0"); self.end_headers(); return
            status = 206
        self.send_response(status)
        self.send_header("Content-Length", str(b - a + 1))
        self.send_header("ETag", f'"{st.st_mtime_ns:x}-{size:x}"')
        self.send_header("Last-Modified", self.date_time_string(st.st_mtime))
        self.send_header("Accept-Ranges", "bytes")
        if status == 206: self.send_header("Content-Range", f"bytes {a}-{b}/{size}")
        self.end_headers()
        if head: return
        with open(p, "rb") as f:
            f.seek(a); left = b - a + 1
            while left > 0:
                chunk = f.read(min(left, 1 << 20))
                if not chunk: break
                self.wfile.write(chunk); left -= len(chunk)
    def do_GET(self): self.send(False)
    def do_HEAD(self): self.send(True)
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
PY
    ARCHIVE=$URL/bench/a.vma
    ;;
*) echo "SERVER is moto or range" >&2; exit 1 ;;
esac
MOTO_PID=$!
for _ in $(seq 100); do curl -s -o /dev/null "$URL" && break; sleep 0.2; done
if [ "$SERVER" = moto ]; then curl -sf -X PUT -H "$AUTH" "$URL/bench" >/dev/null; fi

echo "making $DISKS disks of $DISK_MIB MiB of random data" >&2
args=()
for i in $(seq 0 $((DISKS - 1))); do
    head -c "${DISK_MIB}M" /dev/urandom >"$WORK/d$i.raw"
    args+=(-d "format=raw:drive-scsi$i=$WORK/d$i.raw")
done
"$VMA" create "$WORK/a.vma" "${args[@]}"
SIZE=$(stat -c %s "$WORK/a.vma")
if [ "$SERVER" = moto ]; then
    echo "uploading $SIZE bytes" >&2
    curl -sf -X PUT -H "$AUTH" -T "$WORK/a.vma" "$URL/bench/a.vma" >/dev/null
    rm -f "$WORK/a.vma"
else
    mv "$WORK/a.vma" "$WORK/srv/a.vma"
fi

now() { date +%s.%N; }
ROWS=()
FLOOR=
# row NAME SECONDS REQUESTS BYTES
row() {
    local ratio
    ratio=$(awk -v t="$2" -v f="${FLOOR:-$2}" 'BEGIN { printf "%.2f", t / f }')
    ROWS+=("| $1 | $(printf %.2f "$2") s | ${ratio}× | $3 | $4 |")
    echo "$1: $(printf %.2f "$2") s, ${ratio}× the floor, $3 requests, $4 bytes" >&2
}
# vma_run NAME OUTDIR ARGS...: times `vma extract -v ARGS`, reads its fetched
# line; returns 1 if stopped after $LIMIT seconds (0: no limit).
LIMIT=0
vma_run() {
    local name=$1 out=$2 t0 t1 line n rc=0
    shift 2
    rm -rf "$out"
    sync
    t0=$(now)
    timeout "$LIMIT" "$VMA" extract -v "$@" "$ARCHIVE" "$out" >"$WORK/stdout" 2>"$WORK/stderr" || rc=$?
    t1=$(now)
    if [ "$rc" = 124 ]; then
        n=$(grep -c '"GET /bench/a.vma' "$WORK/moto.out" || true)
        ROWS+=("| $name | stopped after $LIMIT s | – | $((n - GETS)) GETs served by then | – |")
        echo "$name: stopped after $LIMIT s ($((n - GETS)) GETs served)" >&2
        return 1
    fi
    [ "$rc" = 0 ] || { cat "$WORK/stderr" >&2; exit 1; }
    line=$(grep '^vma: fetched ' "$WORK/stderr")
    # vma: fetched BYTES bytes in REQUESTS requests from ...
    row "$name" "$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')" \
        "$(echo "$line" | cut -d' ' -f6)" "$(echo "$line" | cut -d' ' -f3)"
}

# The floor twice (curl, then fsync of its file: the same work as a restore,
# which fsyncs its disks): the first GET may find the object (or the page cache
# full of the setup's writes) colder than later commands do; the faster of
# the two is the floor every ratio is taken against.
FLOORS=()
for run in 1 2; do
    sync
    t0=$(now)
    curl -sf -H "$AUTH" -o "$WORK/floor.bin" "$URL/bench/a.vma"
    # On disk, as vma extract leaves its disks (it fsyncs them).
    sync "$WORK/floor.bin"
    t1=$(now)
    [ "$(stat -c %s "$WORK/floor.bin")" = "$SIZE" ] || { echo "floor: short GET" >&2; exit 1; }
    rm -f "$WORK/floor.bin"
    FLOORS+=("$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')")
done
FLOOR=$(printf '%s\n' "${FLOORS[@]}" | sort -g | head -1)
row "floor: curl GET of the whole object into a file (run 1)" "${FLOORS[0]}" 1 "$SIZE"
row "floor: curl GET of the whole object into a file (run 2)" "${FLOORS[1]}" 1 "$SIZE"
sync

vma_run "vma extract (all $DISKS disks; stores the index it saw)" "$WORK/all"
for i in $(seq 0 $((DISKS - 1))); do
    cmp "$WORK/all/disk-drive-scsi$i.raw" "$WORK/d$i.raw"
done
rm -rf "$WORK/all"
if [ "$SERVER" = moto ]; then LIMIT=$DTIMEOUT; fi
GETS=$(grep -c '"GET /bench/a.vma' "$WORK/moto.out" || true)
if vma_run "vma extract -d drive-scsi1 (through the index)" "$WORK/one" -d drive-scsi1; then
    cmp "$WORK/one/disk-drive-scsi1.raw" "$WORK/d1.raw"
    vma_run "vma extract -d drive-scsi1 (again)" "$WORK/one" -d drive-scsi1
    cmp "$WORK/one/disk-drive-scsi1.raw" "$WORK/d1.raw"
fi
if [ "$SERVER" = range ]; then
    # The other way to an index: `vma index`, one ranged GET per extent header.
    t0=$(now)
    "$VMA" index --json --rebuild "$ARCHIVE" >"$WORK/index.json"
    t1=$(now)
    row "vma index --rebuild (extent headers by ranged GETs)" \
        "$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')" \
        "$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["requests"])' "$WORK/index.json")" \
        "$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["bytes_fetched"])' "$WORK/index.json")"
fi

echo
echo "Archive: $SIZE bytes, $DISKS disks of $DISK_MIB MiB of random data; server: $SERVER on 127.0.0.1 ($ARCHIVE)."
echo "Machine: $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')), load average at the start: $LOAD0."
echo
echo "| command | wall time | ratio to the floor | requests | bytes fetched |"
echo "|---|---|---|---|---|"
printf '%s\n' "${ROWS[@]}"
echo
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
