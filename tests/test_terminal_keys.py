"""`cursor-grpc watch` as a tutor uses it: keys go into the terminal, the
test reads the screen it renders. Most run against the view's own model
(WatchReaders updates and feed events synthesized, the calls keys make
answered by a fake); one drives a real server. docs/terminal.md shows the
screen `tutor_view` renders, checked here."""

from __future__ import annotations

import asyncio
import contextlib
import os
import pty
import re
import termios
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc import aio
from rich.console import Console

from cursor.v1 import admin_service_pb2 as apb
from cursor.v1 import consultant_service_pb2 as cpb
from cursor.v1 import reader_service_pb2 as rpb
from cursor.v1 import resources_pb2 as pb
from cursor_grpc.watch_view import (
    KEY_HELP,
    KeyDecoder,
    ReaderDetails,
    Screen,
    Terminal,
    WatchClient,
    WatchModel,
    WatchView,
    benchmark,
    keyboard,
)
from tests.conftest import PASSWORD, Harness
from tests.test_watch_view import (
    _event,
    batch,
    message,
    new_consultant_email,
    readers_batch,
    record,
    snapshot_reader,
    update,
)

NS = 1_000_000_000
ME = "consultants/me"
OTHER = "consultants/7f3a9c21"
NOW_S = 1_750_000_000.0
DOCS = Path(__file__).resolve().parents[1] / "docs" / "terminal.md"


