#!/usr/bin/env bash
# FaceFusion benchmark: a 1 GiB target video through the whole path — upload, a face swap in
# the seed's form (`POST /api/faceswap/create`) run by the real facefusion plugin against the
# stand-in tests/standins/facefusion.py (which copies the target to the output), the output
# stored, then downloaded and compared — with the host's peak resident memory (VmHWM).
#
# Usage: tests/bench/facefusion_1gib.sh
# Needs `cargo build -p aihost -p aihost-facefusion` first, plus python3, ffmpeg and ffprobe
# (AIHOST_BIN and FACEFUSION_LIB override the binaries; SIZE_MIB the video size).
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN="${AIHOST_BIN:-target/debug/aihost}"
LIB="${FACEFUSION_LIB:-target/debug/libaihost_facefusion.so}"
SIZE_MIB="${SIZE_MIB:-1024}"

W="$(mktemp -d)"
HOST=""
cleanup() {
  if [ -n "$HOST" ]; then kill "$HOST" 2>/dev/null || true; wait "$HOST" 2>/dev/null || true; fi
  rm -rf "$W"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 200); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; return 1; }

# A FaceFusion checkout made of the stand-in.
mkdir -p "$W/ff/facefusion/processors/modules/face_swapper"
cp tests/standins/facefusion.py "$W/ff/facefusion.py"

PORT="$(free_port)"
printf '[server]\nbind = "127.0.0.1:%s"\nmax_upload_bytes = %s\n' "$PORT" $((SIZE_MIB * 2 * 1024 * 1024)) > "$W/aihost.toml"
printf '[[plugin]]\nname = "facefusion"\nlibrary = "%s"\n\n[plugin.config]\ntimeout_secs = 1800\n' "$PWD/$LIB" > "$W/plugins.toml"

# 1080p raw video (yuv420p: 3110400 bytes a frame) in Matroska, just over SIZE_MIB.
FRAMES=$(( SIZE_MIB * 1024 * 1024 / 3110400 + 1 ))
echo "generating a ${FRAMES}-frame 1920x1080 raw video..."
ffmpeg -v error -y -f lavfi -i "testsrc2=size=1920x1080:rate=25" -frames:v "$FRAMES" \
  -c:v rawvideo -pix_fmt yuv420p "$W/target.mkv"
ffmpeg -v error -y -f lavfi -i "testsrc=size=256x256" -frames:v 1 "$W/face.png"
BYTES=$(stat -c %s "$W/target.mkv")
SUM_IN="$(sha256sum < "$W/target.mkv" | cut -d' ' -f1)"

(cd "$W" && exec env LOG_LEVEL=warn FACEFUSION_DIR="$W/ff" FACEFUSION_PYTHON=python3 \
  "$OLDPWD/$BIN" --config "$W/aihost.toml" serve) 2>"$W/aihost.log" &
HOST=$!
wait_port "$PORT"
rss() { awk '/VmRSS/ {print $2}' "/proc/$HOST/status"; }
echo "host RSS after start: $(( $(rss) / 1024 )) MiB"

url="http://127.0.0.1:$PORT"
T0=$(date +%s.%N)
SRC="$(curl -sf -F "file=@$W/face.png;type=image/png" "$url/api/uploads" | python3 -c 'import json,sys; print(json.load(sys.stdin)["key"])')"
TGT="$(curl -sf -F "file=@$W/target.mkv;type=video/x-matroska" "$url/api/uploads" | python3 -c 'import json,sys; print(json.load(sys.stdin)["key"])')"
T1=$(date +%s.%N)
curl -sf -X POST "$url/api/faceswap/create?wait=600" -H 'content-type: application/json' \
  -d "{\"source_url\":\"$SRC\",\"target_url\":\"$TGT\",\"resolution\":\"1920x1080\",\"media_type\":\"video\"}" > "$W/task.json"
T2=$(date +%s.%N)
STATUS="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["status"])' "$W/task.json")"
[ "$STATUS" = COMPLETED ] || { echo "task not completed:"; cat "$W/task.json"; tail -20 "$W/aihost.log"; exit 1; } >&2
OUT="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["result"]["outputs"][0]["url"])' "$W/task.json")"
SUM_OUT="$(curl -sf "$OUT" | sha256sum | cut -d' ' -f1)"
T3=$(date +%s.%N)
[ "$SUM_IN" = "$SUM_OUT" ] || { echo "the output differs from the target (the stand-in copies it)" >&2; exit 1; }

HWM=$(awk '/VmHWM/ {print $2}' "/proc/$HOST/status")
echo "target: $BYTES bytes ($FRAMES frames), output stored and downloaded, bytes identical"
echo "uploads:            $(python3 -c "print(f'{$T1-$T0:.1f} s')")"
echo "face swap (fetch from storage + stand-in run + store output): $(python3 -c "print(f'{$T2-$T1:.1f} s')")"
echo "download:           $(python3 -c "print(f'{$T3-$T2:.1f} s')")"
echo "host peak RSS (VmHWM): $((HWM / 1024)) MiB"
