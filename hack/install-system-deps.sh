#!/usr/bin/env bash
# Install the Debian packages the tests, the demo and the dataplane need.
set -euo pipefail
pkgs=(etcd-server golang-go dpkg-dev rsync openssl iproute2 iptables nftables conntrack
      libnetfilter-queue-dev libnfnetlink-dev curl procps
      podman runc debootstrap)  # podman, runc, debootstrap: the image test (hack/build-images.sh)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ]; then
  echo "install-system-deps: these Debian packages are missing and installing them needs root: ${missing[*]}" >&2
  exit 1
fi
echo "install-system-deps: installing ${missing[*]}" >&2
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
