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
      libfontconfig1 libxrender1 libxi6 "libglib2.0-0t64|libglib2.0-0")
# `python3 -m venv` needs ensurepip, which Debian ships apart (python3-venv)
"${PYTHON:-python3}" -c 'import ensurepip' >/dev/null 2>&1 || pkgs+=(python3-venv)
installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "ok installed"; }
missing=()
for entry in "${pkgs[@]}"; do
  # "new|old": a package renamed between releases (Debian 13 / Ubuntu 24.04 added the t64 suffix); either will do
  IFS='|' read -r -a names <<< "$entry"
  found=0
  for p in "${names[@]}"; do installed "$p" && found=1 && break; done
  [ $found -eq 1 ] && continue
  pick="${names[-1]}"
  for p in "${names[@]}"; do
    if apt-cache show "$p" >/dev/null 2>&1; then pick="$p"; break; fi
  done
  missing+=("$pick")
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
