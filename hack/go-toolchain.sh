# Shared by the hack/build-*-module.sh scripts (source it, do not run it): find a Go $need_go+ and
# pin the build environment to it.
#
# Before sourcing, set: cache_root (the cache dir), need_go (e.g. 1.26), bootstrap_go (e.g. 1.26.8)
# and define log(). After `kit_go_setup`, $gobin is the go command and `go` calls it.
#
# Candidates, in order: $KIT_GO, `go` on PATH, /usr/local/go/bin/go. Without a Go $need_go+ on the
# machine, any older go (Debian's golang-go) downloads the toolchain module
# golang.org/toolchain@v0.0.1-go$bootstrap_go from the Go module proxy (checksums from
# sum.golang.org), as GOTOOLCHAIN=auto would, into $cache_root.

# "26" from `go env GOVERSION` (go1.26.8, go1.19.8, ...) and whether it is at least $need_go.
go_minor() { "$1" env GOVERSION 2>/dev/null | sed -n 's/^go1\.\([0-9]*\).*/\1/p'; }
go_is_new_enough() { local m; m="$(go_minor "$1")"; [ -n "$m" ] && [ "$m" -ge "${need_go#1.}" ]; }

# Download golang.org/toolchain@v0.0.1-go$bootstrap_go with the go command $1 into $2.
go_download_toolchain() {
  local boot="$1" goroot="$2" arch dir
  arch="$("$boot" env GOHOSTARCH)"
  log "no Go $need_go+ found; downloading go$bootstrap_go (golang.org/toolchain) with $boot"
  dir="$(cd "$cache_root" && "$boot" mod download -json "golang.org/toolchain@v0.0.1-go$bootstrap_go.linux-$arch" |
         sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
  if [ ! -x "$dir/bin" ]; then
    log "downloading golang.org/toolchain@v0.0.1-go$bootstrap_go.linux-$arch failed"
    return 1
  fi
  # Module files are read-only and lose their exec bits: copy, then restore them.
  rm -rf "$goroot.tmp"
  cp -R "$dir" "$goroot.tmp"
  chmod -R u+w "$goroot.tmp"
  chmod +x "$goroot.tmp"/bin/* "$goroot.tmp"/pkg/tool/*/*
  mv "$goroot.tmp" "$goroot"
}

# Sets gobin and the environment every module build uses (shared GOCACHE/GOMODCACHE in $cache_root).
kit_go_setup() {
  # Build with exactly the chosen toolchain; never let the go command switch to another one.
  export GOTOOLCHAIN=local
  export GOCACHE="$cache_root/gocache" GOMODCACHE="$cache_root/gomodcache" GOFLAGS=-mod=mod
  export CGO_ENABLED=0 GOWORK=off GO111MODULE=on

  local candidates=() c boot goroot
  [ -n "${KIT_GO:-}" ] && candidates+=("$KIT_GO")
  command -v go >/dev/null 2>&1 && candidates+=("$(command -v go)")
  candidates+=(/usr/local/go/bin/go)
  gobin=""
  for c in "${candidates[@]}"; do
    if [ -x "$c" ] && go_is_new_enough "$c"; then gobin="$c"; return 0; fi
  done
  goroot="$cache_root/go$bootstrap_go"
  if [ ! -x "$goroot/bin/go" ]; then
    boot=""
    for c in "${candidates[@]}" /usr/lib/go-*/bin/go; do
      if [ -x "$c" ]; then boot="$c"; break; fi
    done
    if [ -z "$boot" ]; then
      log "no go command found: install Go $need_go+ (https://go.dev/dl/) or Debian's golang-go (make system-deps)"
      return 1
    fi
    go_download_toolchain "$boot" "$goroot" || return 1
  fi
  gobin="$goroot/bin/go"
}

go() { "$gobin" "$@"; }
