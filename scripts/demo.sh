#!/usr/bin/env bash
# The local mesh demo: installs what it needs, builds release binaries, runs the demo.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
  echo "scripts/demo.sh: run as root (it creates network namespaces and firewall rules)" >&2
  exit 1
fi
scripts/setup-system.sh
# The real control plane (etcd, kube-apiserver, kube-controller-manager, kubectl, istiod) from
# the pinned Go modules: tens of minutes the first time, then cached.
MESHTUNNEL_CONTROLPLANE_DIR=$(bash scripts/build-controlplane.sh | tail -n 1)
export MESHTUNNEL_CONTROLPLANE_DIR
cargo build --release --locked --workspace --bins
exec target/release/demo
