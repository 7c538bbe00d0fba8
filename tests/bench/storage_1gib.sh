#!/usr/bin/env bash
# Storage benchmark: uploads a 1 GiB file through `POST /api/uploads`, downloads it again
# through `GET /files/{key}`, checks the bytes, and prints the host's peak resident memory
# (VmHWM from /proc/PID/status) and the transfer times.
#
# Usage: tests/bench/storage_1gib.sh [fs|s3]
#   fs: the default local-folder backend.
#   s3: s3s-fs (installed by .ci/run under /opt/aihost-ci/bin, or on PATH) as the S3 backend.
# Needs `cargo build -p aihost` first (AIHOST_BIN overrides the binary; SIZE_MIB the size).
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN="$(realpath "${AIHOST_BIN:-target/debug/aihost}")"
BACKEND="${1:-fs}"
SIZE_MIB="${SIZE_MIB:-1024}"
export PATH="${AIHOST_CI_DIR:-/opt/aihost-ci}/bin:$PATH"

W="$(mktemp -d)"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  rm -rf "$W"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 200); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; return 1; }

PORT="$(free_port)"
printf '[server]\nbind = "127.0.0.1:%s"\nmax_upload_bytes = %s\n' "$PORT" $((SIZE_MIB * 2 * 1024 * 1024)) > "$W/aihost.toml"
: > "$W/plugins.toml"

ENV=()
if [ "$BACKEND" = s3 ]; then
  command -v s3s-fs >/dev/null || { echo "s3s-fs is not installed (run .ci/run)" >&2; exit 1; }
  S3PORT="$(free_port)"
  mkdir -p "$W/s3/bench"
  s3s-fs --host 127.0.0.1 --port "$S3PORT" --access-key AKBENCH --secret-key SKBENCH "$W/s3" >"$W/s3s.log" 2>&1 &
  PIDS+=($!)
  wait_port "$S3PORT"
  ENV=(AIHOST_STORAGE__TYPE=s3 AIHOST_STORAGE__BUCKET=bench
       AIHOST_STORAGE__ENDPOINT="http://127.0.0.1:$S3PORT"
       AIHOST_STORAGE__ACCESS_KEY_ID=AKBENCH AIHOST_STORAGE__SECRET_ACCESS_KEY=SKBENCH)
fi

echo "generating ${SIZE_MIB} MiB of random data..."
head -c $((SIZE_MIB * 1024 * 1024)) /dev/urandom > "$W/big.bin"
SUM_IN="$(sha256sum < "$W/big.bin" | cut -d' ' -f1)"

(cd "$W" && exec env "${ENV[@]}" LOG_LEVEL=warn "$BIN" --config "$W/aihost.toml" serve) 2>"$W/aihost.log" &
HOST=$!
PIDS+=("$HOST")
wait_port "$PORT"
rss() { awk '/VmRSS/ {print $2}' "/proc/$HOST/status"; }
echo "host RSS after start: $(( $(rss) / 1024 )) MiB"

T0=$(date +%s.%N)
curl -sf -F "file=@$W/big.bin;type=application/octet-stream" "http://127.0.0.1:$PORT/api/uploads" > "$W/up.json"
T1=$(date +%s.%N)
KEY="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["key"])' "$W/up.json")"
SUM_OUT="$(curl -sf "http://127.0.0.1:$PORT/files/$KEY" | sha256sum | cut -d' ' -f1)"
T2=$(date +%s.%N)
[ "$SUM_IN" = "$SUM_OUT" ] || { echo "downloaded bytes differ" >&2; exit 1; }

HWM=$(awk '/VmHWM/ {print $2}' "/proc/$HOST/status")
echo "backend: $BACKEND, size: ${SIZE_MIB} MiB, bytes identical"
echo "upload:   $(python3 -c "print(f'{$T1-$T0:.1f} s, {$SIZE_MIB/($T1-$T0):.0f} MiB/s')")"
echo "download: $(python3 -c "print(f'{$T2-$T1:.1f} s, {$SIZE_MIB/($T2-$T1):.0f} MiB/s')")"
echo "host peak RSS (VmHWM): $((HWM / 1024)) MiB"
