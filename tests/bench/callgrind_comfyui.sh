#!/usr/bin/env bash
# Instructions per task on the ComfyUI path, counted by callgrind (repeatable on a shared
# machine, unlike times): the release `aihost` with the real comfyui plugin, under
# `valgrind --tool=callgrind`, against the suite's fake ComfyUI (its own process, not counted).
#
# Counting is switched on only around two windows of equal length: an idle one (the service's
# timers alone) and one where N tasks run one after another (`POST /api/tasks?wait`, the same
# 512×512 `solid_color` template as the bench). Instructions per task = (tasks window − idle
# window) / N, user space only (the kernel's share is not counted).
#
# Usage: tests/bench/callgrind_comfyui.sh [N]   (after `cargo build --release --workspace`;
# TARGET=folder of the release build, default target/release; CG_KEEP=folder keeps the dumps)
set -euo pipefail
cd "$(dirname "$0")/../.."
N="${1:-100}"
TARGET="${TARGET:-target/release}"
command -v valgrind >/dev/null || { echo "needs valgrind" >&2; exit 2; }
dir="$(mktemp -d)"
# On exit: stop the service under valgrind and the fake (the subshell execs valgrind, so
# its job is valgrind itself), then remove the folder.
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$dir"' EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
fport="$(free_port)"; port="$(free_port)"
mkdir -p "$dir/fake"
"$TARGET/fake-comfyui" --port "$fport" --dir "$dir/fake" >/dev/null 2>&1 &
cat > "$dir/aihost.toml" <<EOF
[server]
bind = "127.0.0.1:$port"
[log]
level = "warn"
EOF
cat > "$dir/plugins.toml" <<EOF
[[plugin]]
name = "comfyui"
library = "$(realpath "$TARGET/libaihost_comfyui.so")"
[plugin.config]
urls = ["http://127.0.0.1:$fport"]
workflows_dir = "$(realpath workflows)"
queue_depth = 2
EOF
aihost="$(realpath "$TARGET/aihost")"
(cd "$dir" && exec valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$dir/cg.out" \
  "$aihost" --config "$dir/aihost.toml" serve >"$dir/valgrind.log" 2>&1) &
until curl -fs "http://127.0.0.1:$port/api/health" >/dev/null; do sleep 0.5; done
task() {
  curl -fs -H 'content-type: application/json' "http://127.0.0.1:$port/api/tasks?wait=120" \
    -d "{\"type\":\"comfyui.workflow\",\"input\":{\"workflow\":\"solid_color\",\"params\":{\"width\":512,\"height\":512,\"color\":$1}}}" \
    | grep -q '"COMPLETED"' || { echo "task $1 did not complete" >&2; exit 1; }
}
# Warm up (connections, first-use allocations, statement caches).
for i in $(seq 1 10); do task "$i"; done
pid="$(pgrep -f "callgrind-out-file=$dir/cg.out" | head -1)"
callgrind_control -z "$pid" >/dev/null
start=$(date +%s.%N)
callgrind_control -i on "$pid" >/dev/null
for i in $(seq 1 "$N"); do task $((1000 + i)); done
callgrind_control -i off "$pid" >/dev/null
secs=$(python3 -c "print(round($(date +%s.%N) - $start, 1))")
callgrind_control -d "$pid" >/dev/null
sleep 1
last_total() { grep -h '^totals:' $(ls -v "$dir"/cg.out*) | tail -1 | awk '{print $2}'; }
tasks_ir=$(last_total)
callgrind_control -z "$pid" >/dev/null
callgrind_control -i on "$pid" >/dev/null
sleep "$secs"
callgrind_control -i off "$pid" >/dev/null
callgrind_control -d "$pid" >/dev/null
sleep 1
idle_ir=$(last_total)
echo "tasks window: $N tasks in ${secs} s under valgrind: $tasks_ir instructions"
echo "idle window of the same length: $idle_ir instructions"
echo "per task: $(( (tasks_ir - idle_ir) / N )) instructions"
# CG_KEEP=folder keeps the two dumps for callgrind_annotate (the tasks window is the first).
if [ -n "${CG_KEEP:-}" ]; then mkdir -p "$CG_KEEP" && cp "$dir"/cg.out* "$CG_KEEP"/; fi
