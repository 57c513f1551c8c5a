# The two images manifests/install.yaml runs, built from this repository's Python package on
# Debian 12 and Debian's python3. Their tag is the package version (pyproject.toml):
#
#   hack/build-images.sh        # = podman build --target tracker -t localhost/kube-ip-tracker:0.1.0 .
#                               #   podman build --target agent   -t localhost/kube-ip-agent:0.1.0 .
#
# The base can be made from Debian's packages (hack/debian-base-image.sh: debootstrap, then
# `podman import` under this name), so no registry is needed. docs/deploy.md has the details.
FROM docker.io/library/debian:bookworm-slim AS base
ENV LANG=C.UTF-8 \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 ca-certificates \
 && rm -rf /var/lib/apt/lists/*

# ---------------------------------------------------------------------------- requirements
# The dependencies, pinned as pyproject.toml pins them, as requirement files: the build copies
# these rather than pyproject.toml, so a change elsewhere in pyproject.toml (or of the code alone)
# keeps the layers that download and install them.
FROM base AS requirements
WORKDIR /src
COPY pyproject.toml ./
RUN python3 -c 'import tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]; \
print("\n".join(p["dependencies"]), file=open("tracker.txt", "w")); \
print("\n".join(p["optional-dependencies"]["dataplane"]), file=open("dataplane.txt", "w"))'

# ---------------------------------------------------------------------------- build
# One virtual environment per image, on Debian's python3, without pip: the build environment's pip
# installs into them (pip --python). NetfilterQueue (the agent's dataplane extra) is compiled here.
FROM base AS build
# pip's CA bundle: the build stage's own by default; hack/build-images.sh mounts the host's there
# (so a build behind a TLS-inspecting proxy works) without it entering any layer.
ARG PIP_CERT=/etc/ssl/certs/ca-certificates.crt
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      python3-venv python3-dev gcc libc6-dev libnetfilter-queue-dev \
 && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/build \
 && /opt/build/bin/pip install -q "pip==25.3" "setuptools==84.2.1" "wheel==0.45.1" \
 && python3 -m venv --without-pip /opt/kube-ip-tracker \
 && python3 -m venv --without-pip /opt/kube-ip-agent
WORKDIR /src
COPY --from=requirements /src/tracker.txt /src/dataplane.txt ./
RUN /opt/build/bin/pip wheel -q --wheel-dir /wheels -r tracker.txt -r dataplane.txt \
 && /opt/build/bin/pip --python /opt/kube-ip-tracker/bin/python install -q --no-index --find-links /wheels -r tracker.txt \
 && /opt/build/bin/pip --python /opt/kube-ip-agent/bin/python install -q --no-index --find-links /wheels \
      -r tracker.txt -r dataplane.txt
COPY pyproject.toml README.md ./
COPY kube_ip_tracker ./kube_ip_tracker
RUN /opt/build/bin/pip wheel -q --no-deps --no-build-isolation --wheel-dir /pkg . \
 && /opt/build/bin/pip --python /opt/kube-ip-tracker/bin/python install -q --no-deps /pkg/*.whl \
 && /opt/build/bin/pip --python /opt/kube-ip-agent/bin/python install -q --no-deps /pkg/*.whl

# ---------------------------------------------------------------------------- tracker
# Runs as a non-root user; needs no capabilities and no writable root filesystem
# (pip compiles the bytecode at install time).
FROM base AS tracker
RUN groupadd --system --gid 65532 kube-ip-tracker \
 && useradd --system --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin kube-ip-tracker
COPY --from=build /opt/kube-ip-tracker /opt/kube-ip-tracker
ENV PATH=/opt/kube-ip-tracker/bin:$PATH
USER 65532:65532
EXPOSE 50051 9090
ENTRYPOINT ["kube-ip-tracker"]

# ---------------------------------------------------------------------------- agent
# Root with NET_ADMIN/NET_RAW only (granted by the DaemonSet): NFQUEUE through libnetfilter-queue,
# rules with nft or iptables, connection cuts with conntrack.
FROM base AS agent
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      libnetfilter-queue1 iptables nftables conntrack \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /opt/kube-ip-agent /opt/kube-ip-agent
ENV PATH=/opt/kube-ip-agent/bin:$PATH
EXPOSE 9091
ENTRYPOINT ["kube-ip-agent"]
