#!/usr/bin/env bash
# Builds the aihost image from docker/Dockerfile with podman and checks it as a user would:
# the README's imageops example against `serve`, the image's HEALTHCHECK, `api` + `consumer`
# against the machine's PostgreSQL, `compose.yaml` accepted by podman-compose, and the image
# size (printed). Skips, saying so, where podman cannot run.
#
# No registry is reachable here: the Debian base image is made with debootstrap (cached under
# $AIHOST_CI_DIR) and the binaries come from `cargo build --profile dist` on this machine
# (ARTIFACTS=prebuilt; the runtime stage is the one users build).
set -euo pipefail
cd "$(dirname "$0")/.."

ci_dir="${AIHOST_CI_DIR:-/opt/aihost-ci}"
image=ai-task-service-test
base=docker.io/library/debian:bookworm-slim
pg_admin="${AIHOST_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/postgres}"

if ! command -v podman >/dev/null; then
  echo "docker/test.sh: skipped: podman is not installed (apt-get install podman runc)" >&2
  exit 0
fi
# podman in a container-less VM: no ulimits it cannot set.
conf="$(mktemp)"
printf '[containers]\ndefault_ulimits = []\n' >"$conf"
export CONTAINERS_CONF="$conf"
podman_run() { podman --runtime runc run "$@"; }
if ! podman info >/dev/null 2>&1; then
  echo "docker/test.sh: skipped: podman cannot run here ($(podman info 2>&1 | tail -1))" >&2
  exit 0
fi

log() { echo "docker/test.sh: $*" >&2; }
names=()
db=""
cleanup() {
  for n in "${names[@]}"; do podman rm -f "$n" >/dev/null 2>&1 || true; done
  if [ -n "$db" ]; then
    psql "$pg_admin" -q -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true
  fi
  podman image prune -f >/dev/null 2>&1 || true
  rm -f "$conf"
  [ -n "${work:-}" ] && rm -rf "$work"
}
trap cleanup EXIT
work="$(mktemp -d)"
free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
wait_health() { # URL
  for _ in $(seq 100); do
    curl -fs "$1/api/health" >/dev/null 2>&1 && return 0
    sleep 0.3
  done
  log "no answer from $1"; return 1
}

