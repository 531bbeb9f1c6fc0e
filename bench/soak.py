"""The soak (not part of ``make test``): a real ``herald serve`` for 10 minutes at
half the measured W1 rate with 100 live subscribers, its RSS and open file
descriptors sampled every second; writes docs/soak.csv, docs/soak.png and BENCH.md's
``## Soak`` section. The code is ``herald/bench/soak.py``.

    .venv/bin/python bench/soak.py                      # the full soak
    .venv/bin/python bench/soak.py --minutes 2 --rate 20000 --subscribers 20
"""

import sys

from herald.bench.soak import main

if __name__ == "__main__":
    sys.exit(main())
