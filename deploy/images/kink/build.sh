#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Builds one kink image from the pinned versions in versions/<minor>.env and versions/common.env.
#   build.sh MINOR [--gpu] [--repository REPO] [--push] [-- EXTRA_DOCKER_BUILD_ARGS...]
#   build.sh --list            the minors there is a build for
# Tags: REPO:vMINOR (node) or REPO:vMINOR-gpu; REPO defaults to ghcr.io/vk8s/kink.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
context=$(dirname "$here")

die() {
  echo "build.sh: $*" >&2
  exit 1
}

if [[ ${1:-} == --list ]]; then
  for file in "$here"/versions/1.*.env; do
    basename "$file" .env
  done | sort -t. -k1,1n -k2,2n
  exit 0
fi

minor=${1:-}
[[ $minor =~ ^[0-9]+\.[0-9]+$ ]] || die "usage: build.sh MINOR [--gpu] [--repository REPO] [--push] (e.g. 1.29)"
shift
versions=$here/versions/$minor.env
[[ -f $versions ]] || die "no build for Kubernetes $minor: no $versions (see build.sh --list)"

target=node suffix="" repository=ghcr.io/vk8s/kink push=false
while (($# > 0)); do
  case $1 in
    --gpu) target=gpu suffix=-gpu ;;
    --repository)
      repository=${2:?--repository needs a value}
      shift
      ;;
    --push) push=true ;;
    --)
      shift
      break
      ;;
    *) die "unknown argument $1" ;;
  esac
  shift
done

# shellcheck source=versions/common.env
source "$here/versions/common.env"
# shellcheck source=versions/1.29.env
source "$versions"
# containerd 2 reads config version 3; 1.7 reads version 2.
containerd_config=containerd-${CONTAINERD_VERSION%%.*}
tag=$repository:v$minor$suffix

args=(--file "$here/Dockerfile" --target "$target" --tag "$tag" --build-arg "CONTAINERD_CONFIG=$containerd_config")
for name in BASE_IMAGE NVIDIA_CONTAINER_TOOLKIT_VERSION KUBERNETES_VERSION KUBEADM_SHA256 KUBELET_SHA256 KUBECTL_SHA256 \
  CONTAINERD_VERSION CONTAINERD_SHA256 RUNC_VERSION RUNC_SHA256 CRICTL_VERSION CRICTL_SHA256 \
  CNI_PLUGINS_VERSION CNI_PLUGINS_SHA256; do
  [[ -n ${!name:-} ]] || die "$versions or common.env does not set $name"
  args+=(--build-arg "$name=${!name}")
done

echo "build.sh: $tag (Kubernetes $KUBERNETES_VERSION, containerd $CONTAINERD_VERSION, runc $RUNC_VERSION)" >&2
docker build "${args[@]}" "$@" "$context"
if $push; then
  docker push "$tag"
fi
