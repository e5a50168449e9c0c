# Two commands do all the set-up on a fresh machine:
#   make run   - virtualenv, install, control plane on loopback with a local agent connected
#   make test  - virtualenv, install, Debian packages the tests need, lint, types, tests
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# Debian packages the tests and benchmarks use (peers and tools), installed when missing.
DEBS   := passwd sudo postgresql haproxy gcc libc6-dev openssh-server openssh-client procps systemd dpkg-dev rpm python3-venv iperf3 socat asciinema nodejs chromium chromium-driver rsync openssh-sftp-server
# npm: Debian's package, unless the installed nodejs already brings its own npm.
DEBS   += $(if $(shell command -v npm),,npm)
# The console's front-end (console/): built from the pinned npm packages into static files
# the Python package serves (git-ignored); rebuilt when a source is newer.
CONSOLE_DIST := src/fleetgate/controlplane/console/static/dist/console.js
CONSOLE_SRC  := $(wildcard console/src/*) console/package.json console/package-lock.json console/build.mjs

.PHONY: run test lint typecheck unit schema debs clean bench package console screenshots

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[controlplane,agentctl,test,lint]'
	touch $(STAMP)

run: $(STAMP) console
	$(VENV)/bin/fleetgate-controlplane dev

console: $(CONSOLE_DIST)

$(CONSOLE_DIST): $(CONSOLE_SRC)
	@command -v npm >/dev/null || $(MAKE) debs
	cd console && npm ci --no-audit --no-fund && npm run build
	touch $@

# docs/console/*.png: every page of the console, taken by the browser the tests use.
screenshots: $(STAMP) debs console
	$(PY) -m tests.support.screenshots docs/console

debs:
	@missing=$$(for p in $(DEBS); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ]; then \
			echo "installing Debian packages: $$missing"; \
			DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
			DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
		else \
			echo "not root: cannot install $$missing; tests that need them will be skipped"; \
		fi; \
	fi

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

typecheck: $(STAMP)
	$(VENV)/bin/mypy

test: $(STAMP) debs console lint typecheck
	$(VENV)/bin/pytest

unit: $(STAMP)
	$(VENV)/bin/pytest tests/unit

schema: $(STAMP)
	$(PY) -m fleetgate.shared.protocol.schema > docs/protocol.schema.json

# dist/fleetgate-agent_<version>_<arch>.deb, and dist/fleetgate-agent-<version>-1.<arch>.rpm when
# rpmbuild is installed (packaging/build).
package: $(STAMP) debs
	packaging/build dist

bench: $(STAMP) debs
	for b in bench/*; do [ -x "$$b" ] && [ -f "$$b" ] && "$$b"; done

clean:
	rm -rf $(VENV) .dev .mypy_cache .ruff_cache .pytest_cache dist console/node_modules src/fleetgate/controlplane/console/static/dist
