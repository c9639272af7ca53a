#!/usr/bin/env bash
# Installs what building and testing gst-gpen needs, on Debian 12 / Ubuntu 22.04+ and later, on
# a machine with nothing preinstalled: a C/C++ compiler, GStreamer development files and plugins
# (with the analytics library where GStreamer is 1.24 or later), meson, a Rust toolchain at least
# Cargo.toml's rust-version, and libtorch 2.11.0 (PyPI torch==2.11.0) in the git-ignored virtual
# environment .venv, with ray for scripts/restore-on-ray.py. Safe to run again: it only does what
# is missing. `--system`: the packages and Rust only (scripts/debian13-root.sh, which brings
# the host's libtorch).
set -euo pipefail
cd "$(dirname "$0")/.."
system_only=false
[ "${1:-}" = --system ] && system_only=true

TORCH_VERSION=2.11.0
APT_PACKAGES=(
  gcc g++ binutils curl ca-certificates pkg-config python3-venv
  libgstreamer1.0-dev libgstreamer-plugins-base1.0-dev
  gstreamer1.0-tools gstreamer1.0-plugins-base gstreamer1.0-plugins-good
  gstreamer1.0-plugins-bad gstreamer1.0-plugins-ugly gstreamer1.0-libav
  meson ninja-build python3-gi gir1.2-gstreamer-1.0 libturbojpeg0-dev
)

# GStreamer's analytics library (1.24 and later) is in the bad plugins' development package;
# on 1.22 that package has none and pulls in OpenCV's, so it is taken only where it is newer.
bad_dev=libgstreamer-plugins-bad1.0-dev
bad_version() { apt-cache policy "$bad_dev" 2>/dev/null | sed -nE 's/^ *Candidate: *([0-9]+:)?([0-9.]+).*/\2/p'; }
if [ -z "$(bad_version)" ] && [ "$(id -u)" = 0 ] && ! dpkg-query -W "$bad_dev" >/dev/null 2>&1; then
  apt-get update -q >/dev/null   # a new machine's lists may be empty
fi
v=$(bad_version)
if [ -n "$v" ] && [ "$(printf '%s\n' 1.24 "$v" | sort -V | head -1)" = 1.24 ]; then APT_PACKAGES+=("$bad_dev"); fi

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}"
  if [ "$(id -u)" = 0 ]; then sudo=""; elif command -v sudo >/dev/null; then sudo="sudo"; else
    echo "setup: need root or sudo to install: ${missing[*]}" >&2; exit 1
  fi
  $sudo apt-get update -q
  # Every package needed is named: recommended ones are not (images often turn them off).
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# Rust: the cargo found first (rustup's in ~/.cargo/bin before the distribution's), if it is at
# least Cargo.toml's rust-version; else rustup installs that version (Debian 13's cargo is 1.85).
export PATH="$HOME/.cargo/bin:$PATH"
need=$(sed -nE 's/^rust-version *= *"([0-9.]+)".*/\1/p' Cargo.toml)
at_least() { [ "$(printf '%s\n' "$1" "$2" | sort -V | head -1)" = "$1" ]; }   # at_least MIN VERSION
have=$(cargo --version 2>/dev/null | awk '{print $2}' || true)
if [ -z "$have" ] || ! at_least "$need" "${have%%-*}"; then
  if [ -n "$have" ]; then
    echo "setup: $(command -v cargo) is cargo $have, older than rust-version $need in Cargo.toml: installing Rust $need with rustup"
  else
    echo "setup: no cargo found: installing Rust $need with rustup"
  fi
  if command -v rustup >/dev/null; then
    rustup toolchain install "$need" --profile minimal
    rustup default "$need"
  else
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal --default-toolchain "$need"
  fi
  have=$(cargo --version | awk '{print $2}')
  at_least "$need" "${have%%-*}" || { echo "setup: cargo is still $have after rustup (need $need)" >&2; exit 1; }
fi

# The test command checks formatting and lints; rustup's minimal profile lacks both tools.
if command -v rustup >/dev/null && ! (cargo fmt --version && cargo clippy --version) >/dev/null 2>&1; then
  echo "setup: adding the rustfmt and clippy components"
  rustup component add rustfmt clippy
fi
if $system_only; then
  echo "setup: system packages and Rust $have ready"
  exit 0
fi

# libtorch comes from the PyPI wheel (it runs on CPU too); tch 0.24 needs exactly 2.11.0.
if ! .venv/bin/python -c "import torch, safetensors; assert torch.__version__.startswith('$TORCH_VERSION')" 2>/dev/null; then
  echo "setup: installing torch==$TORCH_VERSION into .venv (about 5 GB)"
  python3 -m venv .venv
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q --no-cache-dir "torch==$TORCH_VERSION" safetensors numpy   # no 3 GB copy in pip's cache
fi
# Ray runs scripts/restore-on-ray.py (the segments of long inputs as Ray tasks) and its tests,
# which start a local Ray. 2.60.0 has wheels for the venv's Python (3.10 to 3.13).
RAY_VERSION=2.60.0
if ! .venv/bin/python -c "import ray; assert ray.__version__ == '$RAY_VERSION'" 2>/dev/null; then
  echo "setup: installing ray==$RAY_VERSION into .venv"
  .venv/bin/pip install -q "ray==$RAY_VERSION"
fi
# .cargo/config.toml points LIBTORCH at this link, whatever the Python version.
torch_dir=$(.venv/bin/python -c 'import os, torch; print(os.path.dirname(torch.__file__))')
ln -sfn "$torch_dir" .venv/libtorch
echo "setup: ready (libtorch in $torch_dir)"
