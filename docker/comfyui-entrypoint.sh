#!/bin/sh
# Starts ComfyUI in the background, waits until it answers, then runs `aihost "$@"`; when
# either process ends, the other is stopped and the container exits with its status.
set -eu
data=/var/lib/aihost/comfyui
mkdir -p "$data/models" "$data/input" "$data/output"
cpu=""
[ "${COMFYUI_TORCH:-cpu}" = "cpu" ] && cpu="--cpu"
/opt/comfyui/venv/bin/python /opt/comfyui/main.py --listen 127.0.0.1 --port 8188 $cpu \
  --base-directory "$data" &
comfy=$!
i=0
until python3 -c 'import urllib.request; urllib.request.urlopen("http://127.0.0.1:8188/system_stats", timeout=2)' 2>/dev/null; do
  kill -0 "$comfy" 2>/dev/null || { echo "ComfyUI exited during start-up" >&2; exit 1; }
  i=$((i + 1))
  [ "$i" -gt 300 ] && { echo "ComfyUI did not answer within 300 s" >&2; kill "$comfy"; exit 1; }
  sleep 1
done
aihost "$@" &
host=$!
trap 'kill -TERM "$host" "$comfy" 2>/dev/null' TERM INT
# Whichever ends first ends the container.
while kill -0 "$host" 2>/dev/null && kill -0 "$comfy" 2>/dev/null; do sleep 1; done
kill -TERM "$host" "$comfy" 2>/dev/null || true
wait "$host" 2>/dev/null