class Clock:
    """The terminal's clock, moved by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def signal(reader: str, n: int, rule: int, raised_s: float, summary: str, taken_by: str = "",
           state_: int = pb.ATTENTION_STATE_OPEN) -> pb.AttentionSignal:
    made = pb.AttentionSignal(name=f"{reader}/attentionSignals/s{n}", reader=reader, rule=rule, state=state_,
                              summary=summary, acknowledged_by=taken_by)
    made.raise_time.FromNanoseconds(int(raised_s * NS))
    return made


def attention(event_id: int, at_s: float, changed: pb.AttentionSignal) -> pb.ActivityEvent:
    return _event(event_id, changed.reader, pb.EVENT_KIND_ATTENTION_CHANGED, at_s, changed.summary,
                  attention=changed)


def email_of(display: str) -> str:
    return f"{display.lower().replace(' ', '.')}@example.com"


def look_up_profiles(model: WatchModel) -> None:
    """What the client's resolver does (GetReader): the profiles, emails
    included, of the readers the model asks for."""
    for name in model.take_unresolved(1000):
        model.apply_profile(pb.Reader(name=name, display_name=model.readers[name].display_name,
                                      email=email_of(model.readers[name].display_name)))


@dataclass
class FakeActions:
    """Answers the calls keys make as a server would, and remembers them."""

    model: WatchModel
    only_my_readers: bool = False
    sent: list[tuple[str, str]] = field(default_factory=list)
    marked: list[str] = field(default_factory=list)
    acknowledged: list[str] = field(default_factory=list)
    opened: list[str] = field(default_factory=list)
    refuse: grpc.StatusCode | None = None

    def set_only_my_readers(self, only: bool) -> None:
        self.only_my_readers = only

    def _check(self) -> None:
        if self.refuse is not None:
            raise aio.AioRpcError(self.refuse, aio.Metadata(), aio.Metadata(), details="Method not found!")

    async def send_message(self, reader: str, body: str) -> pb.Message:
        self._check()
        self.sent.append((reader, body))
        return pb.Message(body=body, direction=pb.MESSAGE_DIRECTION_TO_READER, author=ME)

    async def mark_read(self, reader: str) -> pb.MessageRead:
        self._check()
        self.marked.append(reader)
        return pb.MessageRead(reader=reader, participant=ME, last_read_sequence=10_000)

    async def acknowledge(self, name: str) -> pb.AttentionSignal:
        self._check()
        self.acknowledged.append(name)
        row = self.model.readers[name.split("/attentionSignals/")[0]]
        taken = pb.AttentionSignal()
        taken.CopyFrom(row.signals[name])
        taken.acknowledged_by = ME
        return taken

    async def reader_details(self, reader: str) -> ReaderDetails:
        self._check()
        self.opened.append(reader)
        row = self.model.readers[reader]
        asked = pb.Message(direction=pb.MESSAGE_DIRECTION_FROM_READER, author=reader, sequence=5,
                           body="I don't get question 4")
        asked.create_time.FromNanoseconds(int((NOW_S - 100) * NS))
        answered = pb.Message(direction=pb.MESSAGE_DIRECTION_TO_READER, author=ME, sequence=6,
                              body="Look at the example above it")
        answered.create_time.FromNanoseconds(int((NOW_S - 50) * NS))
        history = [pb.Interaction(type="answer", summary=f"question {n}: no", sequence=n) for n in (4, 3)]
        for n, item in enumerate(history):
            item.create_time.FromNanoseconds(int((NOW_S - 60 - 30 * n) * NS))
        return ReaderDetails(pb.Reader(name=reader, display_name=row.display_name, email=email_of(row.display_name)),
                             list(row.signals.values()), history, [answered, asked], [])


ANN_STUCK = signal("readers/ann", 1, pb.ATTENTION_RULE_STUCK, NOW_S - 360, "stuck on step 7 for 6 min")
BOB_HELP = signal("readers/bob", 4, pb.ATTENTION_RULE_ASKED_FOR_HELP, NOW_S - 12, "wrote to the consultants")


def tutor_model() -> WatchModel:
    """Seven readers from a WatchReaders snapshot: two with signals nobody
    took, two with taken ones, one with unread messages, two quiet; then a
    message and a signal on the WatchActivity stream, and the round of
    updates that follows (four readers acted)."""
    model = WatchModel(me=ME, dashboard=True)
    model.begin_snapshot()
    cyd_struggling = signal("readers/cyd", 2, pb.ATTENTION_RULE_STRUGGLING, NOW_S - 300, "3 wrong answers in a row", ME)
    model.apply_readers(readers_batch(
        update("readers/ann", "Ann Archer", NOW_S - 25, 0.35, 7, pb.PRESENCE_READING, signals=(ANN_STUCK,)),
        update("readers/bob", "Bob Brown", NOW_S - 40, 0.6, 12, pb.PRESENCE_ONLINE),
        update("readers/cyd", "Cyd Chen", NOW_S - 25, 0.5, 9, pb.PRESENCE_READING, signals=(cyd_struggling,)),
        update("readers/dee", "Dee Dalton", NOW_S - 400, 0.2, 3, pb.PRESENCE_IDLE, signals=(
            signal("readers/dee", 3, pb.ATTENTION_RULE_STALLED, NOW_S - 420, "went idle on step 3", OTHER),)),
        update("readers/eve", "Eve Evans", NOW_S - 90, 0.8, 15, pb.PRESENCE_ONLINE),
        update("readers/fay", "Fay Fischer-Lindqvist", NOW_S - 600, 1.0, 20, pb.PRESENCE_IDLE),
        update("readers/gus", "Gus Gray", NOW_S - 45, 0.05, 1, pb.PRESENCE_ONLINE),
        unread={"readers/eve": 2}, complete=True, cursor="r-100",
    ))
    model.apply(batch(
        message(106, "readers/bob", NOW_S - 12, pb.MESSAGE_DIRECTION_FROM_READER, "I don't get question 4"),
        attention(107, NOW_S - 12, BOB_HELP),
    ))
    earlier = NOW_S - 400  # when the state of those who only answered last moved
    model.apply_readers(readers_batch(
        update("readers/gus", "Gus Gray", NOW_S - 30, 0.1, 2, pb.PRESENCE_READING,
               activity=("progress", "step 2 of 20", NOW_S - 30)),
        update("readers/ann", "Ann Archer", NOW_S - 20, 0.35, 7, pb.PRESENCE_READING,
               activity=("answer", "question 7: no", NOW_S - 20), signals=(ANN_STUCK,), state_s=earlier),
        update("readers/cyd", "Cyd Chen", NOW_S - 15, 0.5, 9, pb.PRESENCE_READING,
               activity=("answer", "question 9: no", NOW_S - 15), signals=(cyd_struggling,), state_s=earlier),
        update("readers/bob", "Bob Brown", NOW_S - 40, 0.6, 12, pb.PRESENCE_ONLINE, signals=(BOB_HELP,)),
        update("readers/eve", "Eve Evans", NOW_S - 5, 0.8, 15, pb.PRESENCE_ONLINE,
               activity=("open_page", "page 15", NOW_S - 5), state_s=earlier),
        unread={"readers/bob": 1}, cursor="r-108",
    ))
    return model


def tutor_view(clock: Clock | None = None) -> tuple[WatchView, Terminal, FakeActions]:
    model = tutor_model()
    actions = FakeActions(model)
    terminal = Terminal(model, actions, clock=clock or Clock())
    view = WatchView(model, terminal=terminal, title="tutor@example.com @ 127.0.0.1:50051")
    view.localtime = time.gmtime
    return view, terminal, actions


def screen(view: WatchView, width: int = 120, height: int = 30, now_s: float = NOW_S) -> str:
    console = Console(record=True, width=width, height=height, file=open(os.devnull, "w"))  # noqa: SIM115
    console.print(view.render(height, int(now_s * NS), width))
    console.file.close()
    return console.export_text()


def rows(text: str, pattern: str = r"\w+ \w+") -> list[str]:
    """The reader names in the table, top to bottom."""
    table = text.split(" Last activity", 1)[1].split("── Messages and signals", 1)[0]
    return [m.group(1) for m in re.finditer(rf"^[▶ ] ({pattern})", table, re.MULTILINE)]


def rows_of(text: str) -> list[str]:
    """The names in the table of a real server's readers ("Ann12")."""
    return [name.rstrip("0123456789") for name in rows(text, r"\w+")]


