# fedsaga: two commands on a fresh Debian/Ubuntu machine with Python 3.11+:
#   make demo   run the seed's two scenarios on a private local stack
#   make test   unit and integration tests (private mosquitto + redis on free ports)
# Both install what they need first: mosquitto and redis-server from apt when missing, and a
# virtualenv in .venv: the package and the demo's data set for `make demo` (no dev tools),
# the dev tools too for `make test`.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
RUNTIME := $(VENV)/.installed-runtime
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
PYTEST_ARGS ?=

.PHONY: demo test lint deps test-deps venv bench clean

demo: deps $(RUNTIME)
	$(BIN)/fedsaga demo

test: test-deps $(STAMP)
	$(BIN)/pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy schemas federated services edge_client fedsaga deploy

bench: $(STAMP)
	$(BIN)/python bench/numerics.py

# The servers run as private instances started by the tests and the demo; we only need the
# binaries. Debian's packages would also start system services where systemd runs: harmless,
# they use the standard ports and we use free ones. `need` installs from apt each package
# whose command is missing: "command:package ...".
define need
	@missing=""; \
	for pair in $(1); do \
		cmd=$${pair%%:*}; pkg=$${pair#*:}; \
		command -v $$cmd >/dev/null 2>&1 || [ -x /usr/sbin/$$cmd ] || missing="$$missing $$pkg"; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "installing$$missing from apt"; \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get update -q && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; \
	fi
endef

deps:
	$(call need,mosquitto:mosquitto redis-server:redis-server mosquitto_pub:mosquitto-clients)

# The tests also render the round report in a real headless Chromium and check the device
# contract with the AsyncAPI project's own parser (Node.js).
test-deps: deps
	$(call need,chromium:chromium npm:npm node:nodejs)

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ needed")'
	@$(PYTHON) -m venv $(VENV) || { \
		rm -rf $(VENV); echo "python venv module missing: installing python3-venv"; \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get update -q && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv && \
		$(PYTHON) -m venv $(VENV); } || { rm -rf $(VENV); exit 1; }
	$(BIN)/pip install -q --upgrade pip || { rm -rf $(VENV); exit 1; }

# The services, devices and CLI, with the `sim` extra (the digits data the demo trains on)
# and `report` (matplotlib, for `fedsaga round report` in the README).
$(RUNTIME): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[sim,report]'
	@touch $(RUNTIME)

# Everything `make test` needs: the dev extra (it includes sim, privacy and report).
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[dev]'
	@touch $(STAMP) $(RUNTIME)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache .mypy_cache .hypothesis
