#!/usr/bin/env bash
# The container, for real: lint, validate, build, bring the compose stack up, wait for healthy,
# exercise /embed and /search through the published port, restart and show a reference survived
# on the named volume, tear down. Prints each step's duration, the image size and start-up time.
#
# Uses Docker when a Docker engine answers, else podman + podman-compose (with the settings in
# containers.conf beside this script and, when no registry is reachable, a stand-in base image
# from make-base-image.sh).
set -euo pipefail
cd "$(dirname "$0")/../.."
here=tools/container
bin=.venv/bin
port=${HSN_CHECK_PORT:-18000}
project=hsncheck
export HSN_PUBLISHED_PORT=$port

step_start=0
step() { step_start=$(date +%s.%N); printf '%-58s' "$1"; }
done_() { printf '%6.1f s  %s\n' "$(echo "$(date +%s.%N) - $step_start" | bc)" "${1:-}"; }

if docker info >/dev/null 2>&1; then
    engine=docker; compose=(docker compose -p "$project")
else
    engine=podman; compose=("$bin/podman-compose" -p "$project")
    export CONTAINERS_CONF=${CONTAINERS_CONF:-$PWD/$here/containers.conf}
fi
echo "engine: $engine"

step "lint the Dockerfile (hadolint)"
"$bin/hadolint" Dockerfile; done_
step "validate docker-compose.yml (compose config -q)"
"$(ls .venv/lib/python3*/site-packages/compose/docker-compose)" -f docker-compose.yml config -q
done_

build_args=()
if [[ $engine == podman ]]; then
    if ! podman image exists docker.io/library/python:3.11-slim-bookworm; then
        step "stand-in base image (debootstrap bookworm + podman import)"
        "$here/make-base-image.sh" >/dev/null; done_
    fi
    # pip's own settings on this host: a local wheel folder (torch's CPU build) and CA bundle.
    wheels=$("$bin/pip" config list 2>/dev/null | sed -n "s/.*find-links='\(.*\)'/\1/p" | head -1)
    cert=$("$bin/pip" config list 2>/dev/null | sed -n "s/.*[.]cert='\(.*\)'/\1/p" | head -1)
    build_args+=(--format docker --network host)
    [[ -n $wheels ]] && build_args+=(-v "$wheels:/wheels:ro" --build-arg TORCH_WHEELS=/wheels)
    [[ -n $cert ]] && build_args+=(--secret "id=pip_cert,src=$cert")
fi
step "build the image (hsn:latest)"
$engine build -q "${build_args[@]}" -t hsn:latest . >/tmp/hsn-docker-build.log 2>&1 \
    || { tail -30 /tmp/hsn-docker-build.log; exit 1; }
size=$($engine image inspect hsn:latest --format '{{.Size}}')
done_ "$((size / 1024 / 1024)) MiB"

cleanup() { "${compose[@]}" down -v >/dev/null 2>&1 || true; }
trap cleanup EXIT
cleanup

wait_healthy() {
    for _ in $(seq 1 180); do
        if curl -sf "http://127.0.0.1:$port/ready" >/dev/null; then return 0; fi
        sleep 1
    done
    echo "not healthy in time"; "${compose[@]}" logs | tail -20; return 1
}
step "compose up, until /ready answers"
"${compose[@]}" up -d >/dev/null 2>&1; wait_healthy; done_
container=$($engine ps --filter "name=$project" --format '{{.Names}}' | head -1)
step "healthcheck reports healthy"
for _ in $(seq 1 60); do
    # podman without systemd has no timer to run the HEALTHCHECK: run it the way the timer would.
    [[ $engine == podman ]] && podman healthcheck run "$container" >/dev/null 2>&1 || true
    state=$($engine inspect "$container" --format '{{.State.Health.Status}}' 2>/dev/null || true)
    [[ $state == healthy ]] && break; sleep 1
done
[[ $state == healthy ]] || { echo "health: $state"; exit 1; }
done_ "$state"

signal=$(python3 -c 'import json, math; print(json.dumps([math.exp(-((i - 100) / 6) ** 2) for i in range(256)]))')
step "POST /embed through the published port"
curl -sf "http://127.0.0.1:$port/embed" -H 'content-type: application/json' \
    -d "{\"signals\": [$signal]}" | python3 -c 'import json,sys; d=json.load(sys.stdin); assert len(d["embeddings"][0]) == d["dim"]'
done_
step "POST /references, then /search finds it"
curl -sf "http://127.0.0.1:$port/references" -H 'content-type: application/json' \
    -d "{\"references\": [{\"id\": \"check-1\", \"element_id\": \"e1\", \"session_id\": \"s1\", \"signal\": $signal}]}" >/dev/null
curl -sf "http://127.0.0.1:$port/search" -H 'content-type: application/json' \
    -d "{\"signals\": [$signal], \"k\": 1}" | python3 -c 'import json,sys; d=json.load(sys.stdin); assert d["results"][0]["neighbors"][0]["id"] == "check-1"'
done_
step "the container cannot write outside /data"
$engine exec "$container" sh -c 'touch /opt/hsn/models/default/x 2>/dev/null || touch /x 2>/dev/null' \
    && { echo "wrote outside /data"; exit 1; }
[[ $($engine exec "$container" id -u) != 0 ]] || { echo "runs as root"; exit 1; }
done_ "read-only, uid $($engine exec "$container" id -u)"
step "compose down (volume kept), up again"
"${compose[@]}" down >/dev/null 2>&1
started=$(date +%s.%N)
"${compose[@]}" up -d >/dev/null 2>&1; wait_healthy
startup=$(echo "$(date +%s.%N) - $started" | bc)
done_ "start-up to ready: $(printf '%.1f' "$startup") s"
step "the reference survived on the named volume"
curl -sf "http://127.0.0.1:$port/references/check-1" >/dev/null; done_
step "tear down"
cleanup; trap - EXIT; done_
echo "docker-check passed"
