#!/usr/bin/env bash
# Build kube-apiserver from Debian's source package `kubernetes` (bundled vendor/) with Debian's
# golang-go, in GOPATH mode, and cache the binary outside the clone, keyed by version.
#
# Usage: hack/build-kube-apiserver.sh        prints the path of the cached binary
# Env:   KIT_CACHE_DIR (default ~/.cache/kube-ip-tracker)
set -euo pipefail

cache_root="${KIT_CACHE_DIR:-$HOME/.cache/kube-ip-tracker}"
mkdir -p "$cache_root"

log() { echo "build-kube-apiserver: $*" >&2; }

need_root_apt() {
  if [ "$(id -u)" != 0 ]; then
    log "installing Debian packages needs root: run as root or install: $*"
    exit 1
  fi
}

# Version of the source package; the cache key.
srcdir_apt="$cache_root/apt-src"
mkdir -p "$srcdir_apt/sources.list.d"
# Private deb-src entries derived from the machine's own deb entries.
for f in /etc/apt/sources.list.d/*.sources; do
  [ -e "$f" ] || continue
  sed -e 's/^Types:.*/Types: deb-src/' "$f" > "$srcdir_apt/sources.list.d/$(basename "$f")"
done
if [ -f /etc/apt/sources.list ]; then
  grep -E '^deb ' /etc/apt/sources.list | sed -e 's/^deb /deb-src /' > "$srcdir_apt/sources.list.d/main-src.list" || true
fi
# A private lists directory too, so this never disturbs the machine's own package lists.
mkdir -p "$srcdir_apt/lists/partial"
apt_opts=(-o "Dir::Etc::sourceparts=$srcdir_apt/sources.list.d" -o "Dir::Etc::sourcelist=/dev/null"
          -o "Dir::State::Lists=$srcdir_apt/lists" -o "APT::Sandbox::User=root")

# Debian's Go (golang-go, 1.19 on bookworm), called by its path: the `go` on PATH may be a newer
# toolchain that no longer builds this GOPATH-mode tree.
debian_go_bin=/usr/lib/go-1.19/bin
if [ ! -x "$debian_go_bin/go" ] || ! command -v dpkg-source >/dev/null 2>&1; then
  need_root_apt golang-go dpkg-dev
  log "installing golang-go, dpkg-dev, rsync"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq golang-go dpkg-dev rsync >/dev/null
fi

source_version() { apt-cache "${apt_opts[@]}" showsrc kubernetes 2>/dev/null | awk '/^Version:/{print $2; exit}'; }
version="$(source_version || true)"
if [ -z "$version" ]; then
  log "refreshing the private deb-src index"
  apt-get "${apt_opts[@]}" update -qq
  version="$(source_version || true)"
fi
if [ -z "$version" ]; then
  log "no source package 'kubernetes' found in deb-src entries under $srcdir_apt/sources.list.d"
  exit 1
fi
out="$cache_root/kube-apiserver-$version"
# shellcheck source=hack/cache-lock.sh
. "$(dirname "$0")/cache-lock.sh"
kit_cached_or_lock "$out"

log "building kube-apiserver $version (a few minutes on first use)"
work="$cache_root/build-$version"
rm -rf "$work"
mkdir -p "$work"
(
  cd "$work"
  apt-get "${apt_opts[@]}" source -qq --download-only kubernetes >&2
  dpkg-source -x --no-check ./kubernetes_*.dsc src >&2
)
gopath="$work/gopath"
mkdir -p "$gopath/src/k8s.io"
mv "$work/src" "$gopath/src/k8s.io/kubernetes"
cd "$gopath/src/k8s.io/kubernetes"
export PATH="$debian_go_bin:$PATH" GOROOT="$(dirname "$debian_go_bin")" GOTOOLCHAIN=local
export GOPATH="$gopath" GO111MODULE=off GOFLAGS= GOCACHE="$cache_root/gocache-debian"
# `make generated_files` writes the generated deepcopy/defaulter/openapi code.
make generated_files >&2
"$debian_go_bin/go" build -o "$out.tmp" ./cmd/kube-apiserver >&2
mv "$out.tmp" "$out"
rm -rf "$work"
log "built $out"
echo "$out"