# --------------------------------------------------------------------------
# The table: order, badges, selection, sort, filter
# --------------------------------------------------------------------------


def test_attention_first_with_badges_and_the_summary_of_the_last_activity() -> None:
    view, _, _ = tutor_view()
    text = screen(view)
    assert rows(text) == ["Ann Archer", "Bob Brown", "Dee Dalton", "Cyd Chen", "Eve Evans", "Gus Gray", "Fay Fischer"]
    lines = {name: next(line for line in text.splitlines() if name in line) for name in ("Ann", "Bob", "Cyd", "Dee")}
    assert "STUCK " in lines["Ann"]
    assert "HELP" in lines["Bob"]
    assert "STRUGGLING✓ " in lines["Cyd"]  # taken by me
    assert "STALLED✓7f3a9c" in lines["Dee"]  # taken by someone else
    assert "answer: question 7: no" in lines["Ann"]
    assert "2 waiting · 3 unread" in text.splitlines()[0]
    assert text.splitlines()[3].startswith("▶ Ann Archer")  # the first row is selected


def test_rows_move_on_a_meaningful_change_or_the_timer_and_the_selection_follows_its_reader() -> None:
    clock = Clock()
    view, terminal, _ = tutor_view(clock)
    before = rows(screen(view))
    assert before[-2:] == ["Gus Gray", "Fay Fischer"]
    terminal.press_all("jjjjj")
    assert terminal.order.selected == "readers/gus"
    # Fay answers, Eve writes: her count (WatchReaders) re-sorts, but Fay's
    # newer activity does not lift her before the timer is up.
    model = view.model
    model.apply(batch(message(202, "readers/eve", NOW_S, pb.MESSAGE_DIRECTION_FROM_READER, "done")))
    model.apply_readers(readers_batch(
        update("readers/fay", "Fay Fischer-Lindqvist", NOW_S, 1.0, 20, pb.PRESENCE_READING,
               activity=("answer", "question 20: yes", NOW_S), state_s=NOW_S - 600),
        update("readers/eve", "Eve Evans", NOW_S, 0.8, 15, pb.PRESENCE_ONLINE), unread={"readers/eve": 3}))
    clock.now += 1
    sorts = terminal.order.sorts
    assert rows(screen(view)) == before
    assert terminal.order.sorts == sorts + 1
    # The timer is up: recency counts again, and the selection stays on Gus.
    clock.now += 5
    text = screen(view)
    assert rows(text)[-2:] == ["Fay Fischer", "Gus Gray"]
    assert "▶ Gus Gray" in text
    # A new signal (an update's) moves its reader at once; the others keep
    # their places.
    gus_stuck = signal("readers/gus", 9, pb.ATTENTION_RULE_STUCK, NOW_S - 1, "stuck")
    model.apply_readers(readers_batch(update("readers/gus", "Gus Gray", NOW_S - 30, 0.1, 2, pb.PRESENCE_READING,
                                             activity=("progress", "step 2 of 20", NOW_S - 30), signals=(gus_stuck,))))
    clock.now += 0.25
    text = screen(view)
    assert rows(text) == ["Ann Archer", "Bob Brown", "Gus Gray", "Dee Dalton", "Cyd Chen", "Eve Evans", "Fay Fischer"]
    assert "▶ Gus Gray" in text


