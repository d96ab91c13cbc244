# The two commands a newcomer types: `make run` and `make test`. Both build .venv first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: venv bytecode run test unit integration lint bench monitoring clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

# drd's own modules compiled ahead, as a pip install does: every drd command is a new process,
# and with PYTHONDONTWRITEBYTECODE set (as on CI machines) each one would otherwise recompile
# the package from source at start (about a second on a slow machine). Up-to-date files are
# skipped, so this is cheap.
bytecode: $(STAMP)
	$(PY) -m compileall -q drd bench

# The daemon on the embedded default: two local-directory regions, demo SQLite + files sources.
# Without DRD_KEYS in the environment an ephemeral key is generated for this run only (held in
# memory, never written): export DRD_KEYS="$$(.venv/bin/drd keygen)" to keep backups readable
# across runs.
run: bytecode
	$(PY) -m drd.cli.demo_setup
	@[ -n "$${DRD_KEYS:-}" ] || echo "note: DRD_KEYS is not set: this run uses an ephemeral key, and its backups become unreadable when it stops (see README)."
	DRD_KEYS="$${DRD_KEYS:-$$($(VENV)/bin/drd keygen --quiet)}" $(VENV)/bin/drd run --config drd.yaml

test: bytecode
	bash monitoring/ensure-promtool.sh >/dev/null
	$(PY) -m pytest

unit: bytecode
	$(PY) -m pytest tests/unit

integration: bytecode
	$(PY) -m pytest tests/integration

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

# The monitoring kit with its one setting, the address RUNBOOK.md is published at, written to
# monitoring/build/ (alerts, dashboard, Prometheus and Alertmanager examples):
#   make monitoring RUNBOOK_URL=https://git.corp.internal/sre/drd/-/blob/main/monitoring/RUNBOOK.md
monitoring:
	@[ -n "$(RUNBOOK_URL)" ] || { echo "make monitoring RUNBOOK_URL=<where RUNBOOK.md is published>" >&2; exit 2; }
	$(PYTHON) monitoring/render.py --runbook-url "$(RUNBOOK_URL)" --out monitoring/build

bench: bytecode
	$(PY) -m bench

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .drd
