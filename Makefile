# Two commands on a fresh machine: `make serve` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: serve test check proof bench bench-gather bench-peers bench-postgres bench-compare \
	soak clean system-tools azurite bench-instructions

# The security tests drive real nginx (with its stream module), curl and openssl;
# the fault tests strace (to hold Herald at a chosen system call and kill it there,
# or make the call fail), faketime (to jump its clock) and mkfs.ext4 (a small
# filesystem to fill). All from Debian's packages, installed here when missing, so
# a clean machine and CI have them; tests that need a missing one fail under CI=true
# and skip elsewhere.
SYSTEM_PACKAGES := nginx libnginx-mod-stream curl openssl strace faketime e2fsprogs
SYSTEM_COMMANDS := nginx curl openssl strace faketime mkfs.ext4
NGINX_STREAM_MODULE := /usr/lib/nginx/modules/ngx_stream_module.so

# setup.py builds herald/_shape.c (the number check's prefilter in C, optional).
$(STAMP): pyproject.toml setup.py herald/_shape.c
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,bench]'
	touch $(STAMP)

serve: $(STAMP)
	$(BIN)/herald serve

check: $(STAMP)
	$(BIN)/ruff check herald tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports

system-tools:
	@missing=""; \
	for tool in $(SYSTEM_COMMANDS); do \
	  PATH="$$PATH:/usr/sbin:/sbin" command -v $$tool >/dev/null || missing="$$missing $$tool"; \
	done; \
	[ -e $(NGINX_STREAM_MODULE) ] || missing="$$missing nginx-stream-module"; \
	if [ -z "$$missing" ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing $(SYSTEM_PACKAGES) (Debian packages) for the tests"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get update -qq && apt-get install -y -qq --no-install-recommends \
	    $(SYSTEM_PACKAGES) >/dev/null; \
	else \
	  echo "missing:$$missing, and apt-get is not usable: their tests skip"; \
	fi

# Azurite, the Azure Storage emulator the azure-blob and azure-table engines' tests run
# against: pinned in tools/azurite/package-lock.json, installed from the npm registry
# with `npm ci` (reinstalled when the lock changes). tests/azuretools.py starts one per
# test session on free ports, data in a temporary directory, never with --loose (it
# would silently ignore If-Match). Without node/npm its tests skip (fail under CI=true).
AZURITE_DIR := tools/azurite
AZURITE_STAMP := $(AZURITE_DIR)/node_modules/.installed

$(AZURITE_STAMP): $(AZURITE_DIR)/package.json $(AZURITE_DIR)/package-lock.json
	@if command -v npm >/dev/null; then \
	  cd $(AZURITE_DIR) && npm ci --no-audit --no-fund --loglevel=error && touch node_modules/.installed; \
	else \
	  echo "npm is missing: the Azure engines' tests skip (apt-get install nodejs npm)"; \
	fi

azurite: $(AZURITE_STAMP)

test: $(STAMP) check system-tools azurite
	$(BIN)/pytest -m "not proof"

proof: $(STAMP)
	HERALD_PROOF=1 $(BIN)/pytest -m proof -v

bench: $(STAMP)
	$(BIN)/herald bench

# Gathering: 1,000,000 rows from PostgreSQL (and COPY), commit → subscriber latency.
bench-gather: $(STAMP)
	$(BIN)/herald bench --workloads G1,G2

# The rest run from this checkout (bench/, not part of the installed package).
# Herald beside NATS JetStream, Redis Streams, PostgreSQL, a raw fdatasync'd file and
# loopback TLS (the services at their default local addresses; see `bench/peers.py -h`).
bench-peers: $(STAMP)
	$(BIN)/python bench/peers.py

# Both engines' W1–W4, the raw-psycopg PostgreSQL bound beside them, the table design.
bench-postgres: $(STAMP)
	$(BIN)/python bench/postgres.py

# COMMIT (default HEAD) against the working tree: W1, W2, W4 on both engines, the two
# sides alternately, ROUNDS times; BENCH.md's "Redesign: before vs after" section.
COMMIT ?= HEAD
ROUNDS ?= 3
bench-compare: $(STAMP)
	$(BIN)/python bench/compare.py --commit $(COMMIT) --rounds $(ROUNDS)

# The same before and after in instructions (valgrind's callgrind), server and client:
# what the workloads cost the CPU, the same count whatever the machine's noise.
bench-instructions: $(STAMP)
	$(BIN)/python bench/instructions.py --commit $(COMMIT)

# 10 minutes at half the measured W1 rate with 100 live subscribers, each on a stream of
# its own; then 10 more with all of them on one stream (not in `make test`).
soak: $(STAMP)
	$(BIN)/python bench/soak.py
	$(BIN)/python bench/soak.py --fan-out

clean:
	rm -rf $(VENV) herald-data .pytest_cache .mypy_cache .ruff_cache
