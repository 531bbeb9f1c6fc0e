"""Gathering: copy every module's private event store into its stream, exactly once.

``base`` holds the loop, the same for every source (``skips`` the operators' skip
log, ``worker`` the thread a source runs in); ``sql`` the SQLite, PostgreSQL and
MariaDB/MySQL sources (and the gap fence that makes out-of-order commits safe);
``eventsourcing`` the Python ``eventsourcing`` applications; ``manager`` runs them
inside ``herald serve``; ``status`` is what they report. Drivers are imported only
when a configured gatherer needs them.

Rules of this package:

1. A gatherer reaches its stream through the hub only (appends with the configured
   limits, reads, waits), never an engine (the import-linter contract).
2. A source only reads; everything it does that can block runs in its own worker
   thread, never on the event loop.
3. Exactly once comes from the stream, not from a checkpoint: a gatherer resumes
   from the source position stamped on its stream's last event, and appends with
   ``expected_head`` so that two gatherers (two nodes) cannot both append.
4. A source's keys are its own (``settings``, parsed by ``manager``); a row that
   cannot become an event stops the gatherer at it until an operator decides.
"""

from .status import GathererStatus, GatherFailure, GatherSkip, GatherState

__all__ = ["GatherFailure", "GathererStatus", "GatherSkip", "GatherState"]
