#!/usr/bin/env bash
# Build the two images of the Dockerfile with podman (no Docker daemon, no registry): the base from
# Debian's packages (hack/debian-base-image.sh), then the targets tracker and agent.
#
#   hack/build-images.sh                      # localhost/kube-ip-tracker:VERSION, localhost/kube-ip-agent:VERSION
#   KIT_IMAGE_TAG=dev hack/build-images.sh    # another tag (default: the version in pyproject.toml)
#   hack/build-images.sh --names              # only print the names it would build
#
# podman runs with Debian's runc and the cgroupfs manager (crun fails on hybrid cgroup layouts),
# the host's network, and ulimits no higher than the host's: KIT_PODMAN_OPTS and KIT_BUILD_OPTS
# replace those defaults. pip in the build trusts the host's CA bundle (KIT_BUILD_CA_FILE, default
# /etc/ssl/certs/ca-certificates.crt), mounted for the build only: a TLS-inspecting proxy on the way
# to PyPI then works as it does on the host. Needs root. Prints the two image names.
set -euo pipefail
cd "$(dirname "$0")/.."

version=$(sed -n 's/^version = "\(.*\)"$/\1/p' pyproject.toml | head -n 1)
TAG=${KIT_IMAGE_TAG:-$version}
# shellcheck source=hack/podman.sh
. hack/podman.sh
read -r -a BUILD_OPTS <<<"${KIT_BUILD_OPTS:---network=host --ulimit nofile=4096:4096 --ulimit nproc=4096:4096}"

if [ "${1:-}" = --names ]; then
  printf 'localhost/kube-ip-%s:%s\n' tracker "$TAG" agent "$TAG"
  exit 0
fi
CA_FILE=${KIT_BUILD_CA_FILE:-/etc/ssl/certs/ca-certificates.crt}
if [ -s "$CA_FILE" ]; then
  BUILD_OPTS+=(--volume "$(readlink -f "$CA_FILE"):/run/kit-build-ca.crt:ro" --build-arg PIP_CERT=/run/kit-build-ca.crt)
fi
hack/debian-base-image.sh >/dev/null
for target in tracker agent; do
  image=localhost/kube-ip-$target:$TAG
  echo "build-images: $image (target $target)" >&2
  "${PODMAN[@]}" build --pull=never "${BUILD_OPTS[@]}" --target "$target" -t "$image" -f Dockerfile . >&2
  echo "$image"
done
