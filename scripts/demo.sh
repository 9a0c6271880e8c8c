#!/usr/bin/env bash
# The local mesh demo: installs what it needs, builds release binaries, runs the demo.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
  echo "scripts/demo.sh: run as root (it creates network namespaces and firewall rules)" >&2
  exit 1
fi
scripts/setup-system.sh
cargo build --release --locked --workspace --bins
exec target/release/demo
