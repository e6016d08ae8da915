#!/usr/bin/env bash
# Stand-ins for the official images of the cluster profile, for hosts that reach Debian's package
# archive but no container registry: built from Debian bookworm's packages (Containerfiles in
# stand-ins/) under the official names, so that docker-compose.yml runs unchanged.
#   make-stand-in.sh postgres docker.io/library/postgres:15-bookworm
#   make-stand-in.sh haproxy docker.io/library/haproxy:2.6-bookworm
set -euo pipefail
here=$(dirname "$0")
name=${1:?usage: $0 postgres|haproxy TAG}
tag=${2:?usage: $0 postgres|haproxy TAG}
engine=${ENGINE:-podman}
[[ -d $here/stand-ins/$name ]] || { echo "no stand-in for $name" >&2; exit 2; }
if ! "$engine" image inspect docker.io/library/debian:bookworm-slim >/dev/null 2>&1; then
    "$here/make-base-image.sh" debian >/dev/null
fi
"$engine" build -q --format docker --network host -t "$tag" "$here/stand-ins/$name" >/dev/null
echo "built $tag"
