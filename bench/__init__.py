"""Benchmarks run from a checkout of the repository, not shipped in the package.

Herald's own workloads (W1–W4, G1/G2) are ``herald bench`` (``herald/bench/``), which
an installed Herald runs. What compares Herald with something else lives here, and
uses ``herald.bench`` for the server, the workloads and BENCH.md:

``peers.py``     W1–W4 against NATS JetStream, Redis Streams, a PostgreSQL table, a raw
                 fdatasync'd file and loopback TLS (``make bench-peers``)
``postgres.py``  the postgres engine next to files and the raw-psycopg bound, and the
                 table design (``make bench-postgres``)
``soak.py``      minutes of steady load with live subscribers, RSS and fds watched
                 (``make soak``)
``compare.py``   a commit (default HEAD) against the working tree, W1/W2/W4 on both
                 engines, alternately (``make bench-compare``)

Each runs as a script (``.venv/bin/python bench/peers.py``) or as a module from the
repository's root (``.venv/bin/python -m bench.peers``); ``--help`` for the options.
"""
