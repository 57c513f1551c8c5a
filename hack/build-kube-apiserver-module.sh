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
# Without a Go 1.26+ on the machine, any older go (Debian's golang-go) downloads the toolchain module
# golang.org/toolchain@v0.0.1-go$bootstrap_go from the Go module proxy (checksums from sum.golang.org),
# as GOTOOLCHAIN=auto would, into the cache dir.
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
if [ -x "$out" ]; then
  echo "$out"
  exit 0
fi

# Build with exactly the chosen toolchain; never let the go command switch to another one.
export GOTOOLCHAIN=local
export GOCACHE="$cache_root/gocache" GOMODCACHE="$cache_root/gomodcache" GOFLAGS=-mod=mod
export CGO_ENABLED=0 GOWORK=off GO111MODULE=on

# "1.26" from `go env GOVERSION` (go1.26.8, go1.19.8, ...) and whether it is at least $need_go.
go_minor() { "$1" env GOVERSION 2>/dev/null | sed -n 's/^go1\.\([0-9]*\).*/\1/p'; }
go_is_new_enough() { local m; m="$(go_minor "$1")"; [ -n "$m" ] && [ "$m" -ge "${need_go#1.}" ]; }

candidates=()
[ -n "${KIT_GO:-}" ] && candidates+=("$KIT_GO")
command -v go >/dev/null 2>&1 && candidates+=("$(command -v go)")
candidates+=(/usr/local/go/bin/go)
gobin=""
for c in "${candidates[@]}"; do
  if [ -x "$c" ] && go_is_new_enough "$c"; then gobin="$c"; break; fi
done
if [ -z "$gobin" ]; then
  goroot="$cache_root/go$bootstrap_go"
  if [ ! -x "$goroot/bin/go" ]; then
    boot=""
    for c in "${candidates[@]}" /usr/lib/go-*/bin/go; do
      if [ -x "$c" ]; then boot="$c"; break; fi
    done
    if [ -z "$boot" ]; then
      log "no go command found: install Go $need_go+ (https://go.dev/dl/) or Debian's golang-go (make system-deps)"
      exit 1
    fi
    arch="$("$boot" env GOHOSTARCH)"
    log "no Go $need_go+ found; downloading go$bootstrap_go (golang.org/toolchain) with $boot"
    dir="$(cd "$cache_root" && "$boot" mod download -json "golang.org/toolchain@v0.0.1-go$bootstrap_go.linux-$arch" |
           sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
    if [ ! -x "$dir/bin" ]; then
      log "downloading golang.org/toolchain@v0.0.1-go$bootstrap_go.linux-$arch failed"
      exit 1
    fi
    # Module files are read-only and lose their exec bits: copy, then restore them.
    rm -rf "$goroot.tmp"
    cp -R "$dir" "$goroot.tmp"
    chmod -R u+w "$goroot.tmp"
    chmod +x "$goroot.tmp"/bin/* "$goroot.tmp"/pkg/tool/*/*
    mv "$goroot.tmp" "$goroot"
  fi
  gobin="$goroot/bin/go"
fi
go() { "$gobin" "$@"; }

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
