# itmflow: `make test` (the whole suite; `make test-fast` without the slow and Ray tests) and
# `make demo` do all the set-up on a fresh machine; `make docs` builds the user guide (docs/,
# mkdocs + material) into site/ with broken links and anchors as errors.
PYTHON ?= python3.11
VENV   ?= .venv
PY      = $(VENV)/bin/python
WEIGHTS ?=
STAMP   = $(VENV)/.installed

.PHONY: test test-fast demo venv browser bench docs docs-serve clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,docs]'
	touch $(STAMP)

venv: $(STAMP)

# Headless Chromium + chromedriver for the web-page test of `itmflow serve` (Debian packages; CI runs
# as root, elsewhere sudo is used when there is one).
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium chromium-driver; }

test: browser $(STAMP)
	$(PY) -m pytest tests -q

# Everything except the tests marked slow or ray (training runs, Ray jobs): the subset to run while working.
test-fast: browser $(STAMP)
	$(PY) -m pytest tests -q -m "not slow and not ray"

demo: $(STAMP)
	$(PY) -m workflows.demo $(if $(WEIGHTS),--weights $(WEIGHTS),)

bench: $(STAMP)
	for b in benchmarks/bench_*.py; do $(PY) $$b || exit 1; done

# The CLI reference and the benchmark tables are generated on every build by docs/hooks.py
# (docs/gen_cli.py walks the typer app, docs/gen_benchmarks.py reads benchmarks/results/*.json).
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict --clean --site-dir site

docs-serve: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs serve --strict

clean:
	rm -rf $(VENV) demo-output site
