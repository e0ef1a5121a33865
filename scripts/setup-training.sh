#!/usr/bin/env bash
# Set-up for training with --synthetic: the default set-up (scripts/setup.sh) plus Debian's
# plasma-workspace-wallpapers (about 90 MB of photographs under /usr/share/wallpapers), the one
# photo collection training may use besides the photos scikit-image and matplotlib ship.
# Not part of the default set-up: serving, the demo and the tests never need it.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
if ls /usr/share/wallpapers/*/contents/images >/dev/null 2>&1; then
  echo "setup-training: plasma-workspace-wallpapers already installed"
  exit 0
fi
if ! command -v apt-get >/dev/null; then
  echo "setup-training: apt-get not found; install Debian's plasma-workspace-wallpapers (or train with --data DIR)" >&2
  exit 1
fi
sudo_cmd=""
[ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
echo "setup-training: installing plasma-workspace-wallpapers"
$sudo_cmd apt-get install -y --no-install-recommends plasma-workspace-wallpapers
