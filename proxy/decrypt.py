"""Connection-level decryption from logged keys, sans-io (issue 14).

The proxy never terminates TLS. With the secrets a peer wrote to its key log
(proxy/keylog.py), a :class:`Decryptor` follows one connection's records as
they pass and opens the encrypted ones:

    dec = Decryptor()
    res = dec.record("server", index, header, payload)   # every record, in order
    late = dec.keys_from(keylog)                         # after each record and
                                                         # whenever the key log grew
    dec.add_keys(keys); dec.wanted()                     # the same, by hand

For the engine: one Decryptor per connection, one shared KeyLog fed by the
file follower; ``res.summary()`` goes after ``| decrypted:`` on the record
line, ``res.to_json()`` is the record event's ``decrypted`` field, and each
late result becomes a ``decrypted`` event naming ``(side, index)``.
Forwarding never waits on this object: it only reads bytes already sent.

:meth:`Decryptor.record` is fed *every* record of both directions, plaintext
ones included (it reads the plaintext ClientHello and ServerHello itself: the
client random, version, cipher suite, server random and encrypt_then_mac). It
returns one :class:`Decrypted` per record: ``plaintext`` (not protected),
``decrypted`` (inner content type, plaintext length, decoded handshake messages
via proxy/protected_messages.py, the alert by name), ``pending`` (its keys have
not arrived; the record is queued) or ``undecryptable`` with a reason (wrong
keys or changed bytes: evidence for bad_record_mac). Application data is never
kept: only its inner type and length.

Key changes, per direction (the sender's side):

- TLS 1.3 (RFC 8446 2, 7.3): after the ServerHello both sides use their
  handshake traffic secret; a side switches to ``*_TRAFFIC_SECRET_0`` after its
  own Finished, and to the next secret after each KeyUpdate it sends (7.2).
  Outer records other than application_data (the compatibility CCS, a
  plaintext alert) pass as plaintext.
- TLS 1.2 (RFC 5246 7.1): a side's records are protected after its
  ChangeCipherSpec, with keys from the key block (CLIENT_RANDOM master secret
  + both randoms). A renegotiation inside the encrypted channel (RFC 5246
  7.4.1.1, RFC 5746) is followed: its decrypted hellos set the new randoms and
  suite, its encrypted CCS switches the side to keys under the new client
  random (:meth:`Decryptor.wanted` then names it).

Late keys: when a side needs a secret that is not known yet, that record and
every later one of the side are queued. :meth:`Decryptor.add_keys` decrypts
the queue and returns the late results, each naming its record (``side``,
``index``) with ``late=True``. The wait is bounded in time and size: once the
side's first queued record came ``key_wait`` seconds ago (``now`` is passed
in), or ``max_pending`` records or ``max_pending_bytes`` of payload wait, the
side gives up (reported on that record, and once per connection by
:meth:`Decryptor.take_note`): from then on its records are relayed as bulk,
never queued or opened, so a key log that lacks a connection's keys costs what
no key log costs.

Re-sealing (for a fault engine): every decrypted result carries ``seq`` and
``protection``, the live :class:`~proxy.protection.RecordProtection` that
opened it. To change a record: ``p = res.protection.clone(); p.seq = res.seq;
inner, pt = p.open(header, payload); p.seq = res.seq + shift; payload2 =
p.seal(inner, changed, version)``. ``protection`` is excluded from
``to_json`` and its repr shows no key. Not supported yet: TLS 1.3 0-RTT
early data, TLS 1.0/1.1, and SSL 3.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any, Literal

from tlsinspector.proxy import handshake as hs
from tlsinspector.proxy import keylog, messages, names
from tlsinspector.proxy import keyschedule as ks
from tlsinspector.proxy.frozen import fast_init
from tlsinspector.proxy.hello import parse_client_hello, parse_server_hello
from tlsinspector.proxy.protected_messages import DecodedMessage, decode
from tlsinspector.proxy.protection import ProtectionError, RecordProtection, tls12, tls13
from tlsinspector.proxy.render import alert_words
from tlsinspector.proxy.wire import DecodeError

Side = Literal["client", "server"]
Status = Literal["plaintext", "decrypted", "pending", "undecryptable"]
Json = dict[str, Any]

CHANGE_CIPHER_SPEC, ALERT, HANDSHAKE, APPLICATION_DATA = 20, 21, 22, 23
TLS12, TLS13 = 0x0303, 0x0304
ENCRYPT_THEN_MAC = 22
MAX_PENDING = 256  # records queued per side while its keys are missing
# Payload bytes queued per side while its keys are missing. Only a TLS 1.3 side still
# in its handshake epoch queues whole records (later ones are counted, see skip), and
# no handshake flight comes near this (OpenSSL's max_cert_list is 100 KiB, Go caps a
# Certificate message at 256 KiB): a side past it is clearly beyond its handshake
# without keys. It also bounds the memory one connection queues (256 x 16 KiB before).
MAX_PENDING_BYTES = 1 << 20

_T13_LABELS = {
    ("client", "handshake"): keylog.CLIENT_HANDSHAKE_TRAFFIC_SECRET,
    ("server", "handshake"): keylog.SERVER_HANDSHAKE_TRAFFIC_SECRET,
    ("client", "application"): keylog.CLIENT_TRAFFIC_SECRET_0,
    ("server", "application"): keylog.SERVER_TRAFFIC_SECRET_0,
}


@fast_init
@dataclass(frozen=True, slots=True)
class Decrypted:
    """What one record held, as far as the keys allow."""

    side: Side
    index: int
    status: Status
    inner_type: int | None = None
    length: int | None = None  # plaintext length (without TLS 1.3 type and padding)
    messages: tuple[DecodedMessage, ...] = ()
    alert: Json | None = None
    reason: str = ""
    late: bool = False
    epoch: str = ""  # "handshake", "application", "application+1", "tls12", "tls12#2"...
    seq: int | None = None
    protection: RecordProtection | None = field(default=None, compare=False, repr=False)

    def to_json(self) -> Json:
        """The ``decrypted`` field of a record event (no plaintext, no keys)."""
        out: Json = {"status": self.status}
        if self.inner_type is not None:
            out["inner_type"] = names.content_type_name(self.inner_type)
            out["length"] = self.length
            out["epoch"] = self.epoch
            out["seq"] = self.seq
        if self.messages:
            out["messages"] = [m.fields for m in self.messages]
        if self.alert is not None:
            out["alert"] = self.alert
        if self.reason:
            out["reason"] = self.reason
        if self.late:
            out["record"] = {"side": self.side, "index": self.index}
        return out

    def event_json(self) -> Json:
        """:meth:`to_json` and ``summary``: an event's ``decrypted`` field, built once
        (not a copy of to_json's dict with the summary added)."""
        out = self.to_json()
        out["summary"] = self.summary()
        return out

    def summary(self) -> str:
        """One line for the terminal, e.g. ``handshake certificate chain=2 [...]``."""
        if self.status != "decrypted":
            return f"{self.status}" + (f": {self.reason}" if self.reason else "")
        if self.alert is not None:
            a = self.alert
            return f"ALERT {alert_words(a['level'], a['description'], a['code'])}"
        name = names.content_type_name(self.inner_type or 0)
        if self.messages:
            return f"{name} " + "; ".join(m.summary for m in self.messages)
        return f"{name} len={self.length}"


@dataclass(slots=True)
class _Negotiation:
    """The parameters of the current (re)negotiation, from the hellos."""

    client_random: bytes | None = None
    server_random: bytes | None = None
    version: int | None = None
    suite: ks.Suite | None = None
    suite_code: int | None = None
    etm: bool = False
    generation: int = 0

    def copy(self) -> _Negotiation:
        # Not dataclasses.replace: that re-runs field processing, 10x slower per call.
        return _Negotiation(self.client_random, self.server_random, self.version, self.suite,
                            self.suite_code, self.etm, self.generation)


@dataclass(slots=True)
class _SideState:
    name: Side
    active: bool = False  # records of this side are protected
    prot: RecordProtection | None = None
    epoch: str = ""
    secret: bytes = b""  # TLS 1.3 current traffic secret (for KeyUpdate)
    # What the next keys need while they are missing: (label, client random, negotiation).
    need: tuple[str, bytes, _Negotiation] | None = None
    # Queued records: (index, header, payload); payload None for a bulk record
    # only counted (:meth:`Decryptor.skip`): it still takes a sequence number.
    queue: deque[tuple[int, bytes, bytes | None]] = field(default_factory=deque)
    queued_bytes: int = 0
    since: float | None = None  # when the queue's first record came (the wait's start)
    gave_up: str = ""
    plain: hs.HandshakeReassembler = field(default_factory=hs.HandshakeReassembler)
    inner: hs.HandshakeReassembler = field(default_factory=hs.HandshakeReassembler)
    # What the installed keys came from: (label, negotiation, the secret), for a retry
    # with a newer line of the same label (:meth:`Decryptor._fresher`). Key material.
    source: tuple[str, _Negotiation, bytes] | None = None


class Decryptor:
    """One connection's decryption state; see the module docstring."""

    def __init__(self, max_pending: int = MAX_PENDING, hellos_from_caller: bool = False,
                 key_wait: float | None = None,
                 max_pending_bytes: int = MAX_PENDING_BYTES, owner: Any = None) -> None:
        self.max_pending = max_pending
        # Pinned with this connection's client randoms (KeyLog.owners): what the proxy
        # side asks to take late keys when the key log gains them (an opaque object).
        self.owner = owner
        self.max_pending_bytes = max_pending_bytes
        # How long (seconds, on the clock of the ``now`` passed to record/skip) a side
        # waits for a secret before it gives up: None waits until the queue bounds.
        self.key_wait = key_wait
        # Why the keys of this connection never arrived: one line, set by the first
        # give-up, for the caller to log once (:meth:`take_note`). No secret in it.
        self._note = ""
        self._noted = False
        # The engine parses the plaintext hellos anyway and passes them in
        # (client_hello / server_hello): parsing them here again cost a third of
        # the decryptor's time per handshake.
        self.hellos_from_caller = hellos_from_caller
        self.neg = _Negotiation()
        self._keys: dict[bytes, keylog.ConnectionKeys] = {}
        # Client randoms pinned in the shared KeyLog (never evicted while this
        # connection may still need them); :meth:`release` unpins them.
        self._pinned: set[bytes] = set()
        self._pinned_in: keylog.KeyLog | None = None
        self._released = False
        # The key log and its generation at the last full look (keys_from): while
        # it has not changed and no random is to be pinned, a look finds nothing new.
        self._looked: tuple[keylog.KeyLog, int] | None = None
        # A client random was seen and is not pinned yet: keys_from has work to do
        # even while no side waits for a secret (see :meth:`wants_log`).
        self.pin_due = False
        self._client, self._server = _SideState("client"), _SideState("server")
        # The TLS 1.2 key block of the last negotiation, by what it was derived from
        # (both sides' keys are in it: derived once, see _key_block). Key material.
        self._last_block: tuple[tuple[ks.Suite, bytes, bytes, bytes],
                                tuple[ks.Tls12Keys, ks.Tls12Keys]] | None = None
        self._sides: dict[Side, _SideState] = {"client": self._client, "server": self._server}
        # Secrets the key log held for a client random before this connection's
        # ClientHello was seen (taken when the random is pinned, in the same call as the
        # hello's record): most likely another connection's, whose client reused the
        # random (testssl.sh sends one fixed random; a new handshake makes new secrets),
        # though a TLS 1.2 resumption logs its session's master secret again. Installed
        # all the same; when the epoch's first record does not open with one, the side
        # waits for this connection's own line (_wait_fresh) and refuses that one.
        self._stale: dict[tuple[bytes, str], bytes] = {}
        self._refused: set[tuple[bytes, str, bytes]] = set()

    def __repr__(self) -> str:
        v = names.version_name(self.neg.version) if self.neg.version else "?"
        s = self.neg.suite.name if self.neg.suite else "?"
        return f"Decryptor({v}, {s}, keys={len(self._keys)})"

    # --- inputs -------------------------------------------------------------

    @property
    def version(self) -> int | None:
        return self.neg.version

    @property
    def suite(self) -> ks.Suite | None:
        return self.neg.suite

    def protection(self, side: Side) -> RecordProtection | None:
        """The live protection of a side's current epoch (None before keys)."""
        return self._sides[side].prot

    def epoch(self, side: Side) -> str:
        """The name of a side's current key epoch (``Decrypted.epoch`` of its next record)."""
        return self._sides[side].epoch

    def wanted(self) -> set[bytes]:
        """Client randoms whose key log entries this connection needs."""
        out = {self.neg.client_random} if self.neg.client_random else set()
        out |= {s.need[1] for s in self._sides.values() if s.need}
        return {r for r in out if r is not None}

    def client_hello(self, random: bytes) -> None:
        """A ClientHello's random (the plaintext one, or a renegotiation's)."""
        if self.neg.client_random != random:
            self.neg.client_random = random
            self.neg.server_random = None
            self.pin_due = not self._released

    def server_hello(self, version: int, suite_code: int, random: bytes,
                     encrypt_then_mac: bool) -> None:
        """The negotiated parameters; in TLS 1.3 both sides now use handshake keys."""
        if self.neg.server_random == random:
            return  # seen already (the engine and the record path may both call)
        self.neg.version, self.neg.suite_code = version, suite_code
        self.neg.suite = ks.suite(suite_code) if version in (TLS12, TLS13) else None
        self.neg.server_random = random
        self.neg.etm = encrypt_then_mac
        self.neg.generation += 1
        if version == TLS13:
            for side in self._sides.values():
                self._switch(side, "handshake")

    def add_keys(self, keys: keylog.ConnectionKeys) -> list[Decrypted]:
        """Keys from the key log (any connection's: others are ignored).

        Returns the late results of records queued while these keys were
        missing, in record order per side.
        """
        known = self._keys.get(keys.client_random)
        if known is not None and known is not keys:
            # The shared log evicted and re-created the entry: keep the labels seen before.
            keys = keylog.ConnectionKeys(keys.client_random, {**known.secrets, **keys.secrets})
        self._keys[keys.client_random] = keys
        out: list[Decrypted] = []
        for side in self._sides.values():
            if side.need is None or side.need[1] != keys.client_random:
                continue
            label, _, neg = side.need
            if not self._install(side, label, neg):
                continue
            # This wait is over; a record still queued behind a later key change
            # starts the next one (and its key_wait) when the next record comes.
            side.since = None
            while side.queue and side.need is None:
                index, header, payload = side.queue.popleft()
                if payload is None:
                    assert side.prot is not None  # installed above
                    side.prot.seq += 1
                    continue
                side.queued_bytes -= len(payload)
                out.append(self._open(side, index, header, payload, late=True))
        return out

    def keys_from(self, log: keylog.KeyLog) -> list[Decrypted]:
        """Take whatever ``log`` has for this connection (call after each record and
        whenever the key log grew); returns the late results it unblocked."""
        if not self.pin_due and self._looked == (log, log.generation):
            # Nothing was added since the last look: what this connection found then
            # is in self._keys already (a side that switched epoch since looked there).
            return []
        self._looked = (log, log.generation)
        out: list[Decrypted] = []
        self.pin_due = False
        for random in sorted(self.wanted()):
            keys = log.get(random)
            if random not in self._pinned and not self._released:
                log.pin(random, self.owner)
                self._pinned.add(random)
                self._pinned_in = log
                if keys is not None and random not in self._keys and not log.complete:
                    self._stale.update(((random, label), secret)
                                       for label, secret in keys.secrets.items())
            if keys is not None:
                out += self.add_keys(keys)
        return out

    def release(self) -> None:
        """The connection closed: its key log entries may be evicted again."""
        if self._pinned_in is not None:
            for random in self._pinned:
                self._pinned_in.unpin(random, self.owner)
        self._pinned.clear()
        self._released = True  # late keys after the close still decrypt, unpinned

    def record(self, side: Side, index: int, header: bytes, payload: bytes,
               now: float | None = None) -> Decrypted:
        """One record as it passes (``header``: its 5 bytes as on the wire; ``now``:
        when, for the ``key_wait`` bound on waiting for keys)."""
        st = self._sides[side]
        content_type = header[0]
        if not st.active or (self.neg.version == TLS13 and content_type != APPLICATION_DATA):
            return self._plaintext(st, index, content_type, payload)
        if st.gave_up:
            return Decrypted(side, index, "undecryptable", reason=st.gave_up)
        if st.need is not None or st.queue:
            if self._wait_over(st, now):
                return Decrypted(side, index, "undecryptable", reason=st.gave_up)
            if st.since is None:
                st.since = now
            st.queue.append((index, header, payload))
            st.queued_bytes += len(payload)
            return Decrypted(side, index, "pending",
                             reason=f"waiting for {st.need[0] if st.need else 'keys'}")
        return self._open(st, index, header, payload, late=False, now=now)

    def _wait_over(self, st: _SideState, now: float | None) -> bool:
        """Whether ``st`` stops waiting for its keys (then ``st.gave_up`` says why): its
        queue is full (``max_pending`` records, or ``max_pending_bytes`` of payload:
        beyond any handshake flight), or its first queued record came ``key_wait``
        ago. Keys that arrive before then still open every queued record."""
        if len(st.queue) >= self.max_pending or st.queued_bytes >= self.max_pending_bytes:
            self._give_up(st, f"while {len(st.queue)} records ({st.queued_bytes} bytes) "
                              "waited")
            return True
        return self._timed_out(st, now)

    def _timed_out(self, st: _SideState, now: float | None) -> bool:
        if now is None or st.since is None or self.key_wait is None or st.gave_up:
            return False
        waited = now - st.since
        if waited < self.key_wait:
            return False
        self._give_up(st, f"within {round(waited * 1000)} ms")
        return True

    def expire(self, now: float) -> bool:
        """Give up the waits that are older than ``key_wait`` (True if one was): the
        caller calls this while :meth:`needs_keys`, so that a side that sends nothing
        more still stops waiting (a client whose one Finished record waits keeps the
        connection off the lean path otherwise)."""
        return any([self._timed_out(s, now) for s in self._sides.values()])

    def _give_up(self, st: _SideState, how: str) -> None:
        """``st`` gives up waiting, and with it every side waiting for keys of the same
        client random (one writer logs them together: if these never came, neither
        will those). Their queues are dropped (those records stay ``pending`` in the
        log), their records are bulk from now on (:meth:`bulk`), and one line for the
        connection says so (:meth:`take_note`)."""
        need = st.need
        sides = [s for s in self._sides.values() if not s.gave_up and (
            s is st or (need is not None and s.need is not None and s.need[1] == need[1]))]
        labels = ", ".join(s.need[0] for s in sides if s.need is not None) or "keys"
        pending = sum(len(s.queue) for s in sides)
        for s in sides:
            s.gave_up = f"keys for {s.need[0] if s.need else 'this side'} never arrived"
            s.queue.clear()
            s.queued_bytes, s.since = 0, None
        if not self._note:
            # The client random is on the wire in the ClientHello: not a secret.
            random = need[1].hex()[:16] + "..." if need is not None else "?"
            self._note = (f"keys never arrived for client_random {random} {how} ({labels}): "
                          "this connection's encrypted records are relayed without "
                          f"decryption from here; {pending} records logged pending stay "
                          "pending")
            known = self._keys.get(need[1]) if need is not None else None
            if known is not None and known.secret(keylog.ECH_SECRET) is not None:
                self._note += ("; the key log has an ECH_SECRET for this random: with "
                               "Encrypted Client Hello accepted, the writer logs the "
                               "traffic secrets under the inner ClientHello's random, "
                               "which is encrypted and never seen by the proxy (RFC 9850 "
                               "3, 4), so ECH connections are not decrypted")

    def take_note(self) -> str:
        """The one line (once per connection) saying that this connection's keys never
        arrived, after the first give-up; "" before it and after it was taken."""
        if self._noted or not self._note:
            return ""
        self._noted = True
        return self._note

    def close_note(self) -> str:
        """At the connection's close: the one line saying its keys never arrived, if
        :meth:`take_note` has not said it yet (a give-up not taken, or records still
        waiting because the connection ended before ``key_wait``: a client that writes
        no key log, a key log of another peer); "" otherwise. No secret in it."""
        note = self.take_note()
        missing = self.missing()
        pending = sum(len(s.queue) for s in self._sides.values())
        if note or self._noted or not missing or not pending:
            # (no record waited: a handshake that ended before the secret it would
            # have needed next, e.g. a client that refused the certificate)
            return note
        self._noted = True
        labels = ", ".join(dict.fromkeys(label for label, _ in missing))
        return (f"keys never arrived for client_random {missing[0][1].hex()[:16]}... by the "
                f"connection's close ({labels}): the key logs do not hold this connection's "
                f"keys (a peer that writes none, or another peer's log), so its {pending} "
                "encrypted records logged pending stay pending")

    def bulk(self, side: Side) -> bool:
        """Whether ``side`` is past its handshake epoch, so a large application_data
        record of it is bulk: :meth:`skip` instead of :meth:`record`. A side that gave
        up (its keys never arrived, or they did not open its records) is bulk too: its
        first undecryptable record said why, and opening each later one again to say
        the same cost more than the relaying (3.4x the CPU per GB when a key log lacks
        the connection's keys)."""
        st = self._sides[side]
        return st.active and (bool(st.gave_up) or st.epoch not in ("", "handshake"))

    def expects_keys(self) -> bool:
        """A handshake is under way and some side has not reached its application keys:
        secrets for this connection are about to be (or were just) written. The proxy
        reads the key log *before* handing such a connection's bytes in, so records
        open at once instead of waiting (pending, then a late event)."""
        return self.neg.client_random is not None and not self._released and any(
            not s.gave_up and (s.prot is None or s.epoch in ("", "handshake"))
            for s in self._sides.values())

    def settled(self) -> bool:
        """Both sides are past their handshake keys (or gave up) and no client random
        is left to pin: from now on each side's records open with keys it holds or
        is waiting for in the key log (a KeyUpdate derives the next secret itself,
        RFC 8446 7.2), small ones opened, bulk ones counted. The proxy then need not
        read the key log before each chunk, and issue 19's hot path may take the
        connection: keys still missing (OpenSSL as a server logs the client's
        application secret only once it has read the client's Finished, after the
        proxy passed it on) arrive through the proxy's key log timer, and the
        records that waited for them are completed by late ``decrypted`` events, as
        for any late key. A later TLS 1.2 renegotiation waits the same way."""
        return not self.pin_due and all(
            s.gave_up or (s.active and s.epoch not in ("", "handshake"))
            for s in self._sides.values())

    def gave_up(self, side: Side) -> str:
        """Why ``side``'s records can no longer be opened ("" while they can)."""
        return self._sides[side].gave_up

    def wants_log(self) -> bool:
        """Whether :meth:`keys_from` can do anything now (a side waits for a secret, or
        a client random is to be pinned): callers skip it otherwise, per record."""
        return self.pin_due or self.needs_keys()

    def missing(self) -> list[tuple[str, bytes]]:
        """(label, client random) of each secret a side still waits for (none once it
        gave up): what an offline analysis names when its key logs never had it."""
        return [s.need[:2] for s in (self._client, self._server)
                if s.need is not None and not s.gave_up]

    def needs_keys(self) -> bool:
        """A side waits for a secret the key log has not given yet (asked per record
        and per chunk: two plain tests, no generator)."""
        c, s = self._client, self._server
        return ((c.need is not None and not c.gave_up)
                or (s.need is not None and not s.gave_up))

    def skip(self, side: Side, index: int, header: bytes, now: float | None = None) -> None:
        """A bulk application_data record, counted but never opened (RFC 8446 5.3,
        RFC 5246 6.1: it still consumes a sequence number). Only for :meth:`bulk` sides:
        a record that might carry a handshake message or an alert is fed to
        :meth:`record` instead."""
        st = self._sides[side]
        if not st.active or st.gave_up:
            return
        if st.need is not None or st.queue:
            if self._wait_over(st, now):
                return
            if st.since is None:
                st.since = now
            st.queue.append((index, header, None))
            return
        if st.prot is not None:
            st.prot.seq += 1

    def skip_run(self, side: Side, first: int, version: int, lengths: list[int],
                 now: float | None = None) -> int:
        """:meth:`skip` for a run of bulk application_data records (indexes ``first``
        on, one ``version``, their ``lengths``): the sequence number moves once for
        all of them (issue 14: a keyed download costs what a keyless one does).
        Returns how many of them count as inner application data (as the caller
        counts after each :meth:`skip`: not those of a side that gave up)."""
        st = self._sides[side]
        if st.active and not st.gave_up and st.need is None and not st.queue:
            if st.prot is not None:
                st.prot.seq += len(lengths)
            return len(lengths)
        counted = 0  # waiting for keys, or given up: record by record, as skip does
        for i, length in enumerate(lengths):
            self.skip(side, first + i, bytes((APPLICATION_DATA, version >> 8, version & 0xFF,
                                              length >> 8, length & 0xFF)), now)
            counted += not self.gave_up(side)
        return counted

    # --- plaintext ----------------------------------------------------------

    def _plaintext(self, st: _SideState, index: int, content_type: int,
                   payload: bytes) -> Decrypted:
        if content_type == HANDSHAKE and not self.hellos_from_caller:
            for msg in st.plain.feed(payload, index):
                self._hello(msg)
        elif content_type == CHANGE_CIPHER_SPEC and self.neg.version == TLS12:
            self._ccs(st)
        return Decrypted(st.name, index, "plaintext")

    def _hello(self, msg: hs.HandshakeMessage) -> None:
        try:
            if msg.msg_type == hs.CLIENT_HELLO:
                self.client_hello(parse_client_hello(msg.body).random)
            elif msg.msg_type == hs.SERVER_HELLO:
                sh = parse_server_hello(msg.body)
                if not sh.is_hrr:
                    self.server_hello(sh.selected_version, sh.cipher_suite, sh.random,
                                      sh.extension(ENCRYPT_THEN_MAC) is not None)
        except DecodeError:
            pass  # the engine logs the unparsed hello; nothing to decrypt with

    # --- key changes --------------------------------------------------------

    def _ccs(self, st: _SideState) -> None:
        """TLS 1.2 ChangeCipherSpec: the side's next records use the current keys."""
        st.active = True
        self._switch(st, "tls12")

    def _switch(self, st: _SideState, epoch: str) -> None:
        neg = self.neg.copy()  # a snapshot: a renegotiation must not change it
        st.active = True
        st.prot = None
        if neg.suite is None or neg.client_random is None:
            why = (f"cipher suite {names.cipher_suite_name(neg.suite_code or 0)} is not supported"
                   if neg.client_random else "no ClientHello seen")
            st.gave_up = why
            return
        st.gave_up = ""
        if epoch == "tls12":
            label = keylog.CLIENT_RANDOM
            epoch = "tls12" if neg.generation <= 1 else f"tls12#{neg.generation}"
        else:
            label = _T13_LABELS[(st.name, epoch)]
        st.epoch = epoch
        st.need = (label, neg.client_random, neg)
        self._install(st, label, neg)

    def _install(self, st: _SideState, label: str, neg: _Negotiation) -> bool:
        """Derive the side's protection if the secret is known; True when installed."""
        assert neg.suite is not None and neg.client_random is not None  # checked by _switch
        keys = self._keys.get(neg.client_random)
        secret = keys.secret(label) if keys else None
        if secret is None or (neg.client_random, label, secret) in self._refused:
            return False
        st.source = (label, neg, secret)
        if neg.suite.tls13:
            st.secret = secret
            st.prot = tls13(neg.suite, secret)
        else:
            if neg.server_random is None:
                return False
            c, s = self._key_block(neg.suite, secret, neg.client_random, neg.server_random)
            st.prot = tls12(neg.suite, c if st.name == "client" else s,
                            neg.etm and not neg.suite.aead)
        st.need = None
        return True

    def _key_block(self, suite: ks.Suite, secret: bytes, client_random: bytes,
                   server_random: bytes) -> tuple[ks.Tls12Keys, ks.Tls12Keys]:
        """ks.key_block, once per negotiation: both sides install from the same one
        (the last one is kept; a renegotiation makes another)."""
        args = (suite, secret, client_random, server_random)
        last = self._last_block
        if last is None or last[0] != args:
            last = self._last_block = (args, ks.key_block(*args))
        return last[1]

    @staticmethod
    def _logged(st: _SideState) -> tuple[str, _Negotiation, bytes, bytes] | None:
        """(label, negotiation, secret, client random) of the logged line ``st``'s keys
        came from; None for keys derived here (a KeyUpdate's) or none installed."""
        if st.source is None or st.epoch.startswith("application+"):
            return None
        label, neg, used = st.source
        assert neg.client_random is not None  # set before anything was installed
        return label, neg, used, neg.client_random

    def _fresher(self, st: _SideState) -> bool:
        """The first record of ``st``'s epoch did not open, and the key log now holds
        another secret of the label its keys came from (a newer line for the same
        client random: a client that reuses its random, a writer that logged again):
        install that one instead (True), for the caller to try the record once more."""
        if (logged := self._logged(st)) is None:
            return False
        label, neg, used, random = logged
        keys = self._keys.get(random)
        newer = keys.secret(label) if keys else None
        if newer is None or newer == used:
            return False
        return self._install(st, label, neg)

    def _refuse_stale(self, st: _SideState) -> bool:
        """Whether ``st``'s keys came from a secret the key log held before this
        connection's ClientHello (``_stale``); if so it is refused from now on."""
        if (logged := self._logged(st)) is None:
            return False
        label, _, used, random = logged
        if self._stale.get((random, label)) != used:
            return False
        self._refused.add((random, label, used))
        return True

    def _wait_fresh(self, st: _SideState, index: int, header: bytes, payload: bytes,
                    now: float | None) -> Decrypted:
        """Queue the epoch's first record as if its keys were missing, after its stale
        secret was refused: this connection's own line, when it comes, opens it (within
        ``key_wait``, as any wait); until then the side's records queue behind it."""
        logged = self._logged(st)
        assert logged is not None  # (_refuse_stale found it)
        label, neg, _, _ = logged
        assert neg.client_random is not None
        st.prot, st.source = None, None
        st.need = (label, neg.client_random, neg)
        st.queue.append((index, header, payload))
        st.queued_bytes += len(payload)
        st.since = now
        return Decrypted(st.name, index, "pending", reason=(
            f"waiting for a newer {label}: the one logged before this connection's "
            "ClientHello (its client random was used before) does not open it"))

    def _key_update(self, st: _SideState) -> None:
        """RFC 8446 7.2: the sender's next records use the next traffic secret."""
        if self.neg.suite is None or not st.secret:
            return
        st.secret = ks.next_traffic_secret(self.neg.suite, st.secret)
        st.prot = tls13(self.neg.suite, st.secret)
        n = st.epoch.partition("+")[2]
        st.epoch = f"application+{int(n or 0) + 1}"

    # --- protected records --------------------------------------------------

    def _open(self, st: _SideState, index: int, header: bytes, payload: bytes,
              late: bool, now: float | None = None) -> Decrypted:
        prot = st.prot
        assert prot is not None  # record() queues while need is set
        seq, epoch = prot.seq, st.epoch
        try:
            inner_type, plaintext = prot.open(header, payload)
        except ProtectionError as e:
            # The epoch's first record: its secret may be another connection's line for
            # the same client random (see _stale); a newer line is tried, or awaited.
            stale = seq == 0 and self._refuse_stale(st)
            if not (seq == 0 and self._fresher(st)):
                if stale and not late:
                    return self._wait_fresh(st, index, header, payload, now)
                return Decrypted(st.name, index, "undecryptable", reason=str(e), late=late,
                                 epoch=epoch, seq=seq, protection=prot)
            prot = st.prot
            assert prot is not None  # installed by _fresher
            try:
                inner_type, plaintext = prot.open(header, payload)
            except ProtectionError as e2:
                return Decrypted(st.name, index, "undecryptable", reason=str(e2), late=late,
                                 epoch=epoch, seq=seq, protection=prot)
        decoded: tuple[DecodedMessage, ...] = ()
        alert = None
        if inner_type == HANDSHAKE:
            decoded = self._handshake(st, plaintext, index)
        elif inner_type == ALERT:
            alert = messages.describe_alert(plaintext)
        elif inner_type == CHANGE_CIPHER_SPEC and self.neg.version == TLS12:
            self._ccs(st)  # renegotiation: new keys from the next record on
        return Decrypted(st.name, index, "decrypted", inner_type, len(plaintext), decoded,
                         alert, late=late, epoch=epoch, seq=seq, protection=prot)

    def _handshake(self, st: _SideState, plaintext: bytes, index: int
                   ) -> tuple[DecodedMessage, ...]:
        out: list[DecodedMessage] = []
        version = self.neg.version or TLS12
        for msg in st.inner.feed(plaintext, index):
            out.append(decode(msg, version))
            if msg.msg_type in (hs.CLIENT_HELLO, hs.SERVER_HELLO):
                self._hello(msg)  # TLS 1.2 renegotiation inside the channel
            elif version == TLS13 and msg.msg_type == hs.FINISHED and st.epoch == "handshake":
                self._switch(st, "application")
            elif version == TLS13 and msg.msg_type == hs.KEY_UPDATE:
                self._key_update(st)
        return tuple(out)
