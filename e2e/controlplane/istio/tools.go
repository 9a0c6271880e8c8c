//go:build tools

// Package tools pins the istiod command for `go mod tidy`.
package tools

import _ "istio.io/istio/pilot/cmd/pilot-discovery"
