"""Gathering: copy every module's private event store into its stream, exactly once.

``base`` holds the loop, the same for every source (``skips`` the operators' skip
log, ``worker`` the thread a source runs in); ``sql`` the SQLite, PostgreSQL and
MariaDB/MySQL sources (and the gap fence that makes out-of-order commits safe);
``eventsourcing`` the Python ``eventsourcing`` applications; ``manager`` runs them
inside ``herald serve``; ``status`` is what they report. Drivers are imported only
when a configured gatherer needs them.
"""

from .status import GathererStatus, GatherFailure, GatherSkip, GatherState

__all__ = ["GatherFailure", "GathererStatus", "GatherSkip", "GatherState"]
