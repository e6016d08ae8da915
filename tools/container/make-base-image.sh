#!/usr/bin/env bash
# A stand-in for the official python:3.11-slim-bookworm image, for hosts that reach Debian's
# package archive but no container registry: a minimal Debian bookworm with Python 3.11 and pip,
# `python` and `pip` on PATH as in the official image, imported under the Dockerfile's FROM name
# so that the real Dockerfile builds unchanged.
set -euo pipefail
tag=${1:-docker.io/library/python:3.11-slim-bookworm}
engine=${ENGINE:-podman}
# The host's own Debian mirror (deb822 or one-line sources).
mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
mirror=${mirror:-$(awk '/^deb / {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)}
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
debootstrap --variant=minbase --include=python3,python3-pip,python3-venv,ca-certificates \
    bookworm "$root" ${mirror:+"$mirror"} >/dev/null
rm -f "$root"/usr/lib/python3*/EXTERNALLY-MANAGED   # pip may install system-wide, as upstream
ln -sf python3 "$root/usr/bin/python"
ln -sf pip3 "$root/usr/bin/pip"
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
tar -C "$root" -c . | "$engine" import --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' - "$tag"
echo "imported $tag"
