# slmkit: `make demo` runs the default recipe, `make test` runs the test suite.
# Both start from a bare machine (Python 3.11+, pip, gcc) and set everything up.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
SYSPKG := wordnet-base chromium chromium-driver
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: demo test test-fast sysdeps venv clean bench

demo: $(STAMP) sysdeps
	$(BIN)/slm build

test: $(STAMP) sysdeps
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not real and not browser"

venv: $(STAMP)

# torch is pinned and installed first so that the local CPU wheel is used
# (any other spec pulls several GB of CUDA packages).
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	CMAKE_BUILD_PARALLEL_LEVEL=2 $(BIN)/pip install -q -e ".[dev]"
	touch $@

# Debian packages: WordNet for offline synonyms, Chromium for browser tests.
sysdeps:
	@missing=""; for p in $(SYSPKG); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi; \
	  echo "installing Debian packages:$$missing"; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

clean:
	rm -rf $(VENV) runs .pytest_cache
