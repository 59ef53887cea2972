#!/usr/bin/env bash
# The test command: installs what is missing, then runs every test of the workspace. Each test
# starts its own nats-server on a free loopback port with a temporary store.
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/scripts/ensure-tools.sh --with-interop-clients
exec cargo test --workspace --locked "$@"
