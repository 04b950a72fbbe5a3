# itmflow: `make test` and `make demo` do all the set-up on a fresh machine.
PYTHON ?= python3.11
VENV   ?= .venv
PY      = $(VENV)/bin/python
WEIGHTS ?=
STAMP   = $(VENV)/.installed

.PHONY: test demo venv bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest tests -q

demo: $(STAMP)
	$(PY) -m workflows.demo $(if $(WEIGHTS),--weights $(WEIGHTS),)

bench: $(STAMP)
	for b in benchmarks/bench_*.py; do $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) demo-output
