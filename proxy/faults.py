"""The fault planner: which configured fault applies to which record.

One :class:`FaultPlanner` per connection holds the faults of every loaded
scenario, counts how often each has fired (``times``), draws probabilities
from a generator seeded per connection (so a run repeats exactly with the same
seed), and turns the matching actions into one :class:`proxy.engine.Outcome`.
"""

from __future__ import annotations

import fnmatch
import random
from collections.abc import Mapping, Sequence

from tlsinspector.proxy.actions import ACTIONS, CannotApply, Effect, split_record
from tlsinspector.proxy.engine import Outcome, PlainOutcome, RecordView, TimerOutcome
from tlsinspector.proxy.handshake import FINISHED
from tlsinspector.proxy.hello import ClientHello
from tlsinspector.proxy.history import FaultSeen, Side, other
from tlsinspector.proxy.match_keys import MATCH_KEY_SPECS
from tlsinspector.proxy.plaintext import Unit
from tlsinspector.proxy.records import CHANGE_CIPHER_SPEC, HANDSHAKE, Record, RecordFramer
from tlsinspector.proxy.scenario import Fault, Scenario, fault_class, inside


class FaultPlanner:
    def __init__(self, scenarios: Sequence[Scenario], number: int,
                 rng: random.Random, leg: Side | None = None) -> None:
        """``leg``: with --intercept, the TLS connection this plan is for (client or
        server, one planner per leg); a fault with ``leg:`` plans only for its leg,
        one without it for both. None: the transparent path (one TLS connection;
        ``leg:`` is refused there before any planner exists)."""
        self.number = number
        self.rng = rng
        self.leg = leg
        self.faults: list[Fault] = [
            f for s in scenarios for f in s.faults
            if (f.match.connection is None or f.match.connection == number)
            and (f.match.leg is None or f.match.leg == leg)
        ]
        self.fired = [0] * len(self.faults)
        self.classes = [fault_class(f) for f in self.faults]
        self.inside = [inside(f.match) for f in self.faults]
        self.failed: dict[int, str] = {}
        self.seen: dict[str, int] = {"client": 0, "server": 0}
        # Each side's last ChangeCipherSpec record (its index): in TLS 1.2 the
        # handshake record right after it is that side's Finished (RFC 5246 7.4.9).
        self.ccs_at: dict[str, int] = {"client": 0, "server": 0}
        # (side, content type) -> records of that type seen (type_index); the engine
        # counts records per type only when a fault asks (counts_types).
        self.type_seen: dict[tuple[str, int], int] = {}
        self.counts_types = any(f.match.type_index is not None for f in self.faults)
        self.sni: str | None = None
        self.hello_seen = False  # the client's first record went by: SNI known or absent
        self.hello_whole = False  # the client's ClientHello was parsed (its SNI is known)
        self.timers = [i for i, f in enumerate(self.faults) if f.match.timer]
        # Timer fault -> the deadline it last came due at (see on_timer), and the
        # timer faults whose probability draw lost: they do not fire on this connection.
        self.timer_due_at: dict[int, float] = {}
        self.lost_draw: set[int] = set()
        self.plain_protocol: str | None = None  # the plaintext phase's protocol, once seen

    def _live(self, i: int, side: Side, seen: int) -> bool:
        f = self.faults[i]
        m = f.match
        if m.timer:
            return False  # fired by on_timer, never by a record
        if m.plaintext is not None:
            return False  # a plaintext line's fault, never a record's (on_plaintext)
        if m.from_ is not None and m.from_ != side:
            return False
        if m.times is not None and self.fired[i] >= m.times:
            return False
        if i in self.failed:
            return False
        if m.sni is not None and self.hello_seen and (
                self.sni is None or not fnmatch.fnmatch(self.sni, m.sni)):
            return False  # this connection's SNI is known and is not the one
        if m.type_index is not None and m.content_type is not None and (
                self.type_seen.get((side, m.content_type), 0) >= m.type_index):
            return False  # that side's n-th record of the type went by
        return m.index is None or m.index > seen

    def wants_whole_hello(self, side: Side) -> bool:
        return any(self._live(i, side, self.seen[side])
                   and (ACTIONS[self.faults[i].action].rewrites_hello
                        or self.faults[i].match.needs_hello)
                   for i in range(len(self.faults)))

    def wants_inside(self, side: Side) -> bool:
        """A fault inside encryption may still apply to ``side``: the engine opens its
        records (also bulk ones) and passes the plaintext in ``RecordView.inner``."""
        return any(self.inside[i] and self._live(i, side, self.seen[side])
                   for i in range(len(self.faults)))

    def _may_match_inside(self, i: int, side: Side, index: int, outer: int | None) -> bool:
        m = self.faults[i].match
        # TLS 1.2 (outer known): a handshake record right after the side's CCS is its
        # Finished, which a match on another message never selects. Not holding it
        # matters: OpenSSL as a server logs CLIENT_RANDOM only after reading it.
        finished = outer == HANDSHAKE and self.ccs_at[side] == index - 1 > 0
        return (self.inside[i] and self._live(i, side, index - 1)
                and (m.index is None or m.index == index)
                and (outer is None or m.content_type is None or m.content_type == outer)
                and not (finished and m.handshake is not None and m.handshake != FINISHED))

    def may_need_keys(self, side: Side, index: int, outer: int | None = None) -> bool:
        """A fault inside encryption may match record ``index`` of ``side``: while its
        keys are missing the engine holds it (bounded), since only its plaintext can
        tell (handshake type; in TLS 1.3 the content type too). ``outer``: the record's
        content type when it is the real one (TLS 1.2, RFC 5246 6.2.3), else None."""
        return any(self._may_match_inside(i, side, index, outer)
                   for i in range(len(self.faults)))

    def give_up_keys(self, side: Side, index: int, reason: str,
                     outer: int | None = None) -> tuple[FaultSeen, ...]:
        """No keys came in time for record ``index``: every fault inside encryption that
        may have matched it is reported as not applied (``reason``) and stops for this
        connection (its later records would wait for the same missing keys)."""
        out = []
        for i, f in enumerate(self.faults):
            if self._may_match_inside(i, side, index, outer):
                self.failed[i] = reason
                out.append(FaultSeen(f.scenario, f.action, side, index, "", {}, f.params,
                                     not_applied=reason))
        return tuple(out)

    def may_apply(self, side: Side, records_seen: int) -> bool:
        return (any(self._live(i, side, records_seen) for i in range(len(self.faults)))
                or (side == "client" and self._needs_sni()))

    def _needs_sni(self) -> bool:
        """A timer fault for one SNI fires only once on_record has seen the client's
        ClientHello whole (its SNI, or none): until then the client's records must
        come here, also when no record fault is left to apply (the engine would
        otherwise pass them through, and the timer fired on every connection)."""
        return not self.hello_whole and any(self.faults[i].match.sni is not None
                                            for i in self.timers)

    def _matches(self, f: Fault, v: RecordView, in_: bool) -> bool:
        m = f.match
        if m.index is not None and m.index != v.index:
            return False
        if m.encrypted is False and v.encrypted:
            return False
        # Inside encryption the content type and handshake types are the decrypted ones.
        rec, types = (v.inner, v.inner_handshake_types) if in_ else (v.record,
                                                                     v.handshake_types)
        if rec is None:
            return False
        if m.content_type is not None and m.content_type != rec.content_type:
            return False
        if m.type_index is not None and m.type_index != v.type_index:
            return False
        if m.handshake is not None and m.handshake not in types:
            return False
        for key, value in m.content:
            test = MATCH_KEY_SPECS[key].test
            if test is not None and not test(value, v):
                return False
        return m.probability is None or self.rng.random() < m.probability

    def on_record(self, view: RecordView) -> Outcome | None:
        self.seen[view.side] = view.index
        if view.record.content_type == CHANGE_CIPHER_SPEC:
            self.ccs_at[view.side] = view.index
        self.sni = view.sni
        if view.side == "client" and 1 in view.handshake_types:
            self.hello_seen = True
        if view.side == "client" and isinstance(view.hello, ClientHello):
            self.hello_whole = True
        effect: Effect | None = None
        mode: bool | None = None  # inside encryption or not: the first matching fault's
        logged: list[FaultSeen] = []
        for i, f in enumerate(self.faults):
            in_ = self.inside[i]
            if (not self._live(i, view.side, view.index - 1) or (mode is not None
                    and mode != in_) or not self._matches(f, view, in_)):
                continue
            if effect is None:
                mode = in_
                effect = Effect([view.inner if in_ and view.inner else view.record])
            effect.detail = {}
            effect.facts = {}
            try:
                ACTIONS[f.action].run(effect, f.params)
            except CannotApply as e:
                self.failed[i] = str(e)
                logged.append(FaultSeen(f.scenario, f.action, view.side, view.index, "", {},
                                        f.params, not_applied=str(e)))
                continue
            self.fired[i] += 1
            logged.append(FaultSeen(f.scenario, f.action, view.side, view.index,
                                    self.classes[i], dict(effect.detail), f.params,
                                    dict(effect.facts)))
        self.type_seen[(view.side, view.record.content_type)] = view.type_index
        if effect is None:
            return None
        if mode:
            return self._inside(effect, view, tuple(logged))
        raw: bytes | None
        if effect.raw is None and len(effect.records) == 1 and effect.records[0] is view.record:
            # Timing and segmentation faults leave the record alone: the bytes go
            # on exactly as they came (never re-framed: a TLS 1.3 ciphertext may
            # exceed 2^14 bytes, and re-splitting it would break its MAC).
            raw = None
        elif effect.raw is not None:
            raw = effect.raw
        else:
            raw = b"".join(piece.raw for r in effect.records for piece in split_record(r))
        return Outcome(
            to_receiver=raw,
            to_sender=effect.to_sender,
            close=effect.close,
            delay=effect.delay,
            split=effect.split,
            faults=tuple(logged),
            gather=effect.gather,
        )

    # -- timer faults (after_ms, idle_ms): fired by the engine's Wakeup ------------

    def _timer_due(self, i: int, started: float, last: float) -> float | None:
        f = self.faults[i]
        m = f.match
        limit = m.times if m.times is not None else 1
        if self.fired[i] >= limit or i in self.failed or i in self.lost_draw:
            return None
        if m.sni is not None and self.hello_seen and (
                self.sni is None or not fnmatch.fnmatch(self.sni, m.sni)):
            return None
        if m.after_ms is not None:
            due = started + m.after_ms / 1000.0
        else:
            assert m.idle_ms is not None
            due = last + m.idle_ms / 1000.0
        return None if self.timer_due_at.get(i) == due else due

    def next_timer(self, started: float, last: float) -> float | None:
        """When the earliest timer fault may fire (None: none left); ``last`` is the
        time the last byte passed either way."""
        due = [t for i in self.timers if (t := self._timer_due(i, started, last)) is not None]
        return min(due) if due else None

    def on_timer(self, now: float, started: float, last: float) -> TimerOutcome | None:
        """Run every timer fault whose time has come. An alert goes toward the peer
        of ``from`` (both peers without it), as if that side had sent it."""
        out: dict[Side, bytes] = {"client": b"", "server": b""}
        close = None
        logged: list[FaultSeen] = []
        for i in self.timers:
            due = self._timer_due(i, started, last)
            f = self.faults[i]
            if due is None or due > now:
                continue
            # A deadline that came is spent: it fires once (again only when it moves,
            # idle_ms after bytes passed), and a lost probability draw is final. A
            # passed deadline left in next_timer, the minimum of them all, hid every
            # later timer fault (the engine asked for no wakeup).
            self.timer_due_at[i] = due
            if f.match.probability is not None and self.rng.random() >= f.match.probability:
                self.lost_draw.add(i)
                continue
            effect = Effect([])
            try:
                ACTIONS[f.action].run(effect, f.params)
            except CannotApply as e:
                self.failed[i] = str(e)
                continue
            self.fired[i] += 1
            sender: Side = f.match.from_ or "server"
            data = b"".join(r.raw for r in effect.records)
            for to in ((other(sender),) if f.match.from_ else ("client", "server")):
                out[to] += data
            close = effect.close or close
            trigger = ({"after_ms": f.match.after_ms} if f.match.after_ms is not None
                       else {"idle_ms": f.match.idle_ms})
            facts = dict(effect.facts)
            facts["timer"] = trigger
            logged.append(FaultSeen(f.scenario, f.action, sender, self.seen[sender],
                                    self.classes[i], {**trigger, **effect.detail}, f.params,
                                    facts))
        if not logged:
            return None
        return TimerOutcome(out["client"], out["server"], close, tuple(logged))

    @staticmethod
    def _inside(effect: Effect, view: RecordView, logged: tuple[FaultSeen, ...]) -> Outcome:
        """The outcome of faults inside encryption: plaintext records the engine seals
        (proxy/reseal.py) in place of the record and toward its sender."""
        if effect.raw is not None:  # replace-with-raw: bytes instead of the record
            return Outcome(effect.raw, b"", effect.close, effect.delay, effect.split, logged)
        inner = tuple(p for r in effect.records for p in split_record(r, plaintext=True))
        back = tuple(x for x in RecordFramer().feed(effect.to_sender) if isinstance(x, Record))
        unchanged = len(inner) == 1 and inner[0] is view.inner
        return Outcome(None, b"", effect.close, effect.delay, effect.split, logged,
                       None if unchanged else inner, back)

    # -- the plaintext phase (issue 17) ---------------------------------------------

    def wants_plaintext(self) -> bool:
        """A fault matches plaintext lines: the engine holds them whole until seen."""
        return any(f.match.plaintext is not None for f in self.faults)

    def _plain_matches(self, i: int, unit: Unit) -> bool:
        f = self.faults[i]
        pm, line = f.match.plaintext, unit.line
        if pm is None or line is None or i in self.failed:
            return False
        if f.match.times is not None and self.fired[i] >= f.match.times:
            return False
        if pm.from_ is not None and pm.from_ != line.side:
            return False
        if pm.protocol is not None and pm.protocol != line.protocol:
            return False
        if pm.contains is not None and pm.contains not in unit.raw.lower():
            return False
        p = f.match.probability
        return p is None or self.rng.random() < p

    def on_plaintext(self, unit: Unit, number: int) -> PlainOutcome | None:
        """The faults that match this plaintext line, applied in order."""
        effect: Effect | None = None
        logged: list[FaultSeen] = []
        assert unit.line is not None
        self.plain_protocol = unit.line.protocol
        side = unit.line.side
        for i, f in enumerate(self.faults):
            if effect is not None and effect.raw == b"":
                # No later fault is consulted, not even its probability drawn.
                break                  # dropped already: nothing left to change
            if not self._plain_matches(i, unit):
                continue
            if effect is None:
                effect = Effect([], raw=unit.raw, plain=unit.line)
            effect.detail = {}
            try:
                ACTIONS[f.action].run(effect, f.params)
            except CannotApply as e:
                self.failed[i] = str(e)
                logged.append(FaultSeen(f.scenario, f.action, side, 0, "", {}, f.params,
                                        not_applied=str(e)))
                continue
            self.fired[i] += 1
            logged.append(FaultSeen(f.scenario, f.action, side, 0, self.classes[i],
                                    dict(effect.detail), f.params,
                                    {"plaintext": unit.line.text(),
                                     "starttls": unit.line.starttls}))
        if effect is None:
            return None
        return PlainOutcome(effect.raw or b"", effect.to_sender, tuple(logged))

    def unapplied(self, records: Mapping[str, int] | None = None) -> list[str]:
        """Faults that never fired, each with why; ``records``: records each side sent
        (the engine's count; the plan's own stops once no fault may apply)."""
        counts = records if records is not None else self.seen
        out = []
        for i, f in enumerate(self.faults):
            where = f"{f.scenario} fault #{f.number} ({f.action}, {f.source}:{f.line})"
            if i in self.failed:
                out.append(f"{where}: could not apply: {self.failed[i]}")
            elif i in self.lost_draw:
                out.append(f"{where}: its timer came, the probability draw "
                           f"({f.match.probability}) did not fire it")
            elif self.fired[i] == 0 and f.match.timer:
                timer = (f"after_ms {f.match.after_ms}" if f.match.after_ms is not None
                         else f"idle_ms {f.match.idle_ms}")
                out.append(f"{where}: its timer ({timer}) never fired: the connection "
                           "ended first")
            elif self.fired[i] == 0 and f.match.plaintext is not None:
                # Only where it could have: a plaintext phase of its protocol.
                want = f.match.plaintext.protocol
                if self.plain_protocol is not None and want in (None, self.plain_protocol):
                    out.append(f"{where}: never matched a {self.plain_protocol} line")
            elif self.fired[i] == 0:
                side = f.match.from_
                seen = (f"{side} sent {counts.get(side, 0)} records" if side
                        else f"client sent {counts.get('client', 0)}, "
                             f"server {counts.get('server', 0)} records")
                out.append(f"{where}: never matched ({seen})")
        return out
