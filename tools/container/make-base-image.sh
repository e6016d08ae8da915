#!/usr/bin/env bash
# Stand-ins for official base images, for hosts that reach Debian's package archive but no
# container registry, imported under the official names so that the real Dockerfiles build
# unchanged:
#   make-base-image.sh [python]  python:3.11-slim-bookworm: a minimal Debian bookworm with
#                                Python 3.11 and pip, `python` and `pip` on PATH as upstream
#   make-base-image.sh debian    debian:bookworm-slim: a minimal Debian bookworm (the base of the
#                                postgres and haproxy stand-ins of make-stand-in.sh)
set -euo pipefail
kind=${1:-python}
engine=${ENGINE:-podman}
case $kind in
    python) tag=docker.io/library/python:3.11-slim-bookworm; cmd=python3
            include=--include=python3,python3-pip,python3-venv,ca-certificates ;;
    debian) tag=docker.io/library/debian:bookworm-slim; cmd=bash; include= ;;
    *) echo "usage: $0 [python|debian]" >&2; exit 2 ;;
esac
# The host's own Debian mirror (deb822 or one-line sources).
mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
mirror=${mirror:-$(awk '/^deb / {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)}
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
debootstrap --variant=minbase $include bookworm "$root" ${mirror:+"$mirror"} >/dev/null
if [[ $kind == python ]]; then
    rm -f "$root"/usr/lib/python3*/EXTERNALLY-MANAGED   # pip may install system-wide, as upstream
    ln -sf python3 "$root/usr/bin/python"
    ln -sf pip3 "$root/usr/bin/pip"
fi
# As in the official Debian images: packages installed in a build never start their services.
printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
chmod 755 "$root/usr/sbin/policy-rc.d"
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
tar -C "$root" -c . | "$engine" import --change 'ENV LANG=C.UTF-8' --change "CMD [\"$cmd\"]" - "$tag"
echo "imported $tag"
