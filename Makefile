# kube-ip-tracker developer commands. `make help` lists them.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PYTHON := $(BIN)/python
CLUSTERS ?= 2

.PHONY: help setup install system-deps kube-apiserver cert-manager proto test test-images test-all images lint demo bench clusters clean

help:
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -e 's/:.*## /\t/'

system-deps: ## install Debian packages (etcd, Go, netfilter tools); needs root
	hack/install-system-deps.sh

$(VENV)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q -e '.[test]'
	@if [ -e /usr/include/libnetfilter_queue/libnetfilter_queue.h ]; then $(BIN)/pip install -q -e '.[dataplane]'; \
	  else echo "note: libnetfilter-queue-dev missing; dataplane extra not installed (run 'make system-deps' as root)"; fi
	touch $@

install: $(VENV)/.installed ## create the venv and install the package (editable) with test tools

kube-apiserver: system-deps ## build (once) and cache kube-apiserver from Go modules (KIT_KUBE_APISERVER=debian: Debian's 1.20 too)
	@hack/build-kube-apiserver-module.sh >/dev/null
	@if [ "$${KIT_KUBE_APISERVER:-module}" = debian ]; then hack/build-kube-apiserver.sh >/dev/null; fi

cert-manager: system-deps ## build (once) and cache a cert-manager controller and its CRDs from the Go module (tests of the cert-manager overlay)
	@hack/build-cert-manager.sh >/dev/null

setup: system-deps kube-apiserver cert-manager install ## everything the tests and the demo need

proto: install ## regenerate kube_ip_tracker/api/ from protos/
	$(PYTHON) -m kube_ip_tracker.api.generate

test: setup ## run the test suite (real API servers; root-only tests skip without root)
	$(PYTHON) -m pytest -q --durations=15

test-images: setup ## build both images with podman and run them (tests marked images; needs root)
	$(PYTHON) -m pytest -q -m images --durations=5

images: system-deps ## build localhost/kube-ip-tracker and localhost/kube-ip-agent with podman (needs root)
	hack/build-images.sh

test-all: setup ## the test suite including slow and image tests
	$(PYTHON) -m pytest -q -m ''

lint: install ## ruff
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clusters: setup ## start $(CLUSTERS) local clusters and wait (Ctrl-C stops them)
	$(PYTHON) -m kube_ip_tracker.testing.clusters up --count $(CLUSTERS)

demo: ## the local multi-cluster demo (needs root: network namespaces, iptables, NFQUEUE; DEMO_ARGS=--staged adds the staged-policy steps)
	@[ "$$(id -u)" = 0 ] || { echo "make demo needs root (network namespaces, iptables, NFQUEUE): run it as root" >&2; exit 1; }
	@$(MAKE) --no-print-directory setup
	$(PYTHON) -m kube_ip_tracker.demo $(DEMO_ARGS)

bench: setup ## benchmarks (BENCH_ARGS="index --quick" for a subset); writes bench/results/*.json and docs/benchmarks.md
	$(PYTHON) -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
