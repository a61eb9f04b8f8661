"""Incremental NSS key log (SSLKEYLOGFILE) parser, sans-io.

Format (RFC 9850, which NSS's key log format became): one ``LABEL <client_random hex> <secret hex>``
per line; ``#`` starts a comment; blank lines are allowed. The client random
(32 bytes) is how a key is matched to a connection: it is the ClientHello's
random, which the proxy sees in plaintext.

Use::

    log = KeyLog()
    log.feed(text_chunk)          # any segmentation; a partial last line waits
    log.close()                   # end of file: parse a final line without "\\n"
    keys = log.get(client_random) # ConnectionKeys | None
    for p in log.problems: ...    # malformed lines and unknown labels, by line
    log.pin(client_random, owner) # a live connection's entry is never evicted
    log.unpin(client_random, owner)  # ... until it closes
    log.owners(changed_randoms)   # who pinned these (the proxy's connections)
    log.expire(now)               # drop unpinned entries older than max_age

Bounded memory (DESIGN.md 4): a shared key log (a browser's SSLKEYLOGFILE) holds
secrets for many connections that never pass through the proxy. The table keeps
at most ``max_entries`` unpinned client randoms, least recently written first
out, and :meth:`KeyLog.expire` drops unpinned ones not written for ``max_age``
seconds. Entries of live connections are pinned (proxy/decrypt.py pins what a
connection wants; proxy/engine.py unpins at close) and never evicted, so the
table holds at most ``max_entries`` + the open connections.

``feed`` returns the client randoms whose entries changed, so a caller (the
live proxy) can retry records queued for those connections: :meth:`KeyLog.owners`
names the connections that pinned them (an opaque owner each, held weakly), so
the proxy's work per new key is bounded by the connections that want it, never by
how many are open. Nothing here ever
raises on bad input: a malformed line or an unknown label is counted and
described (line number and reason, never the secret) in :attr:`KeyLog.problems`.
``repr``/``str`` of every object here show labels and lengths, never secret
bytes, so logging one by accident leaks nothing.
"""

from __future__ import annotations

import itertools
import weakref
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

# Labels by TLS version. CLIENT_RANDOM carries the TLS 1.2 master secret (48
# bytes); the rest are TLS 1.3 secrets of the suite's hash length (RFC 8446 7.1).
CLIENT_RANDOM = "CLIENT_RANDOM"
CLIENT_HANDSHAKE_TRAFFIC_SECRET = "CLIENT_HANDSHAKE_TRAFFIC_SECRET"
SERVER_HANDSHAKE_TRAFFIC_SECRET = "SERVER_HANDSHAKE_TRAFFIC_SECRET"
CLIENT_TRAFFIC_SECRET_0 = "CLIENT_TRAFFIC_SECRET_0"
SERVER_TRAFFIC_SECRET_0 = "SERVER_TRAFFIC_SECRET_0"
EARLY_TRAFFIC_SECRET = "CLIENT_EARLY_TRAFFIC_SECRET"
EXPORTER_SECRET = "EXPORTER_SECRET"
# Some writers (older GnuTLS, NSS) spell the early secret without CLIENT_.
_ALIASES = {"EARLY_TRAFFIC_SECRET": EARLY_TRAFFIC_SECRET}
LABELS = frozenset({
    CLIENT_RANDOM, CLIENT_HANDSHAKE_TRAFFIC_SECRET, SERVER_HANDSHAKE_TRAFFIC_SECRET,
    CLIENT_TRAFFIC_SECRET_0, SERVER_TRAFFIC_SECRET_0, EARLY_TRAFFIC_SECRET, EXPORTER_SECRET,
})
# RFC 9850's other labels: no record is opened with them, but a writer that logs them
# is right to, so their lines are neither malformed nor unknown. ECH_SECRET (the HPKE
# shared secret of Encrypted Client Hello) and ECH_CONFIG (the ECHConfig used) are
# logged under the outer ClientHello's random, the one the proxy sees, while an
# accepted ECH moves every traffic secret under the inner random (RFC 9850 3, 4):
# ECH_SECRET is kept, so that a connection waiting in vain can say why.
ECH_SECRET = "ECH_SECRET"
ECH_CONFIG = "ECH_CONFIG"
EARLY_EXPORTER_SECRET = "EARLY_EXPORTER_SECRET"
UNUSED_LABELS = frozenset({ECH_CONFIG, EARLY_EXPORTER_SECRET})
KEPT = LABELS | {ECH_SECRET}
MAX_ECH_CONFIG = 400  # an ECHConfig (a public key, names): longer than a secret, within MAX_LINE
RANDOM_LEN = 32
# The TLS 1.3 suites' hashes: SHA-256 and SM3 (32 bytes), SHA-384 (48).
TLS13_SECRET_LENS = frozenset({32, 48})
# Bounds per line: a secret is at most 64 bytes (SHA-512 is not used by TLS,
# SHA-384 gives 48); a longer line is garbage and is not buffered forever.
MAX_SECRET = 64
MAX_LINE = 1024
MAX_PROBLEMS = 100
# Unpinned entries kept (about 1 KiB each with every TLS 1.3 label) and how long
# one is kept after its last line: keys are written within a handshake of the
# ClientHello they belong to, so minutes is generous.
MAX_ENTRIES = 4096
MAX_AGE = 300.0


