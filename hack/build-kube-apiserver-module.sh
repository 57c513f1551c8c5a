#!/usr/bin/env bash
# Build kube-apiserver from the k8s.io/kubernetes Go module with the `go` on PATH (Go 1.26+), and
# cache the binary outside the clone, keyed by version.
#
# k8s.io/kubernetes requires its staging modules (k8s.io/api, k8s.io/apimachinery, ...) at v0.0.0
# and points them at ./staging/src with `replace` directives, which only apply inside its own
# repository. The build module here replaces every one of them with the published v0.X.Y that
# matches v1.X.Y; the list comes from the module's own go.mod, so it follows new staging repos.
#
# Usage: hack/build-kube-apiserver-module.sh   prints the path of the cached binary
# Env:   KIT_CACHE_DIR        (default ~/.cache/kube-ip-tracker)
#        KIT_KUBE_VERSION     k8s.io/kubernetes version to build (default below)
#        KIT_GO               the go command to build with (default: `go` on PATH, /usr/local/go/bin/go)
#
# Finding the Go toolchain (and downloading one when the machine has only an older go) is shared
# with the other module builds: hack/go-toolchain.sh.
set -euo pipefail

# The newest release that builds with Go 1.26 (go.mod says `go 1.26.0`); v1.38 is still beta.
version="${KIT_KUBE_VERSION:-v1.37.2}"
need_go=1.26
bootstrap_go=1.26.8
cache_root="${KIT_CACHE_DIR:-$HOME/.cache/kube-ip-tracker}"
mkdir -p "$cache_root"

log() { echo "build-kube-apiserver: $*" >&2; }

case "$version" in
  v1.[0-9]*.[0-9]*) ;;
  *) log "KIT_KUBE_VERSION must look like v1.X.Y, got '$version'"; exit 1 ;;
esac
out="$cache_root/kube-apiserver-$version"
# shellcheck source=hack/cache-lock.sh
. "$(dirname "$0")/cache-lock.sh"
kit_cached_or_lock "$out"

# shellcheck source=hack/go-toolchain.sh
. "$(dirname "$0")/go-toolchain.sh"
kit_go_setup

staging_minor="v0.${version#v1.}"
work="$cache_root/build-module-$version"
rm -rf "$work"
mkdir -p "$work"
cd "$work"
log "building kube-apiserver $version with $(go env GOVERSION) ($gobin) (10-30 minutes on first use)"
go mod init kit-build/kube-apiserver >/dev/null 2>&1

# k8s.io/kubernetes's own go.mod: every `replace X => ./staging/src/X` becomes X => X v0.Y.Z here.
kube_mod="$(go mod download -json "k8s.io/kubernetes@$version" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",$/\1/p')"
if [ ! -f "$kube_mod" ]; then
  log "could not download the go.mod of k8s.io/kubernetes@$version"
  exit 1
fi
mapfile -t staging < <(sed -n 's#^[[:space:]]*\(k8s\.io/[^[:space:]]*\) => \./staging/src/\1[[:space:]]*$#\1#p' "$kube_mod")
if [ "${#staging[@]}" -eq 0 ]; then
  log "no staging replace directives found in $kube_mod"
  exit 1
fi
edits=()
for m in "${staging[@]}"; do
  edits+=("-replace=$m=$m@$staging_minor")
done
go mod edit "${edits[@]}"
log "replacing ${#staging[@]} staging modules with $staging_minor"

nice -n 19 go get "k8s.io/kubernetes@$version" >&2
# The version the server reports on /version and uses as its binary (emulation) version.
minor="${version#v1.}"
minor="${minor%%.*}"
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags+=" -X $pkg.gitVersion=$version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
  ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
done
nice -n 19 go build -trimpath -ldflags "$ldflags" -o "$out.tmp" k8s.io/kubernetes/cmd/kube-apiserver >&2
"$out.tmp" --version >&2
mv "$out.tmp" "$out"
cd /
rm -rf "$work"
log "built $out"
echo "$out"
