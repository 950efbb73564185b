"""The chaos checker: numbered messages go in under faults, a verdict comes out.

Every chaos test (``tests/chaos``) runs the same workload and the same judge, in the
manner of Jepsen's checkers and the NATS chaos tests: senders send numbered messages
through the real client library, faults are injected, and afterwards a
:class:`Checker` compares two histories:

* what each **sender's application** saw: the message was queued (its place in the
  conversation ``sender -> recipient`` is its *sequence*), then acknowledged by the
  hub (``stored``) and by the recipient's device (``delivered``);
* what each **recipient's application** was shown (``MessageReceived``), in order.

The verdict (:class:`Report`) counts, per run:

``lost``
    acknowledged to the sender (``stored`` or ``delivered``) yet never shown to one of
    the recipient's devices. The one unforgivable outcome: a messenger that acks
    before its write is durable (Jepsen's favourite finding) shows up here.
``duplicated``
    shown to one device more than once (same id): the promise is exactly-once on
    screen, whatever the path and however often the wire carried it.
``reordered``
    shown after a message that was sent later in the same conversation.
``unacked_delivered``
    shown, but the sender never saw an acknowledgement: legal (the ack may be what the
    fault took), reported to show the faults bit.
``pending``
    sent, never acknowledged and never shown. With a durable outbox this must be 0 once
    the system is healed and quiet.
``no_receipt``
    shown, but the sender never learnt ``delivered`` (the end-to-end receipt).
``phantom``
    shown although nobody sent it (a corrupted or forged message).

Histories come from :class:`~duplex.testing.agent.AgentProcess` output (clients in
other processes, maybe other network namespaces: :meth:`Checker.feed_agent`) or from
in-process :class:`~duplex.client.Client` objects (:meth:`Checker.tap`). Every
verdict is kept in :data:`REPORTS` (the chaos suite prints them as one table at the
end of the run) and, when ``$DUPLEX_CHAOS_REPORT`` names a file, appended to it as
one JSON object per line, which is where ``docs/reliability.md`` takes its figures.

``$DUPLEX_CHAOS=long`` asks tests for their soak variant (:func:`long_run`);
``$DUPLEX_CHAOS_SEED`` fixes the random choices (fault times) of a run.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import json
import os
import random
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from duplex.client.events import ClientEvent, MessageReceived, MessageStateChanged

if TYPE_CHECKING:
    from duplex.client import Client
    from duplex.testing.agent import AgentProcess

__all__ = [
    "NOTES",
    "REPORTS",
    "Checker",
    "ClientTap",
    "Report",
    "chaos_seed",
    "format_table",
    "long_run",
    "note",
]

REPORTS: list[Report] = []
"""Every report recorded in this process, in order (the suite prints them at the end)."""

NOTES: list[tuple[str, str]] = []
"""(test, figure) lines of the abuse tests, which have no messages to count; printed
after the checker's table, and kept in ``$DUPLEX_CHAOS_REPORT`` like the reports."""

_ACKED = ("stored", "delivered")


def long_run() -> bool:
    """True when ``$DUPLEX_CHAOS=long`` asks for the soak variants of the chaos tests."""
    return os.environ.get("DUPLEX_CHAOS", "") == "long"


def chaos_seed() -> int:
    """The seed of this run's random choices: ``$DUPLEX_CHAOS_SEED`` or a fresh one."""
    value = os.environ.get("DUPLEX_CHAOS_SEED")
    return int(value) if value else random.SystemRandom().randrange(1 << 32)


@dataclasses.dataclass(frozen=True)
class Report:
    """The checker's verdict on one run (see the module docstring for each count).

    Attributes:
        name: the test or scenario.
        messages: messages sent.
        faults: faults injected.
        fault_kinds: what they were, e.g. ``"5 x SIGKILL hub"``.
        acked: messages the senders saw acknowledged by the hub or the recipient.
        delivered: messages shown at least once on every device of their recipient.
        lost: acked, yet missing on a recipient device.
        duplicated: extra showings of an id on one device.
        reordered: showings after a later message of the same conversation.
        unacked_delivered: shown without the sender seeing an ack.
        pending: neither acked nor shown.
        no_receipt: shown, but the sender never saw ``delivered``.
        phantom: shown, never sent (or shown with another sender or to another user).
        paths: how the shown messages travelled (``direct``, ``relayed``, ``stored``).
        seconds: wall time from the first message to the report.
        seed: the random seed of the run, if it used one.
    """

    name: str
    messages: int
    faults: int
    fault_kinds: str
    acked: int
    delivered: int
    lost: int
    duplicated: int
    reordered: int
    unacked_delivered: int
    pending: int
    no_receipt: int
    phantom: int
    paths: dict[str, int]
    seconds: float
    seed: int | None = None

    @property
    def ok(self) -> bool:
        """True when nothing was lost, duplicated, reordered or made up."""
        return not (self.lost or self.duplicated or self.reordered or self.phantom)

    def as_dict(self) -> dict[str, Any]:
        """The report as JSON-ready data."""
        return dataclasses.asdict(self)


