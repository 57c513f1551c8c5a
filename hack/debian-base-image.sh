#!/usr/bin/env bash
# Make the Dockerfile's base image, docker.io/library/debian:bookworm-slim, from Debian's packages:
# `debootstrap --variant=minbase bookworm` from the mirror apt uses here, imported into podman under
# that name, so `podman build` uses it without reaching a registry. The image is cached as an archive
# per day under ~/.cache/kube-ip-tracker/images (a new day bootstraps again with the day's packages;
# older archives are removed), and loaded from there when podman's storage lacks it.
#
#   hack/debian-base-image.sh            # ensure the image is in podman's storage; prints its name
#   hack/debian-base-image.sh --name     # only print the name
#   KIT_BASE_DATE=20261202 hack/...      # the day's key (default: today, UTC)
#   KIT_DEBIAN_MIRROR=http://... hack/...  # default: the first Debian URI of /etc/apt/sources.list*
#
# Needs root (debootstrap, podman's root storage).
set -euo pipefail

IMAGE=${KIT_BASE_IMAGE:-docker.io/library/debian:bookworm-slim}
SUITE=bookworm
DATE=${KIT_BASE_DATE:-$(date -u +%Y%m%d)}
CACHE=${KIT_CACHE_DIR:-$HOME/.cache/kube-ip-tracker}/images
ARCHIVE=$CACHE/debian-$SUITE-minbase-$DATE.tar
LABEL=io.github.kube-ip-tracker.base-date
# shellcheck source=hack/podman.sh
. "$(dirname "$0")/podman.sh"

[ "${1:-}" = --name ] && { echo "$IMAGE"; exit 0; }

die() { echo "debian-base-image: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "needs root (debootstrap and podman's root storage)"
command -v debootstrap >/dev/null || die "debootstrap is missing (make system-deps)"
command -v podman >/dev/null || die "podman is missing (make system-deps)"

mirror() {
  if [ -n "${KIT_DEBIAN_MIRROR:-}" ]; then echo "$KIT_DEBIAN_MIRROR"; return; fi
  # deb822 sources (URIs: ...) first, then one-line sources (deb URI SUITE ...); the Debian archive,
  # not debian-security or third-party repositories.
  local uri
  uri=$(cat /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null \
    | sed -n -e 's/^URIs:[[:space:]]*//p' -e 's/^deb[[:space:]]\+\(\[[^]]*\][[:space:]]\+\)\?\([^[:space:]]\+\)[[:space:]]\+bookworm[[:space:]].*/\2/p' \
    | tr ' ' '\n' | grep -E '/debian/?$' | head -n 1 || true)
  echo "${uri:-http://deb.debian.org/debian}"
}

mkdir -p "$CACHE"
exec 9>"$CACHE/.debian-base.lock"
flock 9   # one bootstrap at a time; the others then load its archive

if [ "$("${PODMAN[@]}" image inspect --format "{{index .Labels \"$LABEL\"}}" "$IMAGE" 2>/dev/null)" = "$DATE" ]; then
  echo "$IMAGE"
  exit 0
fi

if [ ! -s "$ARCHIVE" ]; then
  # The tree, its log and a half-written archive go on any exit: a failure (set -e), Ctrl-C or
  # SIGTERM (bash runs the EXIT trap before it dies of the signal). --one-file-system: never into
  # a /proc or /sys that a failed debootstrap left mounted.
  root=$(mktemp -d /var/tmp/kit-debootstrap.XXXXXX)
  trap 'rm -rf --one-file-system "$root" "$root.log" "$ARCHIVE.partial"' EXIT
  url=$(mirror)
  echo "debian-base-image: debootstrap --variant=minbase $SUITE from $url" >&2
  if ! debootstrap --variant=minbase "$SUITE" "$root" "$url" >"$root.log" 2>&1; then
    tail -n 20 "$root.log" >&2
    rm -f "$root.log"
    die "debootstrap failed (mirror $url; KIT_DEBIAN_MIRROR chooses another)"
  fi
  rm -f "$root.log"
  # As the Docker Hub "slim" image does: no documentation, manual pages or translations (now and
  # for the packages the Dockerfile installs), no package lists or downloaded packages kept.
  cat >"$root/etc/dpkg/dpkg.cfg.d/slim" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/locale/*
EOF
  echo 'APT::Keep-Downloaded-Packages "false";' >"$root/etc/apt/apt.conf.d/docker-clean"
  find "$root/usr/share/doc" -mindepth 1 ! -type d ! -name copyright -delete
  find "$root/usr/share/doc" -mindepth 1 -type d -empty -delete
  rm -rf "$root"/usr/share/{man,groff,info,lintian,locale}/* "$root"/var/lib/apt/lists/* \
    "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb "$root"/var/log/*.log
  tar --numeric-owner -C "$root" -c . \
    | "${PODMAN[@]}" import -q --change 'CMD ["bash"]' --change "LABEL $LABEL=$DATE" - "$IMAGE" >/dev/null
  "${PODMAN[@]}" save -q --format oci-archive -o "$ARCHIVE.partial" "$IMAGE" >/dev/null
  mv "$ARCHIVE.partial" "$ARCHIVE"
  find "$CACHE" -maxdepth 1 -name "debian-$SUITE-minbase-*.tar" ! -name "${ARCHIVE##*/}" -delete
else
  "${PODMAN[@]}" load -q -i "$ARCHIVE" >/dev/null
  # An OCI archive names the image as it was saved; make sure the name is the Dockerfile's.
  id=$("${PODMAN[@]}" images -q --filter "label=$LABEL=$DATE" | head -n 1)
  [ -n "$id" ] || die "$ARCHIVE did not load an image labelled $LABEL=$DATE"
  "${PODMAN[@]}" tag "$id" "$IMAGE"
fi
echo "$IMAGE"
