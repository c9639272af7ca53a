#!/usr/bin/env bash
# Makes (once) and enters a Debian 13 "trixie" root, GStreamer 1.26, and runs a command there in
# the repository: the project's second platform, for CI and for running any test by hand.
#   scripts/debian13-root.sh [COMMAND [ARG...]]     (no command: a shell)
#   scripts/debian13-root.sh cargo test --features analytics --test analytics
# The root is made with debootstrap (minbase) from the Debian archive that the host's apt uses,
# in $GST_GPEN_TRIXIE (default /var/cache/gst-gpen-trixie); later runs reuse it, and each run
# installs only what scripts/setup.sh --system finds missing. The host's apt configuration and
# keys, pip configuration, certificates and proxy variables are copied in. Bound in, at their
# host paths: the repository, ../shared (read-only) and the host's libtorch (its libraries do
# not depend on Python: no pip download in the root); at /root: the host's ~/.cargo (registry
# cache, toolchain proxies) and ~/.rustup. Cargo builds into target/trixie there, because the
# system libraries differ from the host's. Needs root (debootstrap, mounts, chroot).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
root=${GST_GPEN_TRIXIE:-/var/cache/gst-gpen-trixie}
say() { echo "debian13-root: $*" >&2; }
[ "$(id -u)" = 0 ] || { say "needs root (debootstrap, mounts and chroot)"; exit 1; }

# libtorch: the host's (LIBTORCH, else the .venv/libtorch link that scripts/setup.sh makes).
torch=$(realpath -e "${LIBTORCH:-$repo/.venv/libtorch}" 2>/dev/null) \
  || { say "no libtorch: set LIBTORCH or run scripts/setup.sh first"; exit 1; }
[ -e "$torch/lib/libtorch.so" ] || { say "$torch has no lib/libtorch.so"; exit 1; }
# torch's libraries find the CUDA ones beside it ($ORIGIN/../../nvidia): bind its parent.
site=$(dirname "$torch")
shared=$(realpath -e "$repo/../shared" 2>/dev/null) || { say "../shared must sit beside the repository root"; exit 1; }

# The first URI of the host's apt sources whose path ends in $1, else nothing.
host_uri() {
  cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null \
    | sed -nE 's/^(URIs:|deb)[[:space:]]+(\[[^]]*\][[:space:]]+)?([^[:space:]]+).*/\3/p' | grep -E "/$1/?\$" | head -1 || true
}

make_root() {
  command -v debootstrap >/dev/null || {
    say "installing debootstrap"
    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends debootstrap
  }
  local mirror security
  mirror=$(host_uri debian) security=$(host_uri debian-security)
  say "making the Debian 13 root in $root (debootstrap minbase${mirror:+ from $mirror}; a few minutes)"
  rm -rf "$root.new"
  # shellcheck disable=SC2086 # an empty mirror is debootstrap's default
  debootstrap --variant=minbase --components=main trixie "$root.new" $mirror >"$root.log" 2>&1 \
    || { tail -20 "$root.log" >&2; say "debootstrap failed (whole log: $root.log)"; exit 1; }
  # Without a host archive, the one debootstrap used.
  [ -n "$mirror" ] || mirror=$(sed -nE 's/^deb[[:space:]]+([^[:space:]]+).*/\1/p' "$root.new/etc/apt/sources.list" | head -1)
  {
    echo "Types: deb"
    echo "URIs: $mirror"
    echo "Suites: trixie trixie-updates"
    echo "Components: main"
    if [ -n "$security" ]; then
      echo
      echo "Types: deb"; echo "URIs: $security"; echo "Suites: trixie-security"; echo "Components: main"
    fi
  } >"$root.new/etc/apt/sources.list.d/debian.sources"
  rm -f "$root.new/etc/apt/sources.list"
  mv "$root.new" "$root"
}

# What the host configures for reaching the registries, copied in at each entry (it may change).
copy_config() {
  local d
  for d in apt.conf.d auth.conf.d trusted.gpg.d keyrings; do
    [ -d "/etc/apt/$d" ] && mkdir -p "$root/etc/apt/$d" && cp -a "/etc/apt/$d/." "$root/etc/apt/$d/"
  done
  [ -f /etc/apt/trusted.gpg ] && cp -a /etc/apt/trusted.gpg "$root/etc/apt/"
  [ -f /etc/pip.conf ] && cp -a /etc/pip.conf "$root/etc/"
  [ -d "$HOME/.config/pip" ] && mkdir -p "$root/root/.config" && cp -a "$HOME/.config/pip" "$root/root/.config/"
  # Certificates: the host's bundle and its local authorities (kept when ca-certificates rebuilds).
  mkdir -p "$root/etc/ssl/certs" "$root/usr/local/share/ca-certificates"
  cp -rL /etc/ssl/certs/. "$root/etc/ssl/certs/" 2>/dev/null || true
  [ -d /usr/local/share/ca-certificates ] && cp -a /usr/local/share/ca-certificates/. "$root/usr/local/share/ca-certificates/"
  cp -L /etc/resolv.conf "$root/etc/resolv.conf" 2>/dev/null || true
  cp -L /etc/hosts "$root/etc/hosts" 2>/dev/null || true
}

if [ -z "${GST_GPEN_IN_NAMESPACE:-}" ]; then
  # Make the root under a lock (two runs at once would both debootstrap), then re-enter in a
  # mount namespace of our own: the bind mounts end with the command.
  mkdir -p "$(dirname "$root")"
  exec 9>"$root.lock"
  flock 9
  [ -x "$root/usr/bin/apt-get" ] || make_root
  copy_config
  flock -u 9
  exec unshare --mount --propagation private env GST_GPEN_IN_NAMESPACE=1 "$0" "$@"
fi

bind() { # bind SOURCE TARGET-IN-ROOT [ro]
  mkdir -p "$root$2"
  mount --rbind "$1" "$root$2"
  [ "${3:-}" = ro ] && mount -o remount,bind,ro "$root$2"
  return 0
}
mount -t proc proc "$root/proc"
bind /dev /dev
bind /sys /sys
bind "$repo" "$repo"
bind "$shared" "$(dirname "$repo")/shared" ro
bind "$site" "$site" ro
[ -d "$HOME/.cargo" ] && bind "$HOME/.cargo" /root/.cargo
[ -d "$HOME/.rustup" ] && bind "$HOME/.rustup" /root/.rustup

# The environment inside: a clean one, with the host's proxy, certificate, pip and cargo
# registry variables, GStreamer debugging and the CI flag.
vars=(HOME=/root LANG=C.UTF-8 TERM="${TERM:-dumb}" PATH=/root/.cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
  LIBTORCH="$torch" CARGO_TARGET_DIR="$repo/target/trixie")
while IFS='=' read -r name _; do
  case "$name" in
    *_proxy | *_PROXY | PIP_* | SSL_CERT_* | *CA_BUNDLE | *_CA_CERTS | *_CAINFO | CARGO_HTTP_* | CARGO_NET_* | CARGO_REGISTRIES_* \
      | RUSTUP_* | RUST_BACKTRACE | GST_DEBUG* | GST_GPEN_SHARED | CI) vars+=("$name=${!name}") ;;
  esac
done < <(env)
# Each entry installs what is missing (the package list lives in scripts/setup.sh).
chroot "$root" /usr/bin/env -i "${vars[@]}" bash -c 'cd "$1" && ./scripts/setup.sh --system >&2' _ "$repo"
if [ $# -eq 0 ]; then set -- bash; fi
exec chroot "$root" /usr/bin/env -i "${vars[@]}" bash -c 'cd "$1" && shift && exec "$@"' _ "$repo" "$@"