# 1. The base image, once.
if ! podman image exists "$base"; then
  if [ ! -x "$ci_dir/rootfs-bookworm/bin/sh" ]; then
    log "making the Debian base image with debootstrap"
    debootstrap --variant=minbase bookworm "$ci_dir/rootfs-bookworm" http://deb.debian.org/debian >/dev/null
    # What debian:bookworm-slim leaves out too: package caches and lists, docs, man pages, locales.
    r="$ci_dir/rootfs-bookworm"
    rm -rf "$r"/var/cache/apt/*.bin "$r"/var/cache/apt/archives/*.deb "$r"/var/lib/apt/lists/* \
      "$r"/usr/share/doc/* "$r"/usr/share/man/* "$r"/usr/share/locale/*
  fi
  tar -C "$ci_dir/rootfs-bookworm" -c . | podman import - "$base" >/dev/null
fi

# 2. The binaries the image ships, and the image.
cargo build --locked --profile dist -p aihost -p aihost-imageops -p aihost-comfyui -p aihost-facefusion
# The build context holds them under target/dist/ (see .dockerignore) wherever cargo built them.
built="${CARGO_TARGET_DIR:-target}/dist"
if [ "$(realpath -m "$built")" != "$(realpath -m target/dist)" ]; then
  mkdir -p target/dist
  cp "$built"/aihost "$built"/libaihost_imageops.so "$built"/libaihost_comfyui.so \
    "$built"/libaihost_facefusion.so target/dist/
fi
podman build --isolation=chroot --format docker --build-arg ARTIFACTS=prebuilt \
  -f docker/Dockerfile -t "$image" . >"$work/build.log" 2>&1 || { cat "$work/build.log"; exit 1; }
size=$(podman image inspect "$image" --format '{{.Size}}')
base_size=$(podman image inspect "$base" --format '{{.Size}}')
log "image size: $((size / 1000000)) MB (base $((base_size / 1000000)) MB)"

# 3. `serve` (the default command) and the README's imageops example.
port=$(free_port)
name="aihost-test-serve-$$"
names+=("$name")
podman_run -d --name "$name" --network=host \
  -e AIHOST_SERVER__BIND="127.0.0.1:$port" -e AIHOST_SERVER__PUBLIC_URL="http://127.0.0.1:$port" \
  "$image" >/dev/null
url="http://127.0.0.1:$port"
wait_health "$url" || { podman logs "$name"; exit 1; }
python3 -c "import zlib,struct;w=h=64;raw=b''.join(b'\0'+b''.join(bytes((x*4%256,y*4%256,128)) for x in range(w)) for y in range(h));c=lambda t,d:struct.pack('>I',len(d))+t+d+struct.pack('>I',zlib.crc32(t+d));open('$work/in.png','wb').write(b'\x89PNG\r\n\x1a\n'+c(b'IHDR',struct.pack('>IIBBBBB',w,h,8,2,0,0,0))+c(b'IDAT',zlib.compress(raw))+c(b'IEND',b''))"
imageops() { # BASE_URL → prints the finished task's first output URL
  local key
  key=$(curl -fs -F "file=@$work/in.png" "$1/api/uploads" | python3 -c 'import json,sys;print(json.load(sys.stdin)["key"])')
  curl -fs -X POST "$1/api/tasks?wait=30" -H 'content-type: application/json' \
    -d "{\"type\":\"imageops.transform\",\"input\":{\"source\":\"$key\",\"operations\":[{\"op\":\"resize\",\"width\":32},{\"op\":\"grayscale\"}],\"format\":\"png\"}}" \
    >"$work/task.json"
  python3 - "$work/task.json" <<'PY'
import json, sys
t = json.load(open(sys.argv[1]))
assert t["status"] == "COMPLETED", t
print(t["result"]["outputs"][0]["url"])
PY
}
out_url=$(imageops "$url")
curl -fs -o "$work/out.png" "$out_url"
python3 - "$work/out.png" <<'PY'
import struct, sys
b = open(sys.argv[1], "rb").read()
assert b[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
w, h = struct.unpack(">II", b[16:24])
assert (w, h) == (32, 32), (w, h)
PY
log "serve: the README's imageops example works"

# 4. The HEALTHCHECK, as the engine runs it; the process runs as the non-root user.
podman healthcheck run "$name" >/dev/null || { log "HEALTHCHECK failed"; exit 1; }
[ "$(podman exec "$name" id -u)" = "10001" ] || { log "not running as uid 10001"; exit 1; }
log "HEALTHCHECK passes; runs as uid 10001"
podman rm -f "$name" >/dev/null

# 5. `api` + `consumer` on the machine's PostgreSQL, sharing one outputs folder.
if command -v psql >/dev/null && psql "$pg_admin" -qtAc 'SELECT 1' >/dev/null 2>&1; then
  db="aihost_container_$$"
  psql "$pg_admin" -q -c "CREATE DATABASE $db" >/dev/null
  pg_url="${pg_admin%/*}/$db"
  mkdir -m 0777 "$work/outputs"
  port=$(free_port)
  url="http://127.0.0.1:$port"
  common=(--network=host -v "$work/outputs:/var/lib/aihost/outputs"
    -e AIHOST_QUEUE__TYPE=postgres -e AIHOST_QUEUE__URL="$pg_url"
    -e AIHOST_SERVER__BIND="127.0.0.1:$port" -e AIHOST_SERVER__PUBLIC_URL="$url")
  names+=("aihost-test-api-$$" "aihost-test-consumer-$$")
  podman_run -d --name "aihost-test-api-$$" "${common[@]}" "$image" api >/dev/null
  podman_run -d --name "aihost-test-consumer-$$" "${common[@]}" "$image" consumer >/dev/null
  wait_health "$url" || { podman logs "aihost-test-api-$$"; exit 1; }
  out_url=$(imageops "$url") || { podman logs "aihost-test-consumer-$$"; exit 1; }
  curl -fs -o /dev/null "$out_url"
  curl -fs "$url/api/status" | python3 -c 'import json,sys;s=json.load(sys.stdin);assert len(s["consumers"])==1,s'
  log "api + consumer on PostgreSQL: the task ran in the consumer"
else
  log "api + consumer: skipped: no PostgreSQL at $pg_admin"
fi

# 6. compose.yaml is valid.
compose="$ci_dir/podman-compose/bin/podman-compose"
if [ ! -x "$compose" ]; then
  python3 -m venv "$ci_dir/podman-compose"
  "$ci_dir/podman-compose/bin/pip" install --quiet podman-compose==1.5.0
fi
"$compose" -f compose.yaml config >/dev/null
log "compose.yaml: accepted by podman-compose config"
log "all checks passed"