def test_select_and_scroll_through_more_readers_than_fit() -> None:
    model = WatchModel(me=ME)
    model.begin_snapshot()
    model.apply(cpb.WatchActivityResponse(snapshot_readers=[
        snapshot_reader(f"readers/r{i:02}", f"Reader {i:02}", NOW_S - i) for i in range(50)
    ], snapshot_complete=True, cursor="e-1"))
    terminal = Terminal(model, clock=Clock())
    view = WatchView(model, terminal=terminal)
    text = screen(view, height=24)
    assert "Readers 1-" in text
    assert "of 50" in text
    assert "more" not in text
    assert "▶ Reader 00" in text
    terminal.press("end")
    text = screen(view, height=24)
    assert "▶ Reader 49" in text
    assert re.search(r"Readers \d+-50 of 50", text)
    terminal.press_all(["up", "k"])
    assert "▶ Reader 47" in screen(view, height=24)
    terminal.press("home")
    terminal.press("pagedown")
    assert terminal.order.position() == terminal.order.page
    assert f"▶ Reader {terminal.order.page:02}" in screen(view, height=24)


def test_s_cycles_the_sort() -> None:
    view, terminal, _ = tutor_view()
    terminal.press("s")
    text = screen(view)
    assert "sort: name" in text
    assert rows(text) == ["Ann Archer", "Bob Brown", "Cyd Chen", "Dee Dalton", "Eve Evans", "Fay Fischer", "Gus Gray"]
    assert "sorted by name" in text.splitlines()[-1]
    terminal.press("s")
    assert rows(screen(view))[:3] == ["Eve Evans", "Cyd Chen", "Ann Archer"]  # last seen
    terminal.press("s")
    assert rows(screen(view))[:3] == ["Gus Gray", "Dee Dalton", "Ann Archer"]  # least progress first
    terminal.press("s")
    assert "sort: attention" in screen(view)


def test_slash_filters_by_name_or_email_as_you_type() -> None:
    view, terminal, _ = tutor_view()
    terminal.press_all(["/", *"BO"])
    text = screen(view)
    assert rows(text) == ["Bob Brown"]
    assert "Filter (name or email): BO" in text.splitlines()[-1]
    terminal.press("enter")
    text = screen(view)
    assert rows(text) == ["Bob Brown"]
    assert "filter “BO”" in text
    assert "▶ Bob Brown" in text
    # By email (WatchReaders sends none: the filter has them looked up),
    # then Esc while editing puts the kept filter back.
    look_up_profiles(view.model)
    terminal.press_all(["/", "ctrl-u", *"evans@ex"])
    assert rows(screen(view)) == ["Eve Evans"]
    terminal.press("esc")
    assert rows(screen(view)) == ["Bob Brown"]
    # Esc in the table clears it; the selection stays on Bob.
    terminal.press("esc")
    text = screen(view)
    assert len(rows(text)) == 7
    assert "▶ Bob Brown" in text


