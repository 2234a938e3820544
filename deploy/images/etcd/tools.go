//go:build tools

// Package tools pins the etcd server command, so `go mod tidy` keeps its dependencies as etcd's own
// go.mod resolves them (the testbed's etcd shares the Kubernetes module graph instead).
package tools

import (
	_ "go.etcd.io/etcd/server/v3"
)
