# Two commands matter: `make run` and `make test`. Both create the environment on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# uv installs the same pins from the same index as pip, in seconds rather than minutes (parallel
# downloads matter most on a clean CI machine, whose caches are empty). It lives beside the
# packages (--target), not among them, so the environment holds exactly the requirements.
UV_VERSION := 0.13.9
UV := $(VENV)/uv/bin/uv
INSTALL := $(UV) pip install --quiet --python $(PY)

.PHONY: run test test-unit lint venv clean help

help: ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(STAMP): requirements/base.txt requirements/api.txt requirements/worker.txt requirements/cli.txt requirements/dev.txt pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@test -x $(UV) || $(PY) -m pip install --quiet --disable-pip-version-check --target $(VENV)/uv uv==$(UV_VERSION)
	@$(INSTALL) -r requirements/dev.txt
	@# The project itself, editable and without dependencies (pinned above): the `flexdb` command.
	@$(INSTALL) --no-deps -e .
	@touch $(STAMP)

venv: $(STAMP) ## create .venv and install everything

run: $(STAMP) ## run API + worker + beat locally (Ctrl-C stops all); RUN_ARGS=--no-beat or --flower
	@exec $(PY) -m scripts.run_stack $(RUN_ARGS)

# Coverage of the code the suite runs in its own process (the API, worker and beat it starts as
# processes of their own are measured by what they answer, not here).
COVERAGE := --cov=api --cov=shared --cov=worker --cov=scripts --cov=flexdb_cli --cov-report=term:skip-covered

test: $(STAMP) ## run the whole test suite (starts the servers it needs) and print coverage
	@exec $(PY) -m pytest $(COVERAGE) $(PYTEST_ARGS)

test-unit: $(STAMP) ## only the fast unit tests
	@exec $(PY) -m pytest tests/unit $(PYTEST_ARGS)

lint: $(STAMP) ## static checks (pyflakes-level errors)
	@$(VENV)/bin/ruff check --select F,E9 api shared worker scripts flexdb_cli tests bench

clean: ## remove the environment and local state
	rm -rf $(VENV) var
