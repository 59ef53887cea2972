#!/usr/bin/env bash
# The demo command: installs what is missing, builds, and runs the local bus on its own secured
# nats-server (generated nkeys and gRPC tokens under .kakehashi/) with events flowing through it.
# Extra arguments go to `kakehashi dev` (e.g. --exit-after-demo).
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/scripts/ensure-tools.sh
# The dev profile, as the tests use: a cold build takes about 2 minutes on 2 cores instead of
# about 10 for --release, the demo's load does not need optimised code, and
# `bash deploy/test.sh` afterwards reuses the same compiled dependencies.
cargo build --locked -p kakehashi-ctl
exec "${CARGO_TARGET_DIR:-target}/debug/kakehashi" dev --demo "$@"
