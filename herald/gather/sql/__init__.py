"""SQL sources: an event table or an outbox in SQLite, PostgreSQL or MariaDB/MySQL.

Rows are read by an increasing integer column (``position``) in pages::

    SELECT position, type, data, id, meta FROM table
    WHERE position > :after ORDER BY position LIMIT :limit

— or through a custom ``query`` wrapped the same way. Tailing by an auto-increment
column is a trap: transactions take ids in one order and commit in another, so a
reader that has seen id 7 may later find an id 6 committed after it. ``GapFence``
is how Herald reads only rows that can no longer be preceded by a late commit;
docs/architecture.md ("Gathering") gives the argument. In short:

* a row is safe when every position between the last gathered one and it is
  present (the positions are dense: nothing can come in between);
* past a gap, rows wait until every transaction that could still fill it has
  ended: those running when the gap was seen (PostgreSQL: the transactions holding
  a write lock on the table or its sequences, from ``pg_locks``; MariaDB: every
  InnoDB transaction, from ``information_schema.innodb_trx``). Then the positions up
  to the gap's fence are final, and a fresh read gathers what did commit;
* SQLite has one writer at a time: ids commit in the order they are taken.

The package::

    source.py    the part the three sources share: their common keys, mapping a row
                 to an event, reading a table or a query in pages
    fence.py     the gap fence: reading in position order when commits are not
    sqlite.py    SQLite
    postgres.py  PostgreSQL: the fence asks pg_locks; LISTEN for a wake-up
    mysql.py     MariaDB/MySQL: the fence asks information_schema.innodb_trx
"""

from .fence import GapFence, Guard, Tail
from .mysql import MysqlSettings, MysqlSource
from .postgres import PostgresSettings, PostgresSource, pg_describe
from .source import CONNECT_TIMEOUT_SECONDS, START, SqlSettings, SqlSource, row_event
from .sqlite import SqliteSettings, SqliteSource

__all__ = [
    "GapFence",
    "Guard",
    "Tail",
    "SqlSettings",
    "SqliteSettings",
    "PostgresSettings",
    "MysqlSettings",
    "SqlSource",
    "SqliteSource",
    "PostgresSource",
    "MysqlSource",
    "START",
    "CONNECT_TIMEOUT_SECONDS",
    "pg_describe",
    "row_event",
]
