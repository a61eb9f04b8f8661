"""Incremental NSS key log (SSLKEYLOGFILE) parser, sans-io.

Format (https://firefox-source-docs.mozilla.org/security/nss/legacy/key_log_format/,
also draft-ietf-tls-keylogfile): one ``LABEL <client_random hex> <secret hex>``
per line; ``#`` starts a comment; blank lines are allowed. The client random
(32 bytes) is how a key is matched to a connection: it is the ClientHello's
random, which the proxy sees in plaintext.

Use::

    log = KeyLog()
    log.feed(text_chunk)          # any segmentation; a partial last line waits
    log.close()                   # end of file: parse a final line without "\\n"
    keys = log.get(client_random) # ConnectionKeys | None
    for p in log.problems: ...    # malformed lines and unknown labels, by line

``feed`` returns the client randoms whose entries changed, so a caller (the
live engine) can retry records queued for those connections. Nothing here ever
raises on bad input: a malformed line or an unknown label is counted and
described (line number and reason, never the secret) in :attr:`KeyLog.problems`.
``repr``/``str`` of every object here show labels and lengths, never secret
bytes, so logging one by accident leaks nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

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
RANDOM_LEN = 32
# Bounds per line: a secret is at most 64 bytes (SHA-512 is not used by TLS,
# SHA-384 gives 48); a longer line is garbage and is not buffered forever.
MAX_SECRET = 64
MAX_LINE = 1024
MAX_PROBLEMS = 100


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
    if not 1 <= len(secret) <= MAX_SECRET:
        return f"secret of {len(secret)} bytes"
    if label == CLIENT_RANDOM and len(secret) != 48:
        return f"CLIENT_RANDOM master secret of {len(secret)} bytes (want 48)"
    return label, rnd, secret


class KeyLog:
    """Key log text in (any chunking), secrets by client random out."""

    __slots__ = ("_keys", "_partial", "_line", "problems", "malformed", "unknown_labels",
                 "entries")

    def __init__(self) -> None:
        self._keys: dict[bytes, ConnectionKeys] = {}
        self._partial = ""
        self._line = 0
        self.problems: list[Problem] = []  # the first MAX_PROBLEMS, for messages
        self.malformed = 0
        self.unknown_labels = 0
        self.entries = 0

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

    def feed(self, text: str) -> set[bytes]:
        """Parse every complete line of ``text``; returns the randoms that gained keys."""
        data = self._partial + text
        lines = data.split("\n")
        self._partial = lines.pop()
        if len(self._partial) > MAX_LINE:
            # Not a key line; count it once and skip to the next newline.
            self._problem("malformed", f"line longer than {MAX_LINE} characters", self._line + 1)
            self._partial = ""
            self._line += 1
        changed: set[bytes] = set()
        for line in lines:
            self._line += 1
            self._one(line, changed)
        return changed

    def close(self) -> set[bytes]:
        """End of input: a last line without a newline is parsed too."""
        changed: set[bytes] = set()
        if self._partial:
            self._line += 1
            self._one(self._partial, changed)
            self._partial = ""
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
        if label not in LABELS:
            # Label only, it is not a secret; escaped so a terminal is safe.
            self._problem("unknown_label", f"unknown label {label[:40]!r}", self._line)
            return
        keys = self._keys.get(rnd)
        if keys is None:
            keys = self._keys[rnd] = ConnectionKeys(rnd)
        if keys.secrets.get(label) != secret:
            keys.secrets[label] = secret
            changed.add(rnd)
        self.entries += 1

    def _problem(self, kind: str, reason: str, line: int) -> None:
        if kind == "malformed":
            self.malformed += 1
        else:
            self.unknown_labels += 1
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(Problem(line, kind, reason))
