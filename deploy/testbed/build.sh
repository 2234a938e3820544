#!/usr/bin/env bash
# Builds (or reuses) the testbed binaries from source with Go and prints the directory that holds them.
# Everything lands in a machine-level cache keyed by the pinned versions, never in the clone:
#   ${VK8S_CACHE_DIR:-~/.cache/vk8s}/testbed/<key>/bin/{etcd,kube-apiserver,kube-controller-manager,kube-scheduler,kubeadm,kubelet,kube-proxy,kubectl,kwok,helm,vk8s-gpu-plugin}
# The key names the pinned versions; helm's and the plugin's build inputs are stamped beside them.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=versions.env
source "$here/versions.env"

cache_root=${VK8S_CACHE_DIR:-$HOME/.cache/vk8s}
key="k8s-${KUBERNETES_VERSION}_etcd-${ETCD_VERSION}_kwok-${KWOK_VERSION}_helm-${HELM_VERSION}"
out="$cache_root/testbed/$key"
bin="$out/bin"
binaries=(etcd kube-apiserver kube-controller-manager kube-scheduler kubeadm kubelet kube-proxy kubectl kwok helm vk8s-gpu-plugin)
# vk8s-gpu-plugin is built from this tree: a stamp with a hash of its sources (tests aside) says
# whether the copy in bin/ is current, so editing the plugin rebuilds it alone.
gpu_hash=$(cd "$here/gpu-plugin" && find . -maxdepth 1 -type f \( -name '*.go' -o -name go.mod -o -name go.sum \) ! -name '*_test.go' -print0 |
  LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -c1-12)

# helm is built as its release Makefile builds it, with the Kubernetes version it assumes set by
# ldflags (`go install` alone leaves its fallback, 1.20). Tools carry a stamp of the flags they were
# built with (<name>.flags; none means "-s -w", all earlier builds): new flags rebuild that tool alone.
helm_major=${HELM_KUBE_VERSION%%.*}
helm_minor=${HELM_KUBE_VERSION#*.}
helm_ldflags="-s -w"
for pkg in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
  helm_ldflags+=" -X $pkg.k8sVersionMajor=${helm_major} -X $pkg.k8sVersionMinor=${helm_minor}"
done
tool_flags() { cat "$bin/$1.flags" 2>/dev/null || echo "-s -w"; }

have_all() {
  local name
  for name in "${binaries[@]}"; do [[ -x "$bin/$name" ]] || return 1; done
  [[ "$(tool_flags helm)" == "$helm_ldflags" ]] || return 1
  [[ "$(cat "$bin/vk8s-gpu-plugin.hash" 2>/dev/null)" == "$gpu_hash" ]]
}

if have_all; then
  echo "$bin"
  exit 0
fi

mkdir -p "$bin"
exec 9>"$out/.lock"
flock 9
if have_all; then
  echo "$bin"
  exit 0
fi

export GOMODCACHE="$cache_root/go/mod" GOCACHE="$cache_root/go/build" GOFLAGS=-mod=mod GOTOOLCHAIN=local CGO_ENABLED=0
started=$(date +%s)
log() { echo "testbed build: $*" >&2; }

major=${KUBERNETES_VERSION%%.*}
minor=${KUBERNETES_VERSION#*.}; minor=${minor%%.*}
version_pkgs=(k8s.io/component-base/version k8s.io/client-go/pkg/version)
ldflags="-s -w"
for pkg in "${version_pkgs[@]}"; do
  ldflags+=" -X $pkg.gitVersion=v${KUBERNETES_VERSION} -X $pkg.gitMajor=${major} -X $pkg.gitMinor=${minor}"
  ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
done

cd "$here/kubernetes"
for cmd in kube-apiserver kube-controller-manager kube-scheduler kubeadm kubelet kube-proxy kubectl; do
  if [[ ! -x "$bin/$cmd" ]]; then
    log "building $cmd v${KUBERNETES_VERSION}"
    go build -trimpath -ldflags "$ldflags" -o "$bin/$cmd.tmp" "k8s.io/kubernetes/cmd/$cmd"
    mv "$bin/$cmd.tmp" "$bin/$cmd"
  fi
done
if [[ ! -x "$bin/etcd" ]]; then
  log "building etcd v${ETCD_VERSION}"
  go build -trimpath -ldflags "-s -w" -o "$bin/etcd.tmp" go.etcd.io/etcd/server/v3
  mv "$bin/etcd.tmp" "$bin/etcd"
fi
if [[ "$(cat "$bin/vk8s-gpu-plugin.hash" 2>/dev/null)" != "$gpu_hash" ]]; then
  log "building vk8s-gpu-plugin (gpu-plugin/, $gpu_hash)"
  (cd "$here/gpu-plugin" && go build -trimpath -ldflags "-s -w" -o "$bin/vk8s-gpu-plugin.tmp" .)
  mv "$bin/vk8s-gpu-plugin.tmp" "$bin/vk8s-gpu-plugin"
  echo "$gpu_hash" > "$bin/vk8s-gpu-plugin.hash"
fi

# kwok and helm have replace-free go.mod files, so `go install module@version` builds them as released.
install_tool() {
  local name=$1 pkg=$2 flags=$3 gobin
  [[ -x "$bin/$name" && "$(tool_flags "$name")" == "$flags" ]] && return 0
  log "building $name from $pkg"
  gobin=$(mktemp -d "$out/gobin.XXXXXX")
  (cd "$gobin" && GOBIN="$gobin" GOFLAGS= go install -trimpath -ldflags "$flags" "$pkg")
  mv "$gobin/$name" "$bin/$name"
  echo "$flags" > "$bin/$name.flags"
  rm -rf "$gobin"
}
install_tool kwok "sigs.k8s.io/kwok/cmd/kwok@v${KWOK_VERSION}" "-s -w"
install_tool helm "helm.sh/helm/v3/cmd/helm@v${HELM_VERSION}" "$helm_ldflags"

log "done in $(( $(date +%s) - started ))s; cache size $(du -sh "$cache_root" | cut -f1)"
echo "$bin"