def test_help_lists_every_key_and_any_key_closes_it() -> None:
    view, terminal, _ = tutor_view()
    terminal.press("?")
    text = screen(view, height=40)
    for keys, what in KEY_HELP:
        assert keys in text
        assert what in text
    assert "STRUGGLING" in text  # the badges are explained
    terminal.press("j")  # closes help, does not move
    assert terminal.order.selected == "readers/ann"
    assert "Keys (any key" not in screen(view)
    terminal.press_all(["?", "q"])
    assert terminal.quit


# --------------------------------------------------------------------------
# The feed: one line per reader action; messages and signals pinned
# --------------------------------------------------------------------------


def test_one_feed_line_per_action_and_pinned_lines_stay() -> None:
    view, _, _ = tutor_view()
    text = screen(view)
    # The progress interaction, with the state and presence of the update
    # seen exactly then.
    assert "Gus Gray          progress: step 2 of 20 · state active, 10%, step 2 · reading (was online)" in text
    pinned = text.split("── Messages and signals", 1)[1].split("── Activity", 1)[0]
    assert "message from reader: I don't get question 4" in pinned
    assert "HELP: wrote to the consultants" in pinned
    # An update is a line when it brings a new action (two within one
    # update interval show as the last), not when only "seen" moved.
    model = view.model
    feed = len(model.feed)
    model.apply_readers(readers_batch(update("readers/ann", "Ann Archer", NOW_S, 0.35, 7, pb.PRESENCE_READING,
                                             activity=("answer", "question 9: no", NOW_S), signals=(ANN_STUCK,),
                                             state_s=NOW_S - 400)))
    model.apply_readers(readers_batch(update("readers/ann", "Ann Archer", NOW_S + 1, 0.35, 7, pb.PRESENCE_READING,
                                             activity=("answer", "question 9: no", NOW_S), signals=(ANN_STUCK,),
                                             state_s=NOW_S - 400)))
    assert [line.text for line in list(model.feed)[feed:]] == ["answer: question 9: no"]
    # Heavy traffic scrolls the feed, not the pinned lines.
    for i in range(300):
        model.apply_readers(readers_batch(update("readers/gus", "Gus Gray", NOW_S + i, 0.1, 2, pb.PRESENCE_READING,
                                                 activity=("answer", f"q{i}", NOW_S + i), state_s=NOW_S - 30)))
    text = screen(view)
    assert "HELP: wrote to the consultants" in text
    assert "I don't get question 4" in text
    assert "question 7: no" not in text.split("── Activity", 1)[1]
    # Acknowledging and clearing are pinned too.
    bob = model.readers["readers/bob"].signals["readers/bob/attentionSignals/s4"]
    taken = pb.AttentionSignal()
    taken.CopyFrom(bob)
    taken.acknowledged_by = OTHER
    cleared = pb.AttentionSignal()
    cleared.CopyFrom(taken)
    cleared.state, cleared.clear_reason = pb.ATTENTION_STATE_CLEARED, "a consultant replied"
    model.apply(batch(attention(800, NOW_S + 1, taken), attention(801, NOW_S + 2, cleared)))
    assert [line.text for line in list(model.pinned)[-2:]] == [
        f"HELP taken by {OTHER}: wrote to the consultants", "HELP cleared: a consultant replied",
    ]
    assert not model.readers["readers/bob"].signals
    # A listing or an update older than the clear does not bring the signal back.
    model.merge_signals([bob])
    model.apply_readers(readers_batch(update("readers/bob", "Bob Brown", NOW_S - 40, 0.6, 12, signals=(bob,))))
    assert not model.readers["readers/bob"].signals


# --------------------------------------------------------------------------
# Actions: open, reply, mark read, acknowledge, my readers
# --------------------------------------------------------------------------


