"""Report, inbox, retention and recovery bookkeeping, without an event loop."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
from hypothesis import given, strategies as st

from fleetgate.agent.spool import (
    EXIT_INTERRUPTED,
    Batch,
    CommandState,
    FinishedEntry,
    Inbox,
    PendingReports,
    Retention,
    interrupted_report,
)
from fleetgate.shared.protocol import CommandDelivered, CommandFinished, CommandRun


CID = uuid.uuid4()
AT = datetime(2026, 1, 1, tzinfo=UTC)


def delivered(rid: int) -> CommandDelivered:
    return CommandDelivered(rid=rid, command_id=CID, delivered_at=AT)


def final(rid: int, command_id: uuid.UUID = CID) -> CommandFinished:
    return CommandFinished(
        rid=rid,
        command_id=command_id,
        handled_at=AT,
        elapsed_time=0.1,
        exit_code=0,
        success=True,
        result="ok\n",
    )


def finish(inbox: Inbox, cid: uuid.UUID, at: float = 0.0, size: int = 0) -> None:
    inbox.accept(cid)
    inbox.advance(cid, CommandState.RUNNING)
    inbox.finish(cid, at=at, size=size, now=at)


class TestPendingReports:
    def test_rids_increase_and_unsent_is_in_order(self) -> None:
        """Reports get consecutive rids and come out oldest first."""
        book = PendingReports(durable=False)
        made = [book.add(delivered) for _ in range(5)]
        assert [r.rid for r in made] == [0, 1, 2, 3, 4]
        assert book.unsent() == made
        assert book.unsent(limit=2) == made[:2]

    def test_cursor_and_rewind(self) -> None:
        """Sent reports are not sent again on the same connection, but are after rewind."""
        book = PendingReports(durable=False)
        for _ in range(4):
            book.add(delivered)
        book.mark_sent(1)
        assert [r.rid for r in book.unsent()] == [2, 3]
        assert book.has_unsent()
        book.mark_sent(3)
        assert not book.has_unsent()
        book.rewind()
        assert [r.rid for r in book.unsent()] == [0, 1, 2, 3]

    def test_confirm_forgets_only_named_reports(self) -> None:
        """Confirmation is per rid, and confirming twice is harmless."""
        book = PendingReports(durable=False)
        for _ in range(4):
            book.add(delivered)
        assert book.confirm([0, 2, 99]) == 2
        assert book.confirm([0]) == 0
        assert [r.rid for r in book.unsent()] == [1, 3]
        assert len(book) == 2

    def test_a_report_must_carry_its_rid(self) -> None:
        """A factory that ignores the rid it is given is a bug caught at once."""
        book = PendingReports(durable=False)
        with pytest.raises(ValueError):
            book.add(lambda rid: delivered(rid + 1))

    def test_empty_book_has_nothing_unsent(self) -> None:
        """An empty book reports nothing to send."""
        assert not PendingReports(durable=False).has_unsent()

    @given(st.lists(st.tuples(st.booleans(), st.integers(0, 50)), max_size=80))
    def test_nothing_unconfirmed_is_ever_lost(self, ops: list[tuple[bool, int]]) -> None:
        """Whatever is confirmed in whatever order, rewind yields exactly the unconfirmed."""
        book = PendingReports(durable=False)
        confirmed: set[int] = set()
        for is_add, rid in ops:
            if is_add:
                book.add(delivered)
            else:
                book.confirm([rid])
                if rid < book.next_rid:  # confirming a rid not yet made is a no-op
                    confirmed.add(rid)
        book.rewind()
        expected = [r for r in range(book.next_rid) if r not in confirmed]
        assert [r.rid for r in book.unsent()] == expected


class TestInbox:
    def test_duplicate_delivery_is_recognised_in_every_state(self) -> None:
        """The same id is refused while queued, running and after finishing."""
        inbox = Inbox()
        assert inbox.accept(CID)
        assert not inbox.accept(CID)
        inbox.advance(CID, CommandState.RUNNING)
        assert not inbox.accept(CID)
        inbox.finish(CID, at=0, size=0, now=0)
        assert not inbox.accept(CID)
        assert inbox.state(CID) is CommandState.FINISHED

    def test_illegal_transitions_raise(self) -> None:
        """States only move forward, one step at a time."""
        inbox = Inbox()
        with pytest.raises(ValueError):
            inbox.advance(CID, CommandState.RUNNING)
        inbox.accept(CID)
        with pytest.raises(ValueError):
            inbox.advance(CID, CommandState.FINISHED)
        with pytest.raises(ValueError):
            inbox.advance(CID, CommandState.QUEUED)
        inbox.finish(CID, at=0, size=0, now=0)
        with pytest.raises(ValueError):
            inbox.finish(CID, at=0, size=0, now=0)

    def test_active_lists_queued_and_running_in_arrival_order(self) -> None:
        """Hello announces every command not finished yet."""
        inbox = Inbox()
        ids = [uuid.uuid4() for _ in range(3)]
        for cid in ids:
            inbox.accept(cid)
        inbox.advance(ids[0], CommandState.RUNNING)
        inbox.finish(ids[0], at=0, size=0, now=0)
        assert inbox.active() == ids[1:]

    def test_finished_ids_are_bounded_oldest_first(self) -> None:
        """Memory is bounded: the oldest finished ids are forgotten first, with the reason."""
        inbox = Inbox(retention=Retention(max_entries=2))
        ids = [uuid.uuid4() for _ in range(3)]
        for cid in ids[:2]:
            finish(inbox, cid)
        inbox.accept(ids[2])
        eviction = inbox.finish(ids[2], at=0, size=0, now=0)
        assert eviction.forgotten == [ids[0]]
        assert eviction.reasons == {"count": 1}
        assert inbox.state(ids[0]) is None
        assert inbox.state(ids[2]) is CommandState.FINISHED

    def test_running_commands_are_never_forgotten(self) -> None:
        """Retention only ever drops finished commands, however old the running ones are."""
        inbox = Inbox(retention=Retention(max_entries=1, max_age=10))
        running = uuid.uuid4()
        inbox.accept(running)
        inbox.advance(running, CommandState.RUNNING)
        finish(inbox, CID, at=0)
        assert inbox.expire(now=1_000_000).forgotten == [CID]
        assert inbox.state(running) is CommandState.RUNNING

    def test_restore_rebuilds_state_and_applies_the_retention(self) -> None:
        """A restart reloads active and finished ids; the oldest beyond the bounds go."""
        inbox = Inbox(retention=Retention(max_entries=10, max_bytes=100, max_age=60))
        old, big, fresh, active = (uuid.uuid4() for _ in range(4))
        inbox.restore(
            [(active, CommandState.RUNNING)],
            [(old, 0.0, 10), (big, 50.0, 200), (fresh, 90.0, 10)],
        )
        eviction = inbox.expire(now=100.0)
        assert eviction.forgotten == [old, big]
        assert eviction.reasons == {"bytes": 2}
        assert inbox.state(fresh) is CommandState.FINISHED
        assert inbox.active() == [active]
        assert inbox.expire(now=151.0).reasons == {"age": 1}
        assert len(inbox) == 1


class TestRetention:
    def test_reasons_in_order_count_bytes_age(self) -> None:
        """The oldest entry goes when any bound is exceeded, and the reason names it."""
        policy = Retention(max_entries=2, max_bytes=100, max_age=60)
        assert policy.reason_to_drop(entries=3, total_bytes=0, oldest_at=0, now=0) == "count"
        assert policy.reason_to_drop(entries=2, total_bytes=101, oldest_at=0, now=0) == "bytes"
        assert policy.reason_to_drop(entries=2, total_bytes=100, oldest_at=0, now=61) == "age"
        assert policy.reason_to_drop(entries=2, total_bytes=100, oldest_at=0, now=60) is None

    @pytest.mark.parametrize(
        "bounds",
        [{"max_entries": 0}, {"max_bytes": -1}, {"max_age": 0}],
    )
    def test_bad_bounds_are_refused(self, bounds: dict[str, float]) -> None:
        """A policy that would forget everything at once is a configuration bug."""
        with pytest.raises(ValueError):
            Retention(**bounds)  # type: ignore[arg-type]

    @given(st.lists(st.tuples(st.integers(0, 1000), st.integers(0, 50)), max_size=60))
    def test_bounds_hold_after_every_finish(self, entries: list[tuple[int, int]]) -> None:
        """Whatever finishes when, count, bytes and age stay within the policy."""
        policy = Retention(max_entries=5, max_bytes=120, max_age=100)
        inbox = Inbox(retention=policy)
        now = 0.0
        kept: dict[uuid.UUID, tuple[float, int]] = {}
        for step, size in entries:
            now += step / 10
            cid = uuid.uuid4()
            inbox.accept(cid)
            kept[cid] = (now, size)
            for gone in inbox.finish(cid, at=now, size=size, now=now).forgotten:
                del kept[gone]
        assert len(kept) <= 5
        assert sum(size for _, size in kept.values()) <= 120 or len(kept) == 0
        assert all(now - at <= 100 for at, _ in kept.values())
        assert all(inbox.state(cid) is CommandState.FINISHED for cid in kept)


class TestDurability:
    def test_only_durable_reports_are_sent(self) -> None:
        """A report is handed to the writer only once the store has it."""
        book = PendingReports()
        for _ in range(3):
            book.add(delivered)
        assert not book.has_unsent()
        book.mark_durable(1)
        assert [r.rid for r in book.unsent()] == [0, 1]
        book.mark_sent(1)
        assert not book.has_unsent()
        book.mark_durable(2)
        assert [r.rid for r in book.unsent()] == [2]

    def test_restore_continues_rids_and_sends_restored_first(self) -> None:
        """After a restart the stored reports go first, and new rids continue above them."""
        book = PendingReports()
        book.restore([delivered(7), final(9)], next_rid=12)
        assert book.next_rid == 12
        assert book.holds_final(CID)
        assert [r.rid for r in book.unsent()] == [7, 9]
        assert book.add(delivered).rid == 12
        with pytest.raises(ValueError):
            PendingReports().restore([delivered(3), delivered(2)])

    def test_rids_continue_when_everything_was_confirmed(self) -> None:
        """An empty outbox on disk still carries the rid counter forward."""
        book = PendingReports()
        book.restore([], next_rid=40)
        assert book.add(delivered).rid == 40

    def test_confirming_the_final_report_releases_it(self) -> None:
        """holds_final tracks the unconfirmed final report of each command."""
        book = PendingReports(durable=False)
        report = book.add(final)
        assert book.holds_final(CID)
        book.confirm([report.rid])
        assert not book.holds_final(CID)

    def test_confirmed_reports_are_skipped_after_a_rewind(self) -> None:
        """Confirmations that arrive for reports not yet re-sent remove them from the queue."""
        book = PendingReports(durable=False)
        for _ in range(4):
            book.add(delivered)
        book.mark_sent(3)
        book.rewind()
        book.confirm([0, 1, 3])
        assert [r.rid for r in book.unsent()] == [2]
        book.mark_sent(2)
        assert not book.has_unsent()


class TestRecovery:
    @pytest.mark.parametrize(
        ("state", "words"),
        [(CommandState.QUEUED, "was not run"), (CommandState.RUNNING, "not run again")],
    )
    def test_an_unfinished_command_becomes_interrupted(
        self, state: CommandState, words: str
    ) -> None:
        """A command left queued or running is finished as interrupted, never re-run."""
        report = interrupted_report(5, CID, state, at=AT)
        assert (report.rid, report.command_id, report.handled_at) == (5, CID, AT)
        assert (report.error_phase, report.exit_code, report.success) == (
            "interrupted",
            EXIT_INTERRUPTED,
            False,
        )
        assert report.message is not None
        assert "restarted" in report.message
        assert words in report.message

    def test_a_finished_command_is_not_interrupted(self) -> None:
        """Only unfinished commands get an interrupted report."""
        with pytest.raises(ValueError):
            interrupted_report(0, CID, CommandState.FINISHED, at=AT)


def test_only_batches_the_agent_acts_on_are_synced() -> None:
    """Confirmations and forgotten ids alone may be lost in a power cut (synchronous=NORMAL,
    never fsynced on their own); a command accepted or running is fsynced before anything
    depends on it; reports are fsynced first when a commit asked for it, else right after."""
    forgettable = Batch(confirmed=[1, 2], forgotten=[CID])
    assert not forgettable.must_sync
    assert not forgettable.must_persist
    running = Batch(confirmed=[1], states=[(CID, CommandState.RUNNING)])
    assert running.must_sync
    assert running.must_persist
    accepted = Batch(accepted=[(CommandRun(command_id=CID, line="true"), AT)])
    assert accepted.must_sync
    # A commit that leaves the sync_first flag set (the default of Spool.commit).
    assert Batch(reports=[delivered(0)], sync_first=True).must_sync
    # Reports of a command already durably running, committed with sync_first=False.
    deferred = Batch(reports=[final(1)], finished=[FinishedEntry(CID, AT, final(1))])
    assert not deferred.must_sync
    assert deferred.must_persist
    # A running state in the same batch: fsynced first, whatever the reports allowed.
    deferred.states.append((uuid.uuid4(), CommandState.RUNNING))
    assert deferred.must_sync