_COLUMNS = (
    ("test", "name", 44),
    ("messages", "messages", 8),
    ("faults", "faults", 6),
    ("acked", "acked", 6),
    ("delivered", "delivered", 9),
    ("lost", "lost", 4),
    ("dup", "duplicated", 4),
    ("reord", "reordered", 5),
    ("unacked+dlv", "unacked_delivered", 11),
    ("pending", "pending", 7),
    ("s", "seconds", 5),
)


def format_table(reports: Iterable[Report]) -> str:
    """The reports as a fixed-width text table, one row each, with the faults after."""
    head = " ".join(
        f"{title:>{width}}" if i else f"{title:<{width}}"
        for i, (title, _, width) in enumerate(_COLUMNS)
    )
    lines = [head, "-" * len(head)]
    for report in reports:
        cells = []
        for i, (_, field, width) in enumerate(_COLUMNS):
            value = getattr(report, field)
            if field == "seconds":
                text = f"{value:.1f}"
            elif field == "name":
                text = value if len(value) <= width else value[: width - 1] + "…"
            else:
                text = str(value)
            cells.append(f"{text:>{width}}" if i else f"{text:<{width}}")
        lines.append(" ".join(cells) + f"  {report.fault_kinds}")
    return "\n".join(lines)


@dataclasses.dataclass
class _Sent:
    sender: str
    recipient: str
    seq: int
    state: str = "queued"
    acked: bool = False
    receipt: bool = False