def test_enter_opens_the_reader_and_esc_goes_back() -> None:
    async def scenario() -> None:
        view, terminal, actions = tutor_view()
        terminal.press_all(["j", "enter"])  # Bob
        assert "loading…" in screen(view)
        await terminal.settle()
        assert actions.opened == ["readers/bob"]
        text = screen(view)
        assert "Bob Brown <bob.brown@example.com> · readers/bob" in text
        assert "active · online" in text
        assert "60% · step 12" in text
        assert "HELP  wrote to the consultants · raised 12s ago" in text
        assert text.index("I don't get question 4") < text.index("Look at the example above it")
        assert re.search(r"you +Look at the example above it", text)
        assert "answer  question 4: no" in text
        assert "Esc back" in text.splitlines()[-1]
        terminal.press("esc")
        assert terminal.screen is Screen.TABLE
        assert "▶ Bob Brown" in screen(view)

    asyncio.run(scenario())


def test_r_edits_a_reply_in_the_footer_and_enter_sends_it() -> None:
    async def scenario() -> None:
        view, terminal, actions = tutor_view()
        terminal.press_all(["r", *"Look at te example"])
        assert screen(view).splitlines()[-1].startswith("Reply to Ann Archer: Look at te example")
        # Fix the typo: left over "example", left over the space, insert.
        terminal.press_all(["left"] * 9 + ["h"])
        terminal.press_all(["end", "backspace", *"e!", "ctrl-w", *"example"])
        assert terminal.editor is not None
        assert terminal.editor.text == "Look at the example"
        terminal.press("enter")
        await terminal.settle()
        assert actions.sent == [("readers/ann", "Look at the example")]
        assert "sent to Ann Archer" in screen(view).splitlines()[-1]
        # Esc cancels; an empty reply sends nothing.
        terminal.press_all(["r", *"never mind", "esc"])
        terminal.press_all(["r", " ", "enter"])
        await terminal.settle()
        assert actions.sent == [("readers/ann", "Look at the example")]
        assert "nothing to send" in screen(view)
        # q while editing is a letter, not quit.
        terminal.press_all(["r", "q"])
        assert not terminal.quit
        assert terminal.editor.text == "q"

    asyncio.run(scenario())


def test_m_marks_read_and_a_acknowledges_the_oldest_open_signal() -> None:
    async def scenario() -> None:
        view, terminal, actions = tutor_view()
        terminal.press_all("jjjj")  # Eve, 2 unread
        assert "Eve Evans" in screen(view).splitlines()[7]
        terminal.press("m")
        await terminal.settle()
        assert actions.marked == ["readers/eve"]
        assert view.model.readers["readers/eve"].unread == 0
        assert "marked Eve Evans's messages read" in screen(view)
        # Ann: a second signal, older than the first, is taken first.
        view.model.apply(batch(attention(500, NOW_S, signal("readers/ann", 8, pb.ATTENTION_RULE_STRUGGLING,
                                                            NOW_S - 900, "4 wrong answers"))))
        terminal.press("home")
        terminal.press("a")
        await terminal.settle()
        assert actions.acknowledged == ["readers/ann/attentionSignals/s8"]
        line = next(line for line in screen(view).splitlines() if "Ann Archer" in line)
        assert "STRUGGLING✓ STUCK " in line
        terminal.press("a")
        await terminal.settle()
        terminal.press("a")
        await terminal.settle()
        assert len(actions.acknowledged) == 2
        assert "every open signal is taken already" in screen(view)
        # A server without the call says so in the footer.
        actions.refuse = grpc.StatusCode.UNIMPLEMENTED
        terminal.press_all(["home", "a"])  # Bob: Ann, all taken, moved below
        await terminal.settle()
        assert "acknowledging: this server does not offer it yet" in screen(view)

    asyncio.run(scenario())


def test_f_toggles_my_readers() -> None:
    view, terminal, actions = tutor_view()
    assert "all readers" in screen(view).splitlines()[0]
    terminal.press("f")
    assert actions.only_my_readers
    assert "my readers" in screen(view).splitlines()[0]
    terminal.press("f")
    assert not actions.only_my_readers


