#!/usr/bin/env bash
# Builds the real control plane the whole-system tests and the demo run on: etcd,
# kube-apiserver, kube-controller-manager, kubectl and istiod (pilot-discovery), from the
# pinned Go modules under e2e/controlplane/, plus the Istio and Gateway API CRDs those modules
# carry. Nothing is downloaded but Go modules (checked against the committed go.sum).
#
# The result is cached under $MESHTUNNEL_CONTROLPLANE_CACHE (default
# /var/cache/meshtunnel/controlplane), in a directory named by a hash of the pinned modules,
# the Go version and this script, so a later run with the same pins reuses it at once. The
# first (cold) build takes tens of minutes on 2 cores and prints its progress.
#
# Prints the directory holding bin/ and crds/ on its last line.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
modules=e2e/controlplane

cache_root=${MESHTUNNEL_CONTROLPLANE_CACHE:-/var/cache/meshtunnel/controlplane}
key=$(cat "$modules"/*/go.mod "$modules"/*/go.sum "$0" <(go version) | sha256sum | cut -c1-16)
out=$cache_root/$key
if [ -f "$out/.complete" ]; then
  echo "$out"
  exit 0
fi

log() { echo "[control plane build $(date +%T)] $*" >&2; }
mkdir -p "$cache_root"
stage=$(mktemp -d "$cache_root/.build-XXXXXX")
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/bin" "$stage/crds"
export CGO_ENABLED=0 GOFLAGS=-mod=readonly

# Version reported by /version: kubectl and istiod read it, so it must not say v0.0.0.
kube_version=$(cd "$modules/kubernetes" && go list -m -f '{{.Version}}' k8s.io/kubernetes)
minor=$(echo "$kube_version" | cut -d. -f2)
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags+=" -X $pkg.gitVersion=$kube_version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
  ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
done
log "kube-apiserver, kube-controller-manager, kubectl $kube_version (cold: the longest step)"
(cd "$modules/kubernetes" && go build -trimpath -ldflags "$ldflags" -o "$stage/bin/" \
  k8s.io/kubernetes/cmd/kube-apiserver \
  k8s.io/kubernetes/cmd/kube-controller-manager \
  k8s.io/kubernetes/cmd/kubectl)

etcd_version=$(cd "$modules/etcd" && go list -m -f '{{.Version}}' go.etcd.io/etcd/server/v3)
log "etcd $etcd_version"
(cd "$modules/etcd" && go build -trimpath -ldflags "-s -w" -o "$stage/bin/etcd" go.etcd.io/etcd/server/v3)

istio_version=$(cd "$modules/istio" && go list -m -f '{{.Version}}' istio.io/istio)
log "istiod (pilot-discovery) $istio_version"
(cd "$modules/istio" && go build -trimpath -tags vtprotobuf,disable_pgv \
  -ldflags "-s -w -X istio.io/istio/pkg/version.buildVersion=$istio_version" \
  -o "$stage/bin/pilot-discovery" istio.io/istio/pilot/cmd/pilot-discovery)

log "CRDs"
istio_dir=$(cd "$modules/istio" && go list -m -f '{{.Dir}}' istio.io/istio)
gateway_version=$(cd "$modules/istio" && go list -m -f '{{.Version}}' sigs.k8s.io/gateway-api)
gateway_dir=$(cd "$modules/istio" && go mod download -json "sigs.k8s.io/gateway-api@$gateway_version" |
  sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')
cp "$istio_dir/manifests/charts/base/files/crd-all.gen.yaml" "$stage/crds/istio.yaml"
# The experimental channel: it is a superset of standard, and carries the HTTPRoute fields
# (retry, ...) the waypoint implements. The safe-upgrade ValidatingAdmissionPolicy is left out.
for f in "$gateway_dir"/config/crd/experimental/gateway.networking.k8s.io_*.yaml; do
  case $f in *_vap_*) continue ;; esac
  echo "---"
  cat "$f"
done > "$stage/crds/gateway-api.yaml"

cat > "$stage/versions" <<EOF
kubernetes $kube_version
etcd $etcd_version
istio $istio_version
gateway-api $gateway_version
EOF
touch "$stage/.complete"
rm -rf "$out"
mv "$stage" "$out"
trap - EXIT
log "done: $(tr '\n' ' ' < "$out/versions")"
echo "$out"