class Checker:
    """Records what senders and recipients saw, and judges it (see the module docstring).

    Args:
        name: the name the report carries (the test's).
        seed: the seed of the run's random choices, reported for reproduction.
    """

    def __init__(self, name: str, seed: int | None = None) -> None:
        self.name = name
        self.seed = seed
        self._sent: dict[bytes, _Sent] = {}
        self._order: list[bytes] = []
        self._next_seq: collections.Counter[tuple[str, str]] = collections.Counter()
        self._devices: dict[str, set[str]] = {}
        self._device_user: dict[str, str] = {}
        self._shown: dict[str, collections.Counter[bytes]] = collections.defaultdict(
            collections.Counter
        )
        self._shows: dict[str, list[tuple[bytes, str, str]]] = collections.defaultdict(list)
        self._early: dict[bytes, list[tuple[str, str | None]]] = {}
        self._faults: list[str] = []
        self._agent_pos: dict[int, int] = {}
        self._started = time.monotonic()

    # -- what happened -----------------------------------------------------------------

    def expect(self, user: str, *devices: str) -> None:
        """Declares the devices of ``user`` (by default one device named after the user).

        A message counts as delivered only once every device of its recipient showed it.
        """
        for device in devices:
            self._devices.setdefault(user, set()).add(device)
            self._device_user[device] = user

    def _devices_of(self, user: str) -> set[str]:
        return self._devices.get(user) or {user}

    def sent(self, sender: str, recipient: str, msg_id: bytes) -> int:
        """Records that ``sender`` queued ``msg_id`` for ``recipient``.

        Returns:
            Its sequence in the conversation ``sender -> recipient`` (from 1).
        """
        if msg_id in self._sent:
            return self._sent[msg_id].seq
        key = (sender, recipient)
        self._next_seq[key] += 1
        record = _Sent(sender, recipient, self._next_seq[key])
        self._sent[msg_id] = record
        self._order.append(msg_id)
        for state, path in self._early.pop(msg_id, []):
            self.state(msg_id, state, path)
        return record.seq

    def state(self, msg_id: bytes, state: str, path: str | None = None) -> None:
        """Records a state change the sender saw (``stored``, ``delivered``, ...)."""
        record = self._sent.get(msg_id)
        if record is None:
            # A state can be reported before the test learnt of the send (two pipes).
            self._early.setdefault(msg_id, []).append((state, path))
            return
        if state in _ACKED:
            record.acked = True
        if state == "delivered":
            record.receipt = True
        record.state = state

    def received(self, device: str, sender: str, msg_id: bytes, path: str = "") -> None:
        """Records that ``device``'s application was shown ``msg_id`` from ``sender``.

        Showings are judged (order, phantoms) only in :meth:`report`, so one may be
        recorded before the checker learns of its send: two processes, two pipes.
        """
        self._shown[device][msg_id] += 1
        self._shows[device].append((msg_id, sender, path))

    def fault(self, kind: str) -> None:
        """Records one injected fault (``"SIGKILL hub"``, ``"partition alice 4 s"``...)."""
        self._faults.append(kind)

    # -- feeding ------------------------------------------------------------------------

    def feed_agent(self, agent: AgentProcess) -> None:
        """Takes in what an agent process printed since the last call.

        The agent's ``queued`` state events give the send order (they are emitted
        before :meth:`~duplex.client.Client.send` returns); the device is the agent's
        user name.
        """
        agent.of("")  # collects what the agent printed so far
        start = self._agent_pos.get(id(agent), 0)
        events = agent.events[start:]
        self._agent_pos[id(agent)] = start + len(events)
        for event in events:
            kind = event.get("event")
            if kind == "state":
                msg_id = bytes.fromhex(event["id"])
                if event["state"] == "queued":
                    self.sent(agent.user, event["peer"], msg_id)
                else:
                    self.state(msg_id, event["state"], event.get("path"))
            elif kind == "received":
                self.received(
                    agent.user, event["peer"], bytes.fromhex(event["id"]), event.get("path", "")
                )

    def feed_event(self, user: str, event: ClientEvent, device: str | None = None) -> None:
        """Takes in one event of an in-process client of ``user`` (device: the user)."""
        if isinstance(event, MessageStateChanged):
            if event.state == "queued":
                self.sent(user, event.peer, event.id)
            else:
                self.state(event.id, event.state, event.path)
        elif isinstance(event, MessageReceived):
            self.received(device or user, event.peer, event.id, event.path)

    def tap(self, client: Client, device: str | None = None) -> ClientTap:
        """Starts feeding every event of ``client`` into the checker (call on its loop)."""
        return ClientTap(self, client, device)

    # -- judging ------------------------------------------------------------------------

    @property
    def messages(self) -> int:
        """Messages sent so far."""
        return len(self._order)

    def missing(self, *, receipts: bool = False) -> list[tuple[str, str, int]]:
        """(sender, recipient, sequence) of each message not yet shown everywhere
        (or, with ``receipts``, whose sender has not yet seen ``delivered``)."""
        out = []
        for msg_id in self._order:
            record = self._sent[msg_id]
            shown = all(self._shown[d][msg_id] for d in self._devices_of(record.recipient))
            if not shown or (receipts and not record.receipt):
                out.append((record.sender, record.recipient, record.seq))
        return out

    def settled(self, *, receipts: bool = True) -> bool:
        """True when every message sent so far was shown on every recipient device (and,
        with ``receipts``, its sender saw ``delivered``)."""
        return not self.missing(receipts=receipts)

    def wait_for(
        self,
        agents: Iterable[AgentProcess],
        predicate: Callable[[Checker], bool],
        timeout: float,
    ) -> bool:
        """Feeds ``agents`` until ``predicate(self)`` holds.

        Returns:
            Whether it held within ``timeout`` seconds.

        Raises:
            RuntimeError: an agent process died.
        """
        agents = list(agents)
        end = time.monotonic() + timeout
        while True:
            for agent in agents:
                self.feed_agent(agent)
            if predicate(self):
                return True
            for agent in agents:
                if agent.proc.poll() is not None:
                    raise RuntimeError(f"agent {agent.user} died: {agent.stderr[-1500:]}")
            if time.monotonic() >= end:
                return False
            time.sleep(0.02)

    def wait_settled(
        self,
        agents: Iterable[AgentProcess],
        timeout: float,
        *,
        receipts: bool = True,
        expect_messages: int | None = None,
    ) -> bool:
        """Feeds ``agents`` until :meth:`settled` (and at least ``expect_messages`` were sent).

        Returns:
            Whether it settled within ``timeout`` seconds (the report says what is missing).

        Raises:
            RuntimeError: an agent process died.
        """
        return self.wait_for(
            agents,
            lambda c: (
                (expect_messages is None or c.messages >= expect_messages)
                and c.settled(receipts=receipts)
            ),
            timeout,
        )

    async def wait_settled_async(
        self, timeout: float, *, receipts: bool = True, expect_messages: int | None = None
    ) -> bool:
        """:meth:`wait_settled` for in-process clients fed by :meth:`tap`."""
        end = time.monotonic() + timeout
        while True:
            enough = expect_messages is None or self.messages >= expect_messages
            if enough and self.settled(receipts=receipts):
                return True
            if time.monotonic() >= end:
                return False
            await asyncio.sleep(0.05)

    def showings(self, device: str, sender: str) -> list[tuple[int, str]]:
        """(sequence, path) of what ``device`` was shown from ``sender``, in order."""
        return [
            (self._sent[msg_id].seq if msg_id in self._sent else -1, path)
            for msg_id, who, path in self._shows.get(device, [])
            if who == sender
        ]

    def trace(self, device: str, sender: str) -> str:
        """What ``device`` was shown from ``sender`` as runs of sequences with their path,
        e.g. ``"1-90 direct, 91-208 relayed, 255-256 direct, 209-254 direct"``."""
        runs: list[list[Any]] = []
        for seq, path in self.showings(device, sender):
            if runs and runs[-1][2] == path and runs[-1][1] + 1 == seq:
                runs[-1][1] = seq
            else:
                runs.append([seq, seq, path])
        return ", ".join(f"{a}-{b} {p}" if a != b else f"{a} {p}" for a, b, p in runs)

    def reorderings(self) -> list[str]:
        """Each showing that came after a later message of its conversation, described."""
        out = []
        for device, shows in self._shows.items():
            high: dict[str, tuple[int, str]] = {}
            for msg_id, sender, path in shows:
                record = self._sent.get(msg_id)
                if record is None:
                    continue
                seq, seen_path = high.get(sender, (0, ""))
                if record.seq < seq:
                    out.append(
                        f"{sender}->{device} #{record.seq} ({path}) after #{seq} ({seen_path})"
                    )
                else:
                    high[sender] = (record.seq, path)
        return out

    def _judge_showings(self) -> tuple[int, int, collections.Counter[str]]:
        """(reordered, phantom, paths) over every device's showings, in their order."""
        reordered = phantom = 0
        paths: collections.Counter[str] = collections.Counter()
        for device, shows in self._shows.items():
            high: dict[str, int] = {}
            user = self._device_user.get(device, device)
            for msg_id, sender, path in shows:
                record = self._sent.get(msg_id)
                if record is None or record.sender != sender or record.recipient != user:
                    phantom += 1  # never sent, or not by this sender, or not to this user
                    continue
                if path:
                    paths[path] += 1
                if record.seq < high.get(record.sender, 0):
                    reordered += 1
                else:
                    high[record.sender] = record.seq
        return reordered, phantom, paths

    def report(self) -> Report:
        """The verdict on everything recorded so far (not recorded in :data:`REPORTS`)."""
        reordered, phantom, paths = self._judge_showings()
        lost = duplicated = unacked_delivered = pending = no_receipt = delivered = acked = 0
        for msg_id in self._order:
            record = self._sent[msg_id]
            devices = self._devices_of(record.recipient)
            counts = [self._shown[d][msg_id] for d in devices]
            everywhere = all(counts)
            anywhere = any(counts)
            acked += record.acked
            delivered += everywhere
            duplicated += sum(max(0, n - 1) for n in counts)
            if record.acked and not everywhere:
                lost += 1
            if not record.acked and not anywhere:
                pending += 1
            if anywhere and not record.acked:
                unacked_delivered += 1
            if everywhere and not record.receipt:
                no_receipt += 1
        faults = collections.Counter(self._faults)
        kinds = ", ".join(f"{n} x {kind}" if n > 1 else kind for kind, n in faults.items())
        return Report(
            name=self.name,
            messages=len(self._order),
            faults=len(self._faults),
            fault_kinds=kinds or "none",
            acked=acked,
            delivered=delivered,
            lost=lost,
            duplicated=duplicated,
            reordered=reordered,
            unacked_delivered=unacked_delivered,
            pending=pending,
            no_receipt=no_receipt,
            phantom=phantom,
            paths=dict(paths),
            seconds=round(time.monotonic() - self._started, 1),
            seed=self.seed,
        )

    def check(
        self, *, require_all: bool = True, receipts: bool = True, keep: bool = True
    ) -> Report:
        """Records the verdict, prints its table row, and asserts it.

        Args:
            require_all: also require ``pending == 0`` (every message got through).
            receipts: also require every shown message's sender to have seen
                ``delivered``.
            keep: record the report (:data:`REPORTS`) and print its row; a test that
                checks many small runs (the state machine) sums them up instead.

        Returns:
            The report.

        Raises:
            AssertionError: something was lost, duplicated, reordered or made up (or,
                as asked, left pending or without receipt); the message says what.
        """
        report = self.report()
        if keep:
            record(report)
            print("\n" + format_table([report]))
        problems = []
        if not report.ok:
            problems.append(
                f"lost {report.lost}, duplicated {report.duplicated}, "
                f"reordered {report.reordered}, phantom {report.phantom}"
            )
        if require_all and report.pending:
            problems.append(f"{report.pending} message(s) never got through")
        if receipts and report.no_receipt:
            problems.append(f"{report.no_receipt} message(s) shown without a delivered receipt")
        if problems:
            sample = self.missing(receipts=receipts)[:10]
            detail = f"; missing e.g. {sample}" if sample else ""
            if report.reordered:
                detail += f"; reordered e.g. {self.reorderings()[:5]}"
                for device, shows in self._shows.items():
                    for sender in sorted({who for _, who, _ in shows}):
                        detail += f"\n  {sender} -> {device}: {self.trace(device, sender)}"
            seed = f" (DUPLEX_CHAOS_SEED={self.seed})" if self.seed is not None else ""
            raise AssertionError(f"{self.name}{seed}: {'; '.join(problems)}{detail}")
        return report