def test_the_disconnected_status_fits_the_width_and_names_the_stream() -> None:
    model = tutor_model()
    client = WatchClient(model, "127.0.0.1:1", "tutor@example.com", "x")
    for link in client.links:
        link.status = "live"
    view = WatchView(model, client, title="tutor@example.com @ 127.0.0.1:1")
    assert "[live]" in screen(view).splitlines()[0]
    reason = "UNAVAILABLE: failed to connect to all addresses; last error: " + "x" * 200
    client.feed.reason, client.feed.retry_at = reason, time.monotonic() + 1.2
    assert "[messages: disconnected, retrying in 1 s: UNAVAI…]" in screen(view).splitlines()[0]
    # The table's stream leads.
    client.readers.reason, client.readers.retry_at = reason, time.monotonic() + 3.2
    for width in (60, 100, 200):
        header = screen(view, width=width).splitlines()[0]
        assert len(header) <= width
        assert "[disconnected, retrying in 3 s: UNAVAILABLE" in header
    # Without WatchReaders, one stream: its status, and the header says so.
    client.fall_back()
    client.feed.retry_at = None
    header = screen(view, width=200).splitlines()[0]
    assert "[live]" in header
    assert "every event (no WatchReaders on this server)" in header


# --------------------------------------------------------------------------
# Raw keys from a terminal
# --------------------------------------------------------------------------


def test_key_decoder_reads_what_a_terminal_sends() -> None:
    keys = KeyDecoder()
    assert keys.feed("jk\x1b[A\x1b[B\x1bOC\x1b[5~\x1b[6~\r\x7f\x1b") == [
        "j", "k", "up", "down", "right", "pageup", "pagedown", "enter", "backspace", "esc",
    ]
    assert keys.feed("\x1b[1;5A?é\x03") == ["up", "?", "é", "ctrl-c"]
    # A sequence split across two reads.
    assert keys.feed("\x1b[") == []
    assert keys.feed("3~x") == ["delete", "x"]


def test_keyboard_reads_a_tty_in_cbreak_mode_and_restores_it() -> None:
    leader, follower = pty.openpty()
    try:
        before = termios.tcgetattr(follower)
        got: list[str] = []

        async def scenario() -> None:
            with keyboard(follower, got.append):
                assert not termios.tcgetattr(follower)[3] & termios.ICANON
                os.write(leader, b"j\x1b[Bq")
                for _ in range(200):
                    if len(got) >= 3:
                        break
                    await asyncio.sleep(0.005)

        asyncio.run(scenario())
        assert got == ["j", "down", "q"]
        assert termios.tcgetattr(follower) == before
    finally:
        os.close(leader)
        os.close(follower)


# --------------------------------------------------------------------------
# Cost, and the screen docs/terminal.md shows
# --------------------------------------------------------------------------


def test_a_frame_costs_what_fits_on_screen_not_what_the_table_holds() -> None:
    """Only visible rows are built: ten times the readers, about the same
    frame (a ratio measured here, so the machine's speed does not matter;
    the figures themselves are the benchmark's, docs/terminal.md)."""
    few = benchmark(readers=100, width=200, height=50, frames=30)
    many = benchmark(readers=1000, width=200, height=50, frames=30)
    assert many.median_ms < 3 * few.median_ms, (few, many)


def test_docs_show_the_screen_of_the_fixture() -> None:
    view, terminal, _ = tutor_view()
    terminal.press("j")
    capture = "\n".join(line.rstrip() for line in screen(view, width=120, height=28).splitlines())
    docs = DOCS.read_text()
    assert f"```text\n{capture}\n```" in docs, f"docs/terminal.md should show this screen:\n{capture}"


# --------------------------------------------------------------------------
# Against a real server
# --------------------------------------------------------------------------


