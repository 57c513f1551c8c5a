# syntax=docker/dockerfile:1
# The two images manifests/install.yaml runs, built from this repository's Python package.
# Their tag is the package version (pyproject.toml):
#
#   docker build --target tracker -t kube-ip-tracker:0.1.0 .
#   docker build --target agent   -t kube-ip-agent:0.1.0 .
#
# docs/deploy.md has the details (pushing to a registry, kind, kustomize).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------------------- wheels
# The package and every dependency as wheels; NetfilterQueue (agent only) is compiled here.
FROM ${PYTHON_IMAGE} AS wheels
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends gcc libc6-dev libnetfilter-queue-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY kube_ip_tracker ./kube_ip_tracker
RUN pip wheel --no-cache-dir --wheel-dir /wheels ".[dataplane]"

# ---------------------------------------------------------------------------- common runtime
FROM ${PYTHON_IMAGE} AS runtime
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# ---------------------------------------------------------------------------- tracker
# Runs as a non-root user; needs no capabilities and no writable root filesystem
# (pip compiles the bytecode at install time).
FROM runtime AS tracker
RUN --mount=type=bind,from=wheels,source=/wheels,target=/wheels \
    pip install --no-index --find-links=/wheels kube-ip-tracker \
 && groupadd --system --gid 65532 kube-ip-tracker \
 && useradd --system --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin kube-ip-tracker
USER 65532:65532
EXPOSE 50051 9090
ENTRYPOINT ["kube-ip-tracker"]

# ---------------------------------------------------------------------------- agent
# Root with NET_ADMIN/NET_RAW only (granted by the DaemonSet): NFQUEUE through libnetfilter-queue,
# rules with nft or iptables, connection cuts with conntrack.
FROM runtime AS agent
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      libnetfilter-queue1 iptables nftables conntrack \
 && rm -rf /var/lib/apt/lists/*
RUN --mount=type=bind,from=wheels,source=/wheels,target=/wheels \
    pip install --no-index --find-links=/wheels "kube-ip-tracker[dataplane]"
EXPOSE 9091
ENTRYPOINT ["kube-ip-agent"]
