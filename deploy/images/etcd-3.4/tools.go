//go:build tools

// Package tools pins the etcd server command (the root package of go.etcd.io/etcd 3.4), so
// `go mod tidy` keeps its dependencies as etcd's own go.mod resolves them.
package tools

import (
	_ "go.etcd.io/etcd"
)