def note(test: str, figure: str) -> None:
    """Keeps one figure of an abuse test (printed at the end of the run, and appended to
    ``$DUPLEX_CHAOS_REPORT`` as ``{"note": test, "figure": figure}``)."""
    NOTES.append((test, figure))
    print(f"\n{test}: {figure}")
    path = os.environ.get("DUPLEX_CHAOS_REPORT")
    if path:
        with contextlib.suppress(OSError), open(path, "a") as fh:
            fh.write(json.dumps({"note": test, "figure": figure}) + "\n")


def record(report: Report) -> None:
    """Keeps ``report`` in :data:`REPORTS` and appends it to ``$DUPLEX_CHAOS_REPORT``."""
    REPORTS.append(report)
    path = os.environ.get("DUPLEX_CHAOS_REPORT")
    if path:
        with contextlib.suppress(OSError), open(path, "a") as fh:
            fh.write(json.dumps(report.as_dict()) + "\n")


class ClientTap:
    """Feeds every event of an in-process client into a :class:`Checker`, and keeps them.

    The tap consumes the client's event stream; tests wait on it with :meth:`wait`.

    Args:
        checker: where the events go.
        client: the client (the tap's task runs on the current loop).
        device: the device name for received messages (default: the client's user).
    """

    def __init__(self, checker: Checker, client: Client, device: str | None = None) -> None:
        self.checker = checker
        self.client = client
        self.device = device or client.user
        if device is not None:
            checker.expect(client.user, device)
        self.events: list[ClientEvent] = []
        self._changed = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._collect())

    async def _collect(self) -> None:
        async for event in self.client.events():
            self.events.append(event)
            self.checker.feed_event(self.client.user, event, self.device)
            self._changed.set()

    async def wait(self, predicate: Callable[[ClientTap], bool], timeout: float) -> None:
        """Waits until ``predicate(self)`` holds.

        Raises:
            TimeoutError: it does not within ``timeout`` seconds.
        """
        end = time.monotonic() + timeout
        while not predicate(self):
            remaining = end - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"tap {self.device}: condition not reached")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(remaining, 0.05))

    async def stop(self) -> None:
        """Stops collecting."""
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
