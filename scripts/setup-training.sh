#!/usr/bin/env bash
# Set-up for training with --synthetic: the default set-up (scripts/setup.sh) plus the photo
# collections training may use besides the photos scikit-image and matplotlib ship:
# scikit-learn's two sample photos (pip, into .venv) and Debian's plasma-workspace-wallpapers,
# ukui-wallpapers, lomiri-wallpapers, gnome-backgrounds and sway-backgrounds (apt, about 300 MB
# under /usr/share/wallpapers and /usr/share/backgrounds).
# Not part of the default set-up: serving, the demo and the tests never need them.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
if ! .venv/bin/python -c "import sklearn" 2>/dev/null; then
  echo "setup-training: installing scikit-learn (its sample photos)"
  .venv/bin/python -m pip install --quiet --disable-pip-version-check "scikit-learn<1.8" "numpy<2"
fi
packages=(plasma-workspace-wallpapers ukui-wallpapers lomiri-wallpapers gnome-backgrounds sway-backgrounds)
missing=()
for package in "${packages[@]}"; do
  dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "setup-training: ${packages[*]} already installed"
  exit 0
fi
if ! command -v apt-get >/dev/null; then
  echo "setup-training: apt-get not found; install Debian's ${missing[*]} (or train with --data DIR)" >&2
  exit 1
fi
sudo_cmd=""
[ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
echo "setup-training: installing ${missing[*]}"
$sudo_cmd apt-get install -y --no-install-recommends "${missing[@]}"
