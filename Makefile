# Two commands on a fresh machine: `make serve` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: serve test check proof bench clean

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

serve: $(STAMP)
	$(BIN)/herald serve

check: $(STAMP)
	$(BIN)/ruff check herald tests
	$(BIN)/mypy

test: $(STAMP) check
	$(BIN)/pytest -m "not proof"

proof: $(STAMP)
	HERALD_PROOF=1 $(BIN)/pytest -m proof -v

bench: $(STAMP)
	$(BIN)/herald bench

clean:
	rm -rf $(VENV) herald-data .pytest_cache .mypy_cache .ruff_cache
