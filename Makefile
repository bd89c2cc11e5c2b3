# celery-operator: developer entry points. `make test` works on a fresh machine.
SHELL := /bin/bash
.DEFAULT_GOAL := help
PYTHON ?= python3
# Every Python a target starts writes its bytecode caches (__pycache__: ignored by git and by the images'
# build contexts). On a machine that sets PYTHONDONTWRITEBYTECODE, each of the suite's thousands of Python
# processes would compile every module it imports again: collecting the suite took 9.9 s of CPU against 3.0 s
# with caches, and a worker's `celery` command line 1.1 s against 0.5 s.
unexport PYTHONDONTWRITEBYTECODE
VENV := .venv
PY := $(VENV)/bin/python
# Brokers and Prometheus for tests; the node (containerd, runc, CNI plugins, iptables, conntrack, socat);
# image builds (buildah, mmdebstrap; gcc builds Kubernetes' pause.c statically).
APT_PACKAGES := rabbitmq-server redis-server prometheus openssl util-linux iproute2 \
  containerd runc containernetworking-plugins iptables conntrack socat buildah mmdebstrap gcc libc6-dev \
  chromium chromium-driver

.PHONY: help
help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

.PHONY: system-deps
system-deps: ## Debian packages: RabbitMQ, Redis, Prometheus (installed only when missing)
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "apt-get install$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

# The venv's packages are installed by uv (from PyPI, into the venv; its cache is ~/.cache/uv): the same
# resolution as pip's, in 4 s rather than pip's 30 s on a fresh clone. The system's CA bundle, as pip's.
UV_VERSION := 0.13.9
UV := $(VENV)/bin/uv pip install -q --native-tls --python $(PY)

$(VENV)/.installed: pyproject.toml sample_tasks/pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check 'uv==$(UV_VERSION)'
	$(UV) -e '.[dev]'
	$(UV) --config-settings editable_mode=compat -e ./sample_tasks
	touch $@

.PHONY: venv
venv: $(VENV)/.installed ## the Python environment (.venv) with the operator, dev tools and sample_tasks

.PHONY: binaries
binaries: ## build (once, cached in ~/.cache/celery-operator) the Kubernetes components, etcd, CoreDNS, helm, ...
	bash dev/build-binaries.sh >/dev/null

# The modules shipped into users' pods (operator/celery_operator/runtime/) are type-checked for Python 3.9,
# which mypy 2 no longer targets: the last mypy that does, in a venv of its own (mypy-runtime.ini).
RUNTIME_MYPY_VERSION := 1.20.2
RUNTIME_MYPY := $(VENV)/mypy-py39/bin/mypy

$(RUNTIME_MYPY): $(VENV)/.installed
	test -x $(VENV)/mypy-py39/bin/python || $(VENV)/bin/uv venv -q --python $(PYTHON) $(VENV)/mypy-py39
	$(VENV)/bin/uv pip install -q --native-tls --python $(VENV)/mypy-py39/bin/python 'mypy==$(RUNTIME_MYPY_VERSION)'

.PHONY: keda
keda: ## build (once, cached) KEDA's operator, metrics adapter and webhooks from its Go module (bench only)
	bash dev/build-binaries.sh keda >/dev/null

# mypy's incremental caches live outside the checkout (a fresh clone checks in seconds what it checked
# before); mypy validates every entry against the sources, so a stale or missing cache only costs time.
MYPY_CACHE := $(HOME)/.cache/celery-operator/mypy

.PHONY: lint
lint: venv $(RUNTIME_MYPY) ## ruff, mypy --strict (the pods' modules for Python 3.9 too), import contracts
	$(VENV)/bin/ruff check operator dev tests sample_tasks bench
	$(VENV)/bin/mypy --cache-dir $(MYPY_CACHE)/package
	$(RUNTIME_MYPY) --config-file mypy-runtime.ini --python-executable $(PY) --cache-dir $(MYPY_CACHE)/runtime
	$(VENV)/bin/lint-imports

.PHONY: crds
crds: venv binaries ## regenerate crds/, docs/crd-reference.md and the chart's copies and deploy/ from the schema
	$(PY) -m celery_operator.schema
	bash dev/gen-manifests.sh

.PHONY: test
test: system-deps venv checkov $(RUNTIME_MYPY) ## everything CI runs: install, build, lint, type check, all tests
	@# The images that need nothing from Go build beside the Go binaries (on a fresh machine, minutes of
	@# downloads and unpacking the compiler does not wait for); with both cached, each finds its cache.
	@log=$$(mktemp); PYTHONPATH=dev $(PY) -m localenv images --without-go >"$$log" 2>&1 & images=$$!; \
	$(MAKE) --no-print-directory binaries; built=$$?; \
	wait $$images; imaged=$$?; grep -v '^localhost/' "$$log"; rm -f "$$log"; \
	[ $$built = 0 ] && [ $$imaged = 0 ]
	PY=$(PY) LINT_COMMAND="$(MAKE) --no-print-directory lint" bash dev/run-tests.sh

.PHONY: checkov
checkov: ## checkov in its own venv (its pins clash with pytest's)
	bash dev/install-checkov.sh >/dev/null

.PHONY: up
up: system-deps venv binaries ## start the local cluster: control plane + one kubelet node (state in .local/)
	PYTHONPATH=dev $(PY) -m localenv up

.PHONY: down
down: ## stop what `make up` started, and restore what the node changed on the host
	PYTHONPATH=dev $(PY) -m localenv down

.PHONY: demo
demo: up ## helm-install the operator, run the sample topology and a producer on the local cluster
	PYTHONPATH=dev $(PY) -m localenv demo

.PHONY: bench
bench: system-deps venv binaries keda ## benchmarks (numbers and ratios to a baseline measured in the same run)
	@# KEDA's harness first (installed from its manifests, a ScaledObject scales a Deployment): a broken one fails here
	$(PY) -m pytest -q -p no:cacheprovider -m keda tests/e2e/test_keda.py
	$(PY) bench/poll_cost.py
	$(PY) bench/scale_latency.py
	$(PY) bench/task_metrics.py
	$(PY) bench/scale_in.py
	$(PY) bench/poison.py
	$(PY) bench/quorum_publish.py
	$(PY) bench/probe_cost.py
	$(PY) bench/scale.py
	$(PY) bench/faults.py
	$(PY) bench/keda.py

.PHONY: image
image: system-deps venv binaries ## build every image with buildah (operator, sample-tasks, rabbitmq, redis, ...)
	PYTHONPATH=dev $(PY) -m localenv images
