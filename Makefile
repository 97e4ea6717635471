# One-command entry points for a fresh machine (see README.md).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install system-deps test test-quick lint main clean

# Fashion-MNIST for the offline main job comes from Debian's registry (/usr/share/datasets/fashion-mnist).
system-deps:
	@dpkg -s dataset-fashion-mnist >/dev/null 2>&1 || \
		{ apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null; }
# Chromium and its WebDriver for the demo's real-browser test (tests/test_demo_browser.py).
	@{ dpkg -s chromium >/dev/null 2>&1 && dpkg -s chromium-driver >/dev/null 2>&1; } || \
		{ apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null; }

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# constraints.txt pins the CPU build of torch, so no multi-GB CUDA wheel is pulled.
install: $(BIN)/python system-deps
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[test]"

# pytest-xdist workers (one torch thread each); tests sharing an expensive fixture share a worker (tests/conftest.py).
TEST_WORKERS ?= 2
PYTEST := $(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadgroup

# The whole suite, then the 25 slowest tests.
test: install
	$(BIN)/python -m ruff check .
	$(PYTEST) --durations=25

# The quick tier for the edit-test loop (a few minutes): no subprocess, no real backbone (`slow` in setup.cfg).
test-quick:
	@$(BIN)/python -c "import peft_vision_lora, xdist" 2>/dev/null || $(MAKE) install
	$(PYTEST) -m "not slow" --durations=10

# The offline main job: default backbone from PyPI, LoRA on Fashion-MNIST, evaluation, pipeline predictions.
main: install
	$(BIN)/python examples/offline_main_job.py --output_dir runs/fashion-mnist-lora

lint: install
	$(BIN)/python -m ruff check .
	$(BIN)/python -m ruff format --check peft_vision_lora

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
