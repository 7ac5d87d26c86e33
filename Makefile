# hftpipe: the two commands a newcomer needs are `make demo` and `make test`.
# Everything is installed by these targets into ~/.cache/hftpipe (override with
# HFTPIPE_CACHE_DIR), keyed by version, so a fresh clone on a warm machine is fast.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

HFTPIPE_CACHE_DIR ?= $(HOME)/.cache/hftpipe
export HFTPIPE_CACHE_DIR
# Python's bytecode is cached, under the cache directory rather than in the checkout.
# An environment with PYTHONDONTWRITEBYTECODE (this machine's has it) makes every
# process compile every module it imports again: a worker's imports took 2.65 s
# instead of 0.91 s, paid by each process the demo and the test tiers start.
unexport PYTHONDONTWRITEBYTECODE
export PYTHONPYCACHEPREFIX ?= $(HFTPIPE_CACHE_DIR)/pycache
UV_VERSION := 0.13.9
UV_HOME := $(HFTPIPE_CACHE_DIR)/uv-$(UV_VERSION)
UV := $(UV_HOME)/bin/uv
VENV := .venv
PY := $(VENV)/bin/python
STACK_DIR ?= .stack
# `make demo` runs Kafka (Java and Maven come with the machine image) and Redis only.
DEMO_APT_PACKAGES := redis-server
APT_PACKAGES := $(DEMO_APT_PACKAGES) etcd-server prometheus
# The real node (make cluster-up, tests/node): container runtime, pod network, image builds.
NODE_APT_PACKAGES := containerd runc containernetworking-plugins iptables conntrack buildah \
	debootstrap busybox-static
NODE_COMMANDS := containerd runc iptables conntrack buildah debootstrap busybox

# pytest exits 5 when it collected no test: in this project that is always a
# broken selection or import, never success, so it fails loudly here.
define pytest
	rc=0; $(VENV)/bin/pytest $(1) || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "error: pytest collected no tests for '$(1)'" >&2; exit 1; fi; \
	exit $$rc
endef

.PHONY: help
help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

$(UV):
	@echo "installing uv $(UV_VERSION) into $(UV_HOME)"
	python3 -m venv $(UV_HOME)
	$(UV_HOME)/bin/pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

# The compiled core (core/) is built by cargo during the sync; its build directory is kept
# in the cache, so a fresh clone on a warm machine recompiles only what changed.
export CARGO_TARGET_DIR ?= $(HFTPIPE_CACHE_DIR)/cargo-target
CORE_SOURCES := core/pyproject.toml core/Cargo.toml core/Cargo.lock $(wildcard core/src/*.rs)

$(VENV)/.synced: $(UV) uv.lock pyproject.toml operator/pyproject.toml workers/pyproject.toml devstack/pyproject.toml $(CORE_SOURCES)
	@command -v cargo >/dev/null || { echo "error: cargo (Rust) is not on PATH: it builds the" \
	  "compiled core (core/). Install Rust with rustup, or add ~/.cargo/bin to PATH." >&2; exit 1; }
	$(UV) sync --frozen --all-packages
	@touch $@

.PHONY: venv
venv: $(VENV)/.synced ## install the Python packages from uv.lock into .venv

.PHONY: lock
lock: $(UV) ## re-resolve uv.lock after changing dependencies
	$(UV) lock

.PHONY: system-deps
system-deps: ## install Debian packages the stack needs (redis, etcd, promtool, containerd...)
	@missing=0; for c in redis-server etcd promtool $(NODE_COMMANDS); do \
	  command -v $$c >/dev/null || missing=1; done; \
	[ -x /usr/lib/cni/bridge ] || missing=1; \
	if [ $$missing -eq 0 ]; then \
	  echo "system packages present"; \
	else \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	    $(APT_PACKAGES) $(NODE_APT_PACKAGES); \
	fi

.PHONY: demo-deps
demo-deps: ## install only the Debian package the demo needs (redis-server)
	@if command -v redis-server >/dev/null; then \
	  echo "redis-server present"; \
	else \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	    $(DEMO_APT_PACKAGES); \
	fi

.PHONY: install-stack
install-stack: venv ## install Kafka, Kubernetes, helm, kubeconform into the cache (no start)
	$(PY) -m hftpipe_devstack install

.PHONY: stack-up
stack-up: venv ## start Kafka, Redis, etcd, kube-apiserver, controller-manager; write .stack/env
	$(PY) -m hftpipe_devstack --dir $(STACK_DIR) up

.PHONY: stack-down
stack-down: venv ## stop every process of the local stack
	$(PY) -m hftpipe_devstack --dir $(STACK_DIR) down

.PHONY: cluster-up
cluster-up: system-deps venv ## a real one-node cluster (root): + scheduler, kubelet, containerd, CNI, kube-proxy, CoreDNS
	$(PY) -m hftpipe_devstack --dir $(STACK_DIR) up --cluster

.PHONY: cluster-down
cluster-down: venv ## stop the cluster and undo its node (pods, mounts, interfaces, iptables rules)
	$(PY) -m hftpipe_devstack --dir $(STACK_DIR) down

.PHONY: stack-status
stack-status: venv ## list the local stack's processes
	$(PY) -m hftpipe_devstack --dir $(STACK_DIR) status

.PHONY: demo
demo: demo-deps venv ## replay the shipped BTC bars: Kafka -> Redis + DuckDB, then a report
	$(PY) -m hftpipe_devstack --dir $(STACK_DIR) demo

.PHONY: bench
bench: venv ## benchmark suite (4M generated bars + real BTC bars); writes bench/results/
	$(PY) bench/run.py

.PHONY: manifests
manifests: venv ## regenerate the charts' CRD/RBAC files and k8s/ (raw manifests from the charts)
	$(PY) -m hftpipe_devstack.charts manifests

.PHONY: docs
docs: venv ## regenerate the README's reference tables from the code
	$(PY) -m hftpipe_devstack.docs README.md

.PHONY: fmt
fmt: venv ## format the code
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

.PHONY: lint
lint: venv ## ruff (lint + format check) and mypy --strict
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

.PHONY: test-unit
test-unit: venv ## the service-free tier, in seconds
	@$(call pytest,tests/unit)

.PHONY: test-integration
test-integration: venv ## the integration tier against the real local stack
	@$(call pytest,tests/integration)

.PHONY: test
.PHONY: test-node
test-node: system-deps venv ## the real-node tier alone (root): a one-node cluster, the sample end to end
	@$(call pytest,tests/node)

test: system-deps lint ## lint, type checks, then every test tier against the real stack
	$(PY) -m hftpipe_devstack install
	@$(call pytest,tests/unit tests/integration)
	@# Its own run: its cluster (a second API server and broker) is not up beside the
	@# other tiers' stack on a 2-core machine.
	@$(call pytest,tests/node)
