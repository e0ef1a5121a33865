#!/usr/bin/env bash
# Make a local base image for building Dockerfile.cpu with podman where no container registry is
# reachable (the test machines): Debian bookworm with Python 3.11 and libpython3.11, the same Debian
# and Python minor version as python:3.11-slim-bookworm, bootstrapped from Debian's package archive.
# Idempotent: does nothing when the image exists. Needs root, podman and debootstrap.
#   deploy/docker/podman-test-base.sh [IMAGE]      (default localhost/compositor-test-base:bookworm)
set -euo pipefail

image=${1:-localhost/compositor-test-base:bookworm}
if podman image exists "$image"; then
  exit 0
fi
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
# debootstrap resolves dependencies shallowly: python3.11-venv's are listed by hand.
debootstrap --variant=minbase \
  --include=python3,python3.11-venv,python3-distutils,python3-lib2to3,python3-pip-whl,python3-setuptools-whl,libpython3.11,ca-certificates \
  bookworm "$root/rootfs" >"$root/debootstrap.log" 2>&1 || { tail -n 20 "$root/debootstrap.log" >&2; exit 1; }
tar -C "$root/rootfs" -c . | podman import --quiet - "$image" >/dev/null
echo "$image"
