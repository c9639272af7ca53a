#!/usr/bin/env bash
# Installs what building and testing gst-gpen needs, on Debian 12 / Ubuntu 22.04+ and later:
# GStreamer development files and plugins, meson, and libtorch 2.11.0 (PyPI torch==2.11.0) in
# the git-ignored virtual environment .venv, with ray for scripts/restore-on-ray.py. Safe to run
# again: it only does what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

TORCH_VERSION=2.11.0
APT_PACKAGES=(
  pkg-config binutils python3-venv
  libgstreamer1.0-dev libgstreamer-plugins-base1.0-dev
  gstreamer1.0-tools gstreamer1.0-plugins-base gstreamer1.0-plugins-good
  gstreamer1.0-plugins-bad gstreamer1.0-plugins-ugly gstreamer1.0-libav
  meson ninja-build python3-gi gir1.2-gstreamer-1.0 libturbojpeg0-dev
)

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
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q "${missing[@]}"
fi

if ! command -v cargo >/dev/null; then
  if [ -x "$HOME/.cargo/bin/cargo" ]; then export PATH="$HOME/.cargo/bin:$PATH"; else
    echo "setup: installing the Rust toolchain with rustup"
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
    export PATH="$HOME/.cargo/bin:$PATH"
  fi
fi

# The test command checks formatting and lints; rustup's minimal profile lacks both tools.
if command -v rustup >/dev/null && ! (cargo fmt --version && cargo clippy --version) >/dev/null 2>&1; then
  echo "setup: adding the rustfmt and clippy components"
  rustup component add rustfmt clippy
fi

# libtorch comes from the PyPI wheel (it runs on CPU too); tch 0.24 needs exactly 2.11.0.
if ! .venv/bin/python -c "import torch, safetensors; assert torch.__version__.startswith('$TORCH_VERSION')" 2>/dev/null; then
  echo "setup: installing torch==$TORCH_VERSION into .venv (about 5 GB)"
  python3 -m venv .venv
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q "torch==$TORCH_VERSION" safetensors numpy
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
