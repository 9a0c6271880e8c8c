#!/usr/bin/env bash
# The test command: installs what the tests need, checks formatting and lints, builds the
# binaries the whole-system tests start, and runs every test. Must run as root (network
# namespaces, iptables/nftables).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
  echo "scripts/test.sh: run as root (tests create network namespaces and firewall rules)" >&2
  exit 1
fi
scripts/setup-system.sh
# Everything the tests need is installed above, so a test that would skip for a missing tool
# (e2e/tests/cri.rs without containerd) must fail here instead, with or without CI's own CI=true.
export CI="${CI:-true}"
# The real control plane the whole-system tests run on (etcd, kube-apiserver,
# kube-controller-manager, kubectl, istiod), built from the pinned Go modules once and cached.
MESHTUNNEL_CONTROLPLANE_DIR=$(bash scripts/build-controlplane.sh | tail -n 1)
export MESHTUNNEL_CONTROLPLANE_DIR
# The Gateway API conformance suite (its mesh tests' manifests) at the version the control plane
# pins, read by e2e/tests/waypoint_conformance.rs and waypoint_conformance_cluster.rs. Its own
# Go module; downloaded outside any module so no go.mod or go.sum changes.
gateway_version=$(cd e2e/controlplane/istio && go list -m -f '{{.Version}}' sigs.k8s.io/gateway-api)
MESHTUNNEL_GATEWAY_API_DIR=$(cd /tmp && GOFLAGS= go mod download -json \
  "sigs.k8s.io/gateway-api/conformance@$gateway_version" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')
export MESHTUNNEL_GATEWAY_API_DIR

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo build --workspace --bins --locked
cargo test --workspace --locked
