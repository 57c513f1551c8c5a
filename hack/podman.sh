# Sourced by the image scripts (hack/build-images.sh, hack/debian-base-image.sh): the podman command
# with its global options, as the array PODMAN. KIT_PODMAN_OPTS replaces the default options,
# Debian's runc and the cgroupfs manager (crun fails on hybrid cgroup layouts); the image tests'
# podman commands (kube_ip_tracker/testing/images.py) read the same variable with the same default.
# shellcheck disable=SC2034  # used by the scripts that source this file
read -r -a PODMAN <<<"podman ${KIT_PODMAN_OPTS:---runtime runc --cgroup-manager=cgroupfs}"
