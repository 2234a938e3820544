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
log() { echo "testbed build: $*" >&2; }

major=${KUBERNETES_VERSION%%.*}
minor=${KUBERNETES_VERSION#*.}; minor=${minor%%.*}
version_pkgs=(k8s.io/component-base/version k8s.io/client-go/pkg/version)
ldflags="-s -w"
for pkg in "${version_pkgs[@]}"; do
  ldflags+=" -X $pkg.gitVersion=v${KUBERNETES_VERSION} -X $pkg.gitMajor=${major} -X $pkg.gitMinor=${minor}"
  ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
done
kube_cmds=(kube-apiserver kube-controller-manager kube-scheduler kubeadm kubelet kube-proxy kubectl)

# --- what to build, and roughly how long ----------------------------------------------------------
# Seconds each step took in a cold build on 2 cores (docs/testbed.md: 13 min in all); replaced by what
# the last build of that step took on this machine (durations file beside the cache's testbeds).
declare -A estimate_s=(
  [kube-apiserver]=220 [kube-controller-manager]=140 [kube-scheduler]=40 [kubeadm]=60 [kubelet]=80
  [kube-proxy]=40 [kubectl]=50 [etcd]=60 [vk8s-gpu-plugin]=30 [kwok]=60 [helm]=110
)
durations="$cache_root/testbed/durations"
if [[ -f "$durations" ]]; then
  while read -r name seconds; do [[ -n "${estimate_s[$name]+set}" ]] && estimate_s[$name]=$seconds; done < "$durations"
fi
steps=()
for cmd in "${kube_cmds[@]}"; do [[ -x "$bin/$cmd" ]] || steps+=("$cmd"); done
[[ -x "$bin/etcd" ]] || steps+=(etcd)
[[ "$(cat "$bin/vk8s-gpu-plugin.hash" 2>/dev/null)" == "$gpu_hash" ]] || steps+=(vk8s-gpu-plugin)
[[ -x "$bin/kwok" && "$(tool_flags kwok)" == "-s -w" ]] || steps+=(kwok)
[[ -x "$bin/helm" && "$(tool_flags helm)" == "$helm_ldflags" ]] || steps+=(helm)
total_s=0
for name in "${steps[@]}"; do total_s=$(( total_s + estimate_s[$name] )); done

minutes() { local s=$1; if (( s < 60 )); then echo "${s}s"; else echo "$(( s / 60 ))m$(printf %02d $(( s % 60 )))s"; fi; }
log "${#steps[@]} step(s) to build: ${steps[*]}; roughly $(minutes "$total_s") on 2 quiet cores, longer on a busy machine"
started=$(date +%s)

# --- one step at a time: a bar that moves on a terminal, one line per step otherwise --------------
progress_bar() {  # step index, label, step start
  local k=$1 label=$2 step_started=$3 now elapsed done_s width=24 filled bar
  now=$(date +%s); elapsed=$(( now - started ))
  done_s=$(( before_s + now - step_started ))
  (( done_s > total_s )) && done_s=$total_s
  filled=$(( total_s > 0 ? done_s * width / total_s : 0 ))
  printf -v bar '%*s' "$filled" ''; bar=${bar// /#}
  printf -v bar '%-*s' "$width" "$bar"
  printf '\rtestbed build: [%s] step %d/%d %-24s elapsed %s of ~%s ' \
    "$bar" "$k" "${#steps[@]}" "$label" "$(minutes "$elapsed")" "$(minutes "$total_s")" >&2
}

run_step() {  # step index, step name, label, command...
  local k=$1 name=$2 label=$3 step_started pid status=0
  shift 3
  step_started=$(date +%s)
  if [[ -t 2 ]]; then
    "$@" & pid=$!
    while kill -0 "$pid" 2>/dev/null; do progress_bar "$k" "$label" "$step_started"; sleep 1; done
    wait "$pid" || status=$?
    progress_bar "$k" "$label" "$step_started"
    echo >&2
  else
    log "step $k/${#steps[@]}: $label (elapsed $(minutes $(( step_started - started ))) of ~$(minutes "$total_s"))"
    "$@" || status=$?
  fi
  (( status == 0 )) || { log "step $k/${#steps[@]}: $label failed"; return "$status"; }
  local took=$(( $(date +%s) - step_started ))
  before_s=$(( before_s + estimate_s[$name] ))
  # The last duration of each step on this machine is the next build's estimate.
  { grep -v "^$name " "$durations" 2>/dev/null || true; echo "$name $took"; } > "$durations.tmp" && mv "$durations.tmp" "$durations"
}

build_kube() {
  (cd "$here/kubernetes" && go build -trimpath -ldflags "$ldflags" -o "$bin/$1.tmp" "k8s.io/kubernetes/cmd/$1")
  mv "$bin/$1.tmp" "$bin/$1"
}
build_etcd() {
  (cd "$here/kubernetes" && go build -trimpath -ldflags "-s -w" -o "$bin/etcd.tmp" go.etcd.io/etcd/server/v3)
  mv "$bin/etcd.tmp" "$bin/etcd"
}
build_gpu_plugin() {
  (cd "$here/gpu-plugin" && go build -trimpath -ldflags "-s -w" -o "$bin/vk8s-gpu-plugin.tmp" .)
  mv "$bin/vk8s-gpu-plugin.tmp" "$bin/vk8s-gpu-plugin"
  echo "$gpu_hash" > "$bin/vk8s-gpu-plugin.hash"
}
# kwok and helm have replace-free go.mod files, so `go install module@version` builds them as released.
install_tool() {
  local name=$1 pkg=$2 flags=$3 gobin
  gobin=$(mktemp -d "$out/gobin.XXXXXX")
  (cd "$gobin" && GOBIN="$gobin" GOFLAGS= go install -trimpath -ldflags "$flags" "$pkg")
  mv "$gobin/$name" "$bin/$name"
  echo "$flags" > "$bin/$name.flags"
  rm -rf "$gobin"
}

before_s=0
k=0
for name in "${steps[@]}"; do
  k=$(( k + 1 ))
  case "$name" in
    etcd) run_step "$k" "$name" "etcd v${ETCD_VERSION}" build_etcd ;;
    vk8s-gpu-plugin) run_step "$k" "$name" "$name ($gpu_hash)" build_gpu_plugin ;;
    kwok) run_step "$k" "$name" "kwok v${KWOK_VERSION}" install_tool kwok "sigs.k8s.io/kwok/cmd/kwok@v${KWOK_VERSION}" "-s -w" ;;
    helm)
      run_step "$k" "$name" "helm v${HELM_VERSION}" \
        install_tool helm "helm.sh/helm/v3/cmd/helm@v${HELM_VERSION}" "$helm_ldflags"
      ;;
    *) run_step "$k" "$name" "$name v${KUBERNETES_VERSION}" build_kube "$name" ;;
  esac
done

log "done in $(minutes $(( $(date +%s) - started ))) (estimated ~$(minutes "$total_s")); cache size $(du -sh "$cache_root" | cut -f1)"
echo "$bin"
