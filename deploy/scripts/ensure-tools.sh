#!/usr/bin/env bash
# Installs what Kakehashi needs on a fresh Debian machine when it is missing: nats-server (from
# Debian's packages) and a C compiler for crates that build C. Rust itself must already be there.
set -euo pipefail

need=()
command -v nats-server >/dev/null 2>&1 || need+=(nats-server)
command -v cc >/dev/null 2>&1 || need+=(gcc)
if [ ${#need[@]} -gt 0 ]; then
  echo "kakehashi: installing ${need[*]}" >&2
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi
if ! command -v cargo >/dev/null 2>&1; then
  echo "kakehashi: cargo not found; install Rust (rustup) first" >&2
  exit 1
fi
