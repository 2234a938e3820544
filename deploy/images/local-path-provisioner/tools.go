//go:build tools

// Package tools pins rancher's local-path-provisioner command (the inner cluster's default
// StorageClass), so `go mod tidy` keeps its dependencies as its own go.mod resolves them.
// vk8s/images/builders.py builds it with CGO_ENABLED=0 into vk8s.local/local-path-provisioner.
package tools

import (
	_ "github.com/rancher/local-path-provisioner"
)
