#!/usr/bin/env bash
# The demo command: installs what is missing, builds, and runs the local bus on its own secured
# nats-server (generated nkeys and gRPC tokens under .kakehashi/) with events flowing through it.
# Extra arguments go to `kakehashi dev` (e.g. --exit-after-demo).
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/scripts/ensure-tools.sh
cargo build --locked --release -p kakehashi-ctl
exec "${CARGO_TARGET_DIR:-target}/release/kakehashi" dev --demo "$@"