def test_keys_take_a_signal_reply_mark_read_open_and_narrow_on_a_real_server(h: Harness) -> None:
    email, account = new_consultant_email(h, "tutor")
    me = h.anonymous.login(email, kind=pb.ACCOUNT_KIND_CONSULTANT)
    ann, bob = h.new_reader("Ann"), h.new_reader("Bob")
    record(ann, "progress", percent=0.3, step=3)
    ann.reader.SendMyMessage(rpb.SendMyMessageRequest(body="I am stuck on step 3"), metadata=ann.md)
    record(bob, "open_page", page=1)
    h.anonymous.admin.AssignReader(apb.AssignReaderRequest(reader=bob.account, consultant=account),
                                   metadata=h.admin_md())

    async def until(condition: Callable[[], bool], what: str) -> None:
        for _ in range(500):
            if condition():
                return
            await asyncio.sleep(0.02)
        raise AssertionError(f"timed out waiting for {what}")

    async def scenario() -> None:
        model = WatchModel()
        client = WatchClient(model, h.server.address, email, PASSWORD, max_backoff=0.5)
        terminal = Terminal(model, client)
        view = WatchView(model, client, terminal=terminal)
        task = asyncio.create_task(client.run())
        try:
            await asyncio.wait_for(client.synced.wait(), 10)
            assert client.dashboard
            assert client.attention_available
            text = screen(view)
            assert re.search(r"▶ Ann\S* +HELP +1 ", text)  # her message asked for help: she leads
            terminal.press("a")
            await terminal.settle()
            assert re.search(r"▶ Ann\S* +HELP✓ ", screen(view))
            # Bob answers wrong three times: his signal comes in live, and he moves up.
            for n in range(3):
                await asyncio.to_thread(record, bob, "answer", question_id=f"q{n}", correct=False)
            await until(lambda: bool(model.readers[bob.account].signals), "Bob's signal")
            assert re.search(r"Bob\S* +STRUGGLING ", screen(view))
            assert rows_of(screen(view))[:2] == ["Bob", "Ann"]  # an untaken signal before a taken one

            terminal.press_all(["/", *"ann", "enter", "r", *"on my way", "enter"])
            await terminal.settle()
            assert "sent to Ann" in screen(view)
            # The reply ends her signal, live.
            await until(lambda: not model.readers[ann.account].signals, "the signal to clear")
            assert "HELP cleared" in screen(view)
            listed = await asyncio.to_thread(
                me.consultant.ListMessages, cpb.ListMessagesRequest(parent=ann.account), metadata=me.md)
            assert [m.body for m in listed.messages] == ["on my way", "I am stuck on step 3"]

            terminal.press("m")
            await terminal.settle()
            assert model.readers[ann.account].unread == 0
            counts = await asyncio.to_thread(
                me.consultant.ListUnreadCounts, cpb.ListUnreadCountsRequest(), metadata=me.md)
            assert ann.account not in [c.reader for c in counts.counts]

            terminal.press("enter")
            await terminal.settle()
            text = screen(view, height=36)
            assert "I am stuck on step 3" in text
            assert re.search(r"you +on my way", text)
            assert "progress" in text.split("Recent history", 1)[1]
            terminal.press_all(["esc", "esc"])  # the reader, then the filter

            streams = (client.readers.streams, client.feed.streams)
            terminal.press("f")
            # Both streams open again with only_my_readers, the table's with a fresh snapshot.
            await until(lambda: model.snapshot_complete and list(model.readers) == [bob.account]
                        and (client.readers.streams, client.feed.streams) == (streams[0] + 1, streams[1] + 1),
                        "my readers")
            assert (client.readers.snapshots, client.feed.snapshots) == (2, 0)
            assert "my readers" in screen(view).splitlines()[0]
            # Ann is not mine: the feed no longer carries her.
            await asyncio.to_thread(record, ann, "answer", question_id="q9", correct=True)
            await asyncio.to_thread(record, bob, "answer", question_id="q9", correct=True)
            await until(lambda: bool(model.feed) and "'q9'" in model.feed[-1].text
                        and model.feed[-1].reader == bob.account, "Bob's answer")
            assert all(line.reader != ann.account for line in list(model.feed)[-2:])
            assert client.fatal is None
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    asyncio.run(scenario())
