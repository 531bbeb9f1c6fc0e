# Two commands on a fresh machine: `make serve` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: serve test check proof bench bench-gather bench-peers soak clean system-tools

# The security tests drive real nginx (with its stream module), curl and openssl,
# from Debian's packages. Installed here when missing, so a clean machine and CI
# have them; tests that need a missing one fail under CI=true and skip elsewhere.
SYSTEM_PACKAGES := nginx libnginx-mod-stream curl openssl
NGINX_STREAM_MODULE := /usr/lib/nginx/modules/ngx_stream_module.so

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,bench]'
	touch $(STAMP)

serve: $(STAMP)
	$(BIN)/herald serve

check: $(STAMP)
	$(BIN)/ruff check herald tests bench
	$(BIN)/mypy

system-tools:
	@if command -v nginx >/dev/null && command -v curl >/dev/null \
	    && command -v openssl >/dev/null && [ -e $(NGINX_STREAM_MODULE) ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing $(SYSTEM_PACKAGES) (Debian packages) for the tests"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get update -qq && apt-get install -y -qq --no-install-recommends \
	    $(SYSTEM_PACKAGES) >/dev/null; \
	else \
	  echo "nginx, curl or openssl is missing and apt-get is not usable: their tests skip"; \
	fi

test: $(STAMP) check system-tools
	$(BIN)/pytest -m "not proof"

proof: $(STAMP)
	HERALD_PROOF=1 $(BIN)/pytest -m proof -v

bench: $(STAMP)
	$(BIN)/herald bench

# Gathering: 1,000,000 rows from PostgreSQL (and COPY), commit → subscriber latency.
bench-gather: $(STAMP)
	$(BIN)/herald bench --workloads G1,G2

# Herald beside NATS JetStream, Redis Streams, PostgreSQL, a raw fdatasync'd file and
# loopback TLS (the services at their default local addresses; see `herald bench -h`).
bench-peers: $(STAMP)
	$(BIN)/herald bench --peers

# 10 minutes at half the measured W1 rate with 100 live subscribers (not in `make test`).
soak: $(STAMP)
	$(BIN)/python bench/soak.py

clean:
	rm -rf $(VENV) herald-data .pytest_cache .mypy_cache .ruff_cache