@dataclass(frozen=True, slots=True)
class Problem:
    """One line that was not used: ``kind`` is "malformed" or "unknown_label"."""

    line: int
    kind: str
    reason: str

    def __str__(self) -> str:
        return f"key log line {self.line}: {self.reason}"


@dataclass(frozen=True, slots=True)
class ConnectionKeys:
    """The secrets logged for one client random, by label. Never printed."""

    client_random: bytes
    secrets: dict[str, bytes] = field(default_factory=dict)

    def secret(self, label: str) -> bytes | None:
        return self.secrets.get(label)

    def __repr__(self) -> str:
        labels = ", ".join(f"{k}[{len(v)}]" for k, v in sorted(self.secrets.items()))
        return f"ConnectionKeys({self.client_random.hex()[:16]}..: {labels})"

    __str__ = __repr__


def _parse_line(text: str) -> tuple[str, bytes, bytes] | str:
    """(label, client_random, secret), or the reason the line is malformed."""
    parts = text.split()
    if len(parts) != 3:
        return f"expected 3 fields (label, client random, secret), got {len(parts)}"
    label, rnd_hex, secret_hex = parts
    label = _ALIASES.get(label, label)
    try:
        rnd, secret = bytes.fromhex(rnd_hex), bytes.fromhex(secret_hex)
    except ValueError:
        return "client random or secret is not hex"
    if len(rnd) != RANDOM_LEN:
        return f"client random of {len(rnd)} bytes (want {RANDOM_LEN})"
    if not 1 <= len(secret) <= (MAX_ECH_CONFIG if label == ECH_CONFIG else MAX_SECRET):
        return f"secret of {len(secret)} bytes"
    if label == CLIENT_RANDOM and len(secret) != 48:
        return f"CLIENT_RANDOM master secret of {len(secret)} bytes (want 48)"
    if label in LABELS and label != CLIENT_RANDOM and len(secret) not in TLS13_SECRET_LENS:
        # Installed, it would only make every record of the connection "bad_tag".
        return (f"{label} of {len(secret)} bytes (a TLS 1.3 secret is as long as its "
                "suite's hash: 32 or 48)")
    return label, rnd, secret


