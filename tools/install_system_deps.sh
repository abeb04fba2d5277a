#!/usr/bin/env bash
# Install the Debian libraries that headless napari (Qt 6 + OpenGL under Xvfb) needs.
# Runs only as root and only when something is missing; otherwise it prints what to install.
set -euo pipefail
# Debian/Ubuntu only: elsewhere (macOS, other Linux) napari brings what it needs, and there is no dpkg to ask
if [ "$(uname -s)" != Linux ] || ! command -v dpkg-query >/dev/null 2>&1; then
  exit 0
fi
pkgs=(xvfb xauth libxcb-cursor0 libxkbcommon-x11-0 libxkbcommon0 libegl1 libgl1 libopengl0 libglx-mesa0
      libgl1-mesa-dri libdbus-1-3 libxcb-icccm4 libxcb-image0 libxcb-keysyms1 libxcb-randr0
      libxcb-render-util0 libxcb-shape0 libxcb-xinerama0 libxcb-xfixes0 libxcb-xkb1 libxcb-glx0
      libfontconfig1 libxrender1 libxi6 libglib2.0-0)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "napari-linblur: headless napari needs these Debian packages: ${missing[*]}" >&2
  echo "  install them with: sudo apt-get install -y ${missing[*]}" >&2
  exit 0
fi
echo "Installing system libraries for headless napari: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
# Wait for another apt/dpkg (a second `make` started beside this one) instead of failing on its lock.
lock=(-o DPkg::Lock::Timeout=600)
apt-get "${lock[@]}" update -qq
apt-get "${lock[@]}" install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
