"""Report and inbox bookkeeping, without an event loop."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
from hypothesis import given, strategies as st

from agent.protocol import CommandDelivered
from agent.spool import CommandState, Inbox, PendingReports


CID = uuid.uuid4()
AT = datetime(2026, 1, 1, tzinfo=UTC)


def delivered(rid: int) -> CommandDelivered:
    return CommandDelivered(rid=rid, command_id=CID, delivered_at=AT)


class TestPendingReports:
    def test_rids_increase_and_unsent_is_in_order(self) -> None:
        """Reports get consecutive rids and come out oldest first."""
        book = PendingReports()
        made = [book.add(delivered) for _ in range(5)]
        assert [r.rid for r in made] == [0, 1, 2, 3, 4]
        assert book.unsent() == made
        assert book.unsent(limit=2) == made[:2]

    def test_cursor_and_rewind(self) -> None:
        """Sent reports are not sent again on the same connection, but are after rewind."""
        book = PendingReports()
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
        book = PendingReports()
        for _ in range(4):
            book.add(delivered)
        assert book.confirm([0, 2, 99]) == 2
        assert book.confirm([0]) == 0
        assert [r.rid for r in book.unsent()] == [1, 3]
        assert len(book) == 2

    def test_a_report_must_carry_its_rid(self) -> None:
        """A factory that ignores the rid it is given is a bug caught at once."""
        book = PendingReports()
        with pytest.raises(ValueError):
            book.add(lambda rid: delivered(rid + 1))

    def test_empty_book_has_nothing_unsent(self) -> None:
        """An empty book reports nothing to send."""
        assert not PendingReports().has_unsent()

    @given(st.lists(st.tuples(st.booleans(), st.integers(0, 50)), max_size=80))
    def test_nothing_unconfirmed_is_ever_lost(self, ops: list[tuple[bool, int]]) -> None:
        """Whatever is confirmed in whatever order, rewind yields exactly the unconfirmed."""
        book = PendingReports()
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
        inbox.advance(CID, CommandState.FINISHED)
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

    def test_active_lists_queued_and_running_in_arrival_order(self) -> None:
        """Hello announces every command not finished yet."""
        inbox = Inbox()
        ids = [uuid.uuid4() for _ in range(3)]
        for cid in ids:
            inbox.accept(cid)
        inbox.advance(ids[0], CommandState.RUNNING)
        inbox.advance(ids[0], CommandState.FINISHED)
        assert inbox.active() == ids[1:]

    def test_finished_ids_are_bounded_oldest_first(self) -> None:
        """Memory is bounded: the oldest finished ids are forgotten first."""
        inbox = Inbox(max_finished=2)
        ids = [uuid.uuid4() for _ in range(3)]
        for cid in ids:
            inbox.accept(cid)
            inbox.advance(cid, CommandState.RUNNING)
            inbox.advance(cid, CommandState.FINISHED)
        assert inbox.state(ids[0]) is None
        assert inbox.state(ids[2]) is CommandState.FINISHED
        with pytest.raises(ValueError):
            Inbox(max_finished=0)