class KeyLog:
    """Key log text in (any chunking), secrets by client random out."""

    __slots__ = ("_keys", "_partial", "_line", "problems", "malformed", "unknown_labels",
                 "entries", "_written", "_pins", "_owners", "_order", "max_entries", "max_age",
                 "evicted", "_now",
                 "generation", "complete")

    def __init__(self, max_entries: int = MAX_ENTRIES, max_age: float = MAX_AGE) -> None:
        self._keys: dict[bytes, ConnectionKeys] = {}
        # Every line it will ever have is in (analyze's whole files): a secret that does
        # not open a record is wrong, not waiting to be replaced by a newer line.
        self.complete = False
        self._written: dict[bytes, float] = {}  # when each entry last gained a line
        # The unpinned entries, least recently written first (the eviction order; when,
        # is in _written): eviction and expiry never step over the pinned ones, so
        # their work is bounded by what they evict, whatever the open connections.
        self._order: OrderedDict[bytes, None] = OrderedDict()
        self._pins: dict[bytes, int] = {}       # live connections per client random
        # Who pinned each client random (weak references to opaque owners, in order).
        self._owners: dict[bytes, list[weakref.ref[Any]]] = {}
        self.max_entries = max_entries
        self.max_age = max_age
        self.evicted = 0
        self._now = 0.0
        self._partial = ""
        self._line = 0
        self.problems: list[Problem] = []  # the first MAX_PROBLEMS, for messages
        self.malformed = 0
        self.unknown_labels = 0
        self.entries = 0
        # Counts changes of any secret: a reader that looked at generation N and finds
        # N again knows nothing new arrived (proxy/decrypt.py skips its lookups).
        self.generation = 0

    def __repr__(self) -> str:
        return (f"KeyLog(connections={len(self._keys)}, entries={self.entries}, "
                f"malformed={self.malformed}, unknown_labels={self.unknown_labels})")

    __str__ = __repr__

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, client_random: object) -> bool:
        return client_random in self._keys

    def get(self, client_random: bytes) -> ConnectionKeys | None:
        return self._keys.get(client_random)

    def pin(self, client_random: bytes, owner: Any = None) -> None:
        """A live connection wants this entry (present or still to come): keep it.
        ``owner`` (held weakly) is what :meth:`owners` gives back for the random."""
        self._pins[client_random] = self._pins.get(client_random, 0) + 1
        self._order.pop(client_random, None)
        if owner is not None:
            self._owners.setdefault(client_random, []).append(weakref.ref(owner))

    def unpin(self, client_random: bytes, owner: Any = None) -> None:
        """The connection that pinned the entry closed; it may be evicted again."""
        n = self._pins.get(client_random, 0) - 1
        if n > 0:
            self._pins[client_random] = n
        elif self._pins.pop(client_random, None) is not None and client_random in self._keys:
            self._evictable(client_random)
        refs = self._owners.get(client_random)
        if refs is not None:
            refs[:] = [r for r in refs if (o := r()) is not None and o is not owner]
            if not refs:
                del self._owners[client_random]
        self._trim()

    def owners(self, client_randoms: Iterable[bytes]) -> list[Any]:
        """The live owners that pinned any of these client randoms, each once, in pin
        order per random: the connections whose keys may just have arrived."""
        out: list[Any] = []
        seen: set[int] = set()
        for rnd in client_randoms:
            for ref in self._owners.get(rnd, ()):
                o = ref()
                if o is not None and id(o) not in seen:
                    seen.add(id(o))
                    out.append(o)
        return out

    @property
    def pinned(self) -> int:
        return len(self._pins)

    def _evictable(self, rnd: bytes) -> None:
        """An entry no connection pins any more joins the eviction order by when it was
        last written, at either end; one written between the youngest and the oldest
        counts as written now (kept ``max_age`` after its connection closed)."""
        order, times = self._order, self._written
        if order and times[rnd] < times[next(reversed(order))]:  # not the youngest
            if times[rnd] <= times[next(iter(order))]:
                order[rnd] = None
                order.move_to_end(rnd, last=False)  # the oldest
                return
            times[rnd] = max(self._now, times[next(reversed(order))])
        order[rnd] = None

    def expire(self, now: float) -> int:
        """Evict unpinned entries last written more than ``max_age`` before ``now``;
        returns how many went."""
        self._now = max(self._now, now)
        victims: list[bytes] = []
        for rnd in self._order:
            if self._written[rnd] >= now - self.max_age:
                break  # written in order: the rest are younger
            victims.append(rnd)
        for rnd in victims:
            self._drop(rnd)
        return len(victims)

    def _drop(self, rnd: bytes) -> None:
        del self._keys[rnd]
        del self._written[rnd]
        self._order.pop(rnd, None)
        self.evicted += 1

    def _trim(self) -> None:
        """At most ``max_entries`` unpinned entries: the least recently written go."""
        excess = len(self._order) - self.max_entries
        if excess > 0:
            for rnd in list(itertools.islice(self._order, excess)):
                self._drop(rnd)

    def feed(self, text: str, now: float | None = None,
             start: int | None = None) -> set[bytes]:
        """Parse every complete line of ``text``; returns the randoms that gained keys.
        ``now`` (seconds, any clock) stamps the entries for :meth:`expire`. ``start``:
        how many lines of ``text``'s source came before it, so that a problem names
        its line in that source when several files feed one KeyLog (default: go on
        from the last call; :attr:`lines` is the count after it)."""
        if now is not None:
            self._now = max(self._now, now)
        if start is not None:
            self._line = start
        data = self._partial + text
        lines = data.split("\n")
        self._partial = lines.pop()
        changed: set[bytes] = set()
        for line in lines:
            self._line += 1
            self._one(line, changed)
        if len(self._partial) > MAX_LINE:
            # Not a key line; count it once (after the whole lines before it: its own
            # number) and skip to the next newline.
            self._line += 1
            self._problem("malformed", f"line longer than {MAX_LINE} characters", self._line)
            self._partial = ""
        self._trim()
        return changed

    @property
    def lines(self) -> int:
        """Lines parsed (or skipped as too long) so far, for :meth:`feed`'s ``line``."""
        return self._line

    def close(self) -> set[bytes]:
        """End of input: a last line without a newline is parsed too."""
        changed: set[bytes] = set()
        if self._partial:
            self._line += 1
            self._one(self._partial, changed)
            self._partial = ""
        self._trim()
        return changed

    def _one(self, line: str, changed: set[bytes]) -> None:
        text = line.strip()
        if not text or text.startswith("#"):
            return
        parsed = _parse_line(text)
        if isinstance(parsed, str):
            self._problem("malformed", parsed, self._line)
            return
        label, rnd, secret = parsed
        if label in UNUSED_LABELS:
            return
        if label not in KEPT:
            # Label only, it is not a secret; escaped so a terminal is safe.
            self._problem("unknown_label", f"unknown label {label[:40]!r}", self._line)
            return
        keys = self._keys.get(rnd)
        if keys is None:
            keys = self._keys[rnd] = ConnectionKeys(rnd)
        self._written[rnd] = self._now
        if rnd not in self._pins:
            self._order[rnd] = None
            self._order.move_to_end(rnd)
        if keys.secrets.get(label) != secret:
            keys.secrets[label] = secret
            changed.add(rnd)
            self.generation += 1
        self.entries += 1

    def _problem(self, kind: str, reason: str, line: int) -> None:
        if kind == "malformed":
            self.malformed += 1
        else:
            self.unknown_labels += 1
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(Problem(line, kind, reason))
