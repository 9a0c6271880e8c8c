#!/usr/bin/env bash
# Installs the system packages the demo, tests and benchmarks use (Debian). Idempotent:
# apt is only touched when something is missing.
set -euo pipefail

packages=(iproute2 iptables nftables tshark iperf3 procps containernetworking-plugins containerd runc busybox-static protobuf-compiler)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
