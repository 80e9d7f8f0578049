# fedsaga: two commands on a fresh Debian/Ubuntu machine with Python 3.11+:
#   make demo   run the seed's two scenarios on a private local stack
#   make test   unit and integration tests (private mosquitto + redis on free ports)
# Both install what they need first: mosquitto and redis-server from apt when missing, and a
# virtualenv in .venv with the package and its dev tools.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
PYTEST_ARGS ?=

.PHONY: demo test lint deps venv bench clean

demo: deps $(STAMP)
	$(BIN)/fedsaga demo

test: deps $(STAMP)
	$(BIN)/pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy schemas federated services edge_client fedsaga deploy

bench: $(STAMP)
	$(BIN)/python bench/numerics.py

# The servers run as private instances started by the tests and the demo; we only need the
# binaries. Debian's packages would also start system services where systemd runs: harmless,
# they use the standard ports and we use free ones. The tests also need Chromium (the round
# report is checked in a real headless browser) and Node.js with npm (the device contract is
# checked by the AsyncAPI project's own parser).
deps:
	@missing=""; \
	command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || missing="$$missing mosquitto"; \
	command -v redis-server >/dev/null 2>&1 || [ -x /usr/bin/redis-server ] || missing="$$missing redis-server"; \
	command -v mosquitto_pub >/dev/null 2>&1 || missing="$$missing mosquitto-clients"; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	command -v npm >/dev/null 2>&1 || missing="$$missing nodejs npm"; \
	if [ -n "$$missing" ]; then \
		echo "installing$$missing from apt"; \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get update -q && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; \
	fi

venv: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ needed")'
	@[ -x $(BIN)/python ] || $(PYTHON) -m venv $(VENV) || { \
		echo "python venv module missing: installing python3-venv"; \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv && \
		$(PYTHON) -m venv $(VENV); }
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	@touch $(STAMP)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache .mypy_cache .hypothesis
