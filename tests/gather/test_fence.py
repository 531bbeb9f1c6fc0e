"""The gap fence as an algorithm, against a model of a database (no database).

The model: transactions take increasing ids, then commit or roll back, in any order;
a read sees the committed ids (one snapshot per read); a transaction is "running"
from before it takes its first id until it ends — what pg_locks and innodb_trx show.
Hypothesis interleaves transactions and reads at random; whatever the interleaving,
what the Tail emits must be increasing, and in the end exactly the committed ids.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from herald.gather.sql import GapFence, Guard, Tail


@dataclass
class Database:
    next_id: int = 1
    running: dict[int, list[int]] = field(default_factory=dict)  # transaction → ids
    committed: set[int] = field(default_factory=set)
    transactions: int = 0

    def begin(self) -> None:
        self.transactions += 1
        self.running[self.transactions] = []

    def take(self, which: int) -> None:
        if self.running:
            tx = sorted(self.running)[which % len(self.running)]
            self.running[tx].append(self.next_id)
            self.next_id += 1

    def end(self, which: int, commit: bool) -> None:
        if self.running:
            tx = sorted(self.running)[which % len(self.running)]
            ids = self.running.pop(tx)
            if commit:
                self.committed.update(ids)

    def select(self, after: int | None, limit: int) -> Sequence[tuple[int]]:
        low = 0 if after is None else after
        return [(i,) for i in sorted(self.committed) if i > low][:limit]


class ModelGuard(Guard):
    def __init__(self, db: Database) -> None:
        self.db = db

    def open(self, fence: GapFence) -> None:
        fence.holders = frozenset(self.db.running)
        fence.resolved = not fence.holders

    def check(self, fence: GapFence) -> None:
        assert fence.holders is not None
        fence.holders = frozenset(h for h in fence.holders if h in self.db.running)
        fence.resolved = not fence.holders


# Enough operations that transactions overlap: several open at once, ids taken in
# one order and committed in another, reads in between.
operations = st.lists(
    st.tuples(st.sampled_from(["begin", "begin", "take", "take", "take", "commit", "commit",
                               "rollback", "read", "read"]), st.integers(0, 7)),
    min_size=10, max_size=150)


def first(row: tuple[int]) -> int:
    return row[0]


@settings(max_examples=400, deadline=None)
@given(operations)
def test_every_committed_id_is_emitted_once_in_order(ops: list[tuple[str, int]]) -> None:
    db = Database()
    tail = Tail(ModelGuard(db))
    emitted: list[int] = []

    def read(limit: int) -> None:
        after = emitted[-1] if emitted else None
        result = tail.read(db.select, first, after, limit)
        positions = [row[0] for row in result.rows]
        assert positions == sorted(positions)
        assert not emitted or not positions or positions[0] > emitted[-1]
        # Nothing emitted may ever be preceded by an id that is still running.
        for ids in db.running.values():
            assert all(i > positions[-1] for i in ids) if positions else True
        emitted.extend(positions)

    for op, arg in ops:
        if op == "begin":
            db.begin()
        elif op == "take":
            db.take(arg)
        elif op in ("commit", "rollback"):
            db.end(arg, op == "commit")
        else:
            read(arg % 5 + 1)
    while db.running:
        db.end(0, True)
    for _ in range(len(db.committed) + 10):
        read(3)
    assert emitted == sorted(db.committed)


def test_a_dense_run_needs_no_fence() -> None:
    db = Database()
    db.begin()
    for _ in range(3):
        db.take(0)
    db.end(0, True)

    class Refusing(Guard):
        def open(self, fence: GapFence) -> None:
            fence.holders = frozenset({"someone"})

        def check(self, fence: GapFence) -> None:
            pass

    tail = Tail(Refusing())
    assert tail.read(db.select, first, 0, 10).rows == [(1,), (2,), (3,)]
    assert tail.fence is None


def test_rows_past_a_gap_wait_for_its_holders() -> None:
    db = Database()
    db.begin()
    db.take(0)  # id 1, transaction 1, still running
    db.begin()
    db.take(1)  # id 2, transaction 2
    db.end(1, True)  # commits first
    guard = ModelGuard(db)
    tail = Tail(guard)
    read = tail.read(db.select, first, 0, 10)
    assert (read.rows, read.held) == ([], True)
    assert tail.fence is not None and tail.fence.holders == frozenset({1})
    assert tail.read(db.select, first, 0, 10).rows == []  # still running
    db.end(0, False)  # rolls back: id 1 never comes
    assert tail.read(db.select, first, 0, 10).rows == [(2,)]
    assert tail.fence is None
