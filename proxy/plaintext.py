"""The plaintext phase before TLS: STARTTLS and its relatives, sans-io (issue 17).

Mail (SMTP, LMTP, IMAP, POP3), FTP, XMPP, LDAP, PostgreSQL and MySQL start in
the clear and switch to TLS on request. :class:`Session` follows both sides of
one connection from its first byte: it tells the protocol from the bytes (or is
told, ``--protocol``), frames each command and reply into a :class:`Unit`,
describes it as a :class:`Line` (verb or status, capability words; never
arguments, so credentials never reach a log), and finds the exact byte where
each side's TLS begins. Bytes from there on, and every byte of a connection
that is not one of these protocols, go back to the engine's record path.

Every protocol is declared once in :data:`PROTOCOLS` (name, who speaks first,
how to recognise it, its dialect, its RFC); ``--protocol``, the documentation
and detection read that table.

Hostile input is normal: a unit is at most MAX_UNIT bytes (a longer line is cut
and the rest of it skipped), detection holds at most DETECT_BYTES, verbs are
only ever names from a fixed list per protocol, and words are reduced to
[A-Za-z0-9._-] (the terminal view escapes again).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

from tlsinspector.proxy.history import Side

MAX_UNIT = 16 << 10     # bytes of one command/reply kept to describe it (RFC 5321 4.5.3.1
                        # allows 512/1000; IMAP lines are longer): beyond, cut and skipped
DETECT_BYTES = 8        # bytes held back while the protocol is unknown (a PostgreSQL
                        # SSLRequest is 8 bytes; every other signature is shorter)
DETECT_TEXT = 40        # ...or the first words of a client that speaks first in text
                        # without waiting for the greeting (gnutls-cli: "a CAPABILITY")
MAX_WORDS = 24
_WORD = re.compile(rb"[A-Za-z0-9][A-Za-z0-9._=+-]{0,63}")
_ENHANCED = re.compile(rb"^\s*[245]\.\d{1,3}\.\d{1,3}\s+")
TLS_FIRST = frozenset(range(0x14, 0x19))   # TLS content types a record starts with

Starttls = Literal["offered", "requested", "accepted", "refused"]


@dataclass(frozen=True, slots=True)
class Line:
    """One command or reply of the plaintext phase, as logged (``plaintext`` event)."""

    side: Side
    protocol: str
    length: int                       # bytes of the unit on the wire
    verb: str | None = None           # client: the command name, from a fixed list
    status: str | None = None         # server: the reply code or status word
    words: tuple[str, ...] = ()       # server: capability names on the line
    hidden: str | None = None         # why the content is not described (credentials...)
    starttls: Starttls | None = None  # this line offers, requests, accepts or refuses TLS

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {"from": self.side, "protocol": self.protocol,
                                  "length": self.length}
        for key in ("verb", "status", "hidden", "starttls"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        if self.words:
            out["words"] = list(self.words)
        return out

    def text(self) -> str:
        """The line as the scenario's ``contains`` and the terminal see it."""
        head = self.verb or self.status or ""
        words = " ".join(self.words)
        # "250-STARTTLS" as the server wrote it: a continuation status joins its word
        # (as the terminal view shows it; "250- STARTTLS" was no line anyone sent).
        return (head + words if head.endswith("-") else f"{head} {words}").strip()


@dataclass(frozen=True, slots=True)
class Unit:
    """The raw bytes of one command or reply and what they say."""

    raw: bytes
    line: Line | None                 # None: not logged (a message body line)


@dataclass(slots=True)
class Fed:
    """What one :meth:`Session.feed` found."""

    units: list[Unit] = field(default_factory=list)
    forward: bytes = b""              # plaintext bytes to pass on now (see Session.hold)
    rest: bytes | None = None         # bytes for the record path (TLS, or not plaintext)
    tls_at: int | None = None         # set when this side's TLS starts: its stream offset


def words(data: bytes, limit: int = MAX_WORDS) -> tuple[str, ...]:
    """Capability-like names in ``data``, each reduced to a safe alphabet."""
    return tuple(m.group().decode() for m in _WORD.finditer(data))[:limit]


def _first_word(data: bytes) -> str:
    m = _WORD.match(data.strip())
    return m.group().decode() if m else ""


# -- dialects -------------------------------------------------------------------------


class Dialect:
    """One protocol's framing and meaning. Subclasses fill in ``frame`` and
    ``describe``; the session keeps the buffers and the switch to TLS."""

    name = ""

    def __init__(self) -> None:
        self.pending = False          # a TLS request waits for the server's answer
        self.switch_client = False    # the client's next byte is TLS (MySQL: no answer)

    def frame(self, side: Side, buf: bytes) -> int:
        """Length of the first whole unit in ``buf`` (0: need more)."""
        end = buf.find(b"\n")
        return end + 1 if end >= 0 else 0

    def describe(self, side: Side, raw: bytes) -> Line | None:
        raise NotImplementedError

    def accepted(self, line: Line | None) -> bool:
        return line is not None and line.starttls == "accepted"

    def line(self, side: Side, raw: bytes, **kw: object) -> Line:
        return Line(side, self.name, len(raw), **kw)  # type: ignore[arg-type]


def _verb(raw: bytes, known: frozenset[str]) -> str:
    """The command name when it is one of ``known``; never the word itself otherwise
    (a base64 credential line must not become a "verb")."""
    first = raw.split(None, 1)[0].upper().decode("ascii", "replace") if raw.strip() else ""
    return first if first in known else "(other)"


class Smtp(Dialect):
    """SMTP (RFC 5321) with STARTTLS (RFC 3207); LMTP (RFC 2033) and FTP (RFC 959,
    AUTH TLS RFC 4217) share the numbered reply format and are subclasses."""

    name = "smtp"
    VERBS = frozenset({"EHLO", "HELO", "LHLO", "MAIL", "RCPT", "DATA", "BDAT", "RSET", "VRFY",
                       "EXPN", "HELP", "NOOP", "QUIT", "STARTTLS", "AUTH", "XCLIENT"})
    REQUEST = ("STARTTLS",)
    ACCEPT = "220"
    OFFER = frozenset({"STARTTLS"})
    SECRET_AFTER = frozenset({"AUTH"})

    def __init__(self) -> None:
        super().__init__()
        self.secret = False           # client lines are credentials until a final reply
        self.body = False             # a message body (SMTP DATA after 354) is going by
        self.body_bytes = 0
        self.last_verb = ""
        # The next server line is the first of an EHLO/LHLO reply: "250-" Domain [SP
        # ehlo-greet] (RFC 5321 4.1.1.1), a name and a greeting, never a capability.
        self.greeting_line = False

    def describe(self, side: Side, raw: bytes) -> Line | None:
        return self._client(raw) if side == "client" else self._server(raw)

    def _client(self, raw: bytes) -> Line | None:
        if self.body:
            self.body_bytes += len(raw)
            if raw.rstrip(b"\r\n") != b".":
                return None
            self.body = False
            return self.line("client", raw, verb=".", hidden="message body")
        if self.secret:
            return self.line("client", raw, hidden="credentials")
        verb = self._client_verb(raw)
        self.last_verb = verb
        self.greeting_line = verb in ("EHLO", "LHLO")
        if verb in self.SECRET_AFTER:
            self.secret = True
        if self._is_request(raw, verb):
            self.pending = True
            return self.line("client", raw, verb=verb, starttls="requested")
        return self.line("client", raw, verb=verb)

    def _client_verb(self, raw: bytes) -> str:
        return _verb(raw, self.VERBS)

    def _is_request(self, raw: bytes, verb: str) -> bool:
        return verb in self.REQUEST

    def _server(self, raw: bytes) -> Line:
        code, text = raw[:3].decode("ascii", "replace"), raw[4:]
        # An enhanced status code (RFC 3463: "2.0.0") repeats the reply code: the
        # words are the text after it ("220 2.0.0 Ready to start TLS" lost its "TLS").
        text = _ENHANCED.sub(b"", text, count=1)
        final = raw[3:4] != b"-"
        if self.secret and final and code != "334":
            self.secret = False
        if self.last_verb == "DATA" and code == "354":
            self.body, self.body_bytes = True, 0
        if self.secret or code == "334":   # an AUTH challenge: nothing of it is shown
            return self.line("server", raw, status=code)
        status = code + ("" if final else "-")
        if self.pending and final:
            self.pending = False
            ok = code == self.ACCEPT
            return self.line("server", raw, status=status, words=words(text, 4),
                             starttls="accepted" if ok else "refused")
        greeting, self.greeting_line = self.greeting_line, False
        found = () if greeting and code.startswith("2") else self._capabilities(text)
        offered: Starttls | None = "offered" if self.OFFER & set(found) else None
        return self.line("server", raw, status=status, words=found, starttls=offered)

    def _capabilities(self, text: bytes) -> tuple[str, ...]:
        first = _first_word(text)
        return (first.upper(),) if first and self.last_verb in ("EHLO", "LHLO") \
            else words(text, 4)


class Lmtp(Smtp):
    name = "lmtp"


class Ftp(Smtp):
    name = "ftp"
    VERBS = frozenset({"USER", "PASS", "ACCT", "AUTH", "PBSZ", "PROT", "FEAT", "SYST", "PWD",
                       "CWD", "TYPE", "PASV", "EPSV", "PORT", "EPRT", "LIST", "NLST", "RETR",
                       "STOR", "QUIT", "NOOP", "OPTS", "HELP", "CCC", "MLSD", "SIZE", "MDTM"})
    ACCEPT = "234"
    SECRET_AFTER = frozenset()        # PASS carries its secret on its own line: verb only

    def _is_request(self, raw: bytes, verb: str) -> bool:
        parts = raw.upper().split()
        return verb == "AUTH" and len(parts) > 1 and parts[1] in (b"TLS", b"SSL", b"TLS-C")

    def _capabilities(self, text: bytes) -> tuple[str, ...]:
        return words(text, 4)

    def _server(self, raw: bytes) -> Line:
        if raw[:1] == b" ":           # a FEAT feature line (RFC 2389 3.2): " AUTH TLS"
            feat = tuple(w.upper() for w in words(raw, 3))
            offered: Starttls | None = "offered" if feat[:2] == ("AUTH", "TLS") else None
            return self.line("server", raw, words=feat, starttls=offered)
        return super()._server(raw)


class Pop3(Dialect):
    """POP3 (RFC 1939) with STLS (RFC 2595 4) and CAPA (RFC 2449)."""

    name = "pop3"
    VERBS = frozenset({"USER", "PASS", "APOP", "AUTH", "STAT", "LIST", "RETR", "DELE", "NOOP",
                       "RSET", "QUIT", "TOP", "UIDL", "CAPA", "STLS"})
    MULTI = frozenset({"CAPA", "RETR", "TOP", "LIST", "UIDL"})

    def __init__(self) -> None:
        super().__init__()
        self.secret = False
        self.last = ""
        self.multi = False            # a multi-line response body (until ".")

    def describe(self, side: Side, raw: bytes) -> Line | None:
        if side == "client":
            if self.secret:
                return self.line("client", raw, hidden="credentials")
            verb = self.last = _verb(raw, self.VERBS)
            self.secret = verb == "AUTH" and len(raw.split()) > 1
            if verb == "STLS":
                self.pending = True
                return self.line("client", raw, verb=verb, starttls="requested")
            return self.line("client", raw, verb=verb)
        return self._server(raw)

    def _server(self, raw: bytes) -> Line | None:
        if self.multi:
            if raw.rstrip(b"\r\n") == b".":
                self.multi = False
                return self.line("server", raw, status=".")
            if self.last != "CAPA":
                return None           # a message body line: never logged
            cap = _first_word(raw).upper()
            return self.line("server", raw, words=(cap,) if cap else (),
                             starttls="offered" if cap == "STLS" else None)
        status = "+OK" if raw.startswith(b"+OK") else "-ERR" if raw.startswith(b"-ERR") \
            else "+" if raw.startswith(b"+") else "(other)"
        if status in ("+OK", "-ERR"):
            self.secret = False
        if status == "+":             # an AUTH challenge (RFC 5034)
            return self.line("server", raw, status=status)
        if self.pending:
            self.pending = False
            return self.line("server", raw, status=status,
                             starttls="accepted" if status == "+OK" else "refused")
        single_list = self.last in ("LIST", "UIDL") and b" " in raw.strip()[4:]
        self.multi = status == "+OK" and self.last in self.MULTI and not single_list
        self.last = "" if status != "+OK" else self.last
        return self.line("server", raw, status=status)


class Imap(Dialect):
    """IMAP (RFC 9051, RFC 3501) with STARTTLS (RFC 9051 6.2.1); literals skipped."""

    name = "imap"
    VERBS = frozenset({"CAPABILITY", "NOOP", "LOGOUT", "STARTTLS", "AUTHENTICATE", "LOGIN",
                       "ENABLE", "SELECT", "EXAMINE", "CREATE", "DELETE", "RENAME", "SUBSCRIBE",
                       "UNSUBSCRIBE", "LIST", "LSUB", "NAMESPACE", "STATUS", "APPEND", "IDLE",
                       "CLOSE", "UNSELECT", "EXPUNGE", "SEARCH", "FETCH", "STORE", "COPY",
                       "MOVE", "UID", "ID", "CHECK", "DONE"})
    _LITERAL = re.compile(rb"\{(\d{1,12})\+?\}\r?\n$")

    def __init__(self) -> None:
        super().__init__()
        self.tag: bytes | None = None   # the tag of the STARTTLS command
        self.secret: bytes | None = None  # the tag of an AUTHENTICATE in progress

    def frame(self, side: Side, buf: bytes) -> int:
        """A line, with every literal ``{n}`` it announces (RFC 9051 4.3) inside it."""
        pos = 0
        while True:
            end = buf.find(b"\n", pos)
            if end < 0:
                return 0
            m = self._LITERAL.search(buf, pos, end + 1)
            if m is None:
                return end + 1
            pos = end + 1 + int(m.group(1))
            if pos > len(buf):
                return 0

    def describe(self, side: Side, raw: bytes) -> Line | None:
        parts = raw.split(None, 2)
        if side == "client":
            return self._client(raw, parts)
        return self._server(raw, parts)

    def _client(self, raw: bytes, parts: list[bytes]) -> Line:
        if self.secret is not None:
            return self.line("client", raw, hidden="credentials")
        verb = _verb(b" ".join(parts[1:2]), self.VERBS) if len(parts) > 1 else "(other)"
        if verb == "AUTHENTICATE":
            self.secret = parts[0]
        if verb == "STARTTLS":
            self.pending, self.tag = True, parts[0]
            return self.line("client", raw, verb=verb, starttls="requested")
        return self.line("client", raw, verb=verb)

    def _server(self, raw: bytes, parts: list[bytes]) -> Line:
        tag = parts[0] if parts else b""
        status = (parts[1].upper().decode("ascii", "replace") if len(parts) > 1 else "")
        if tag == b"+":
            return self.line("server", raw, status="+")
        if status not in ("OK", "NO", "BAD", "PREAUTH", "BYE", "CAPABILITY"):
            status = "(other)"
        if self.secret is not None and tag == self.secret:
            self.secret = None
        caps = self._capabilities(raw, status)
        if self.pending and tag == self.tag:
            self.pending = False
            return self.line("server", raw, status=status,
                             starttls="accepted" if status == "OK" else "refused")
        head = "*" if tag == b"*" else "tagged"
        offered: Starttls | None = "offered" if "STARTTLS" in caps else None
        return self.line("server", raw, status=f"{head} {status}", words=caps,
                         starttls=offered)

    @staticmethod
    def _capabilities(raw: bytes, status: str) -> tuple[str, ...]:
        """The names of a CAPABILITY response or response code (RFC 9051 7.2.2)."""
        at = raw.upper().find(b"CAPABILITY")
        if at < 0 or status not in ("OK", "CAPABILITY", "PREAUTH"):
            return ()
        text = raw[at + len(b"CAPABILITY"):].split(b"]", 1)[0]
        return tuple(w.upper() for w in words(text))


class Xmpp(Dialect):
    """XMPP (RFC 6120) STARTTLS negotiation (5.4): element names only."""

    name = "xmpp"
    _TAG = re.compile(rb"<\s*([A-Za-z][A-Za-z0-9:_.-]{0,63})")

    def frame(self, side: Side, buf: bytes) -> int:
        """One tag (``<...>``), or the text before the next tag."""
        if buf[:1] == b"<":
            end = buf.find(b">")
            return end + 1 if end >= 0 else 0
        nxt = buf.find(b"<")
        return nxt if nxt > 0 else 0

    def describe(self, side: Side, raw: bytes) -> Line | None:
        m = self._TAG.match(raw)
        if m is None:
            return None               # text between tags (SASL data): never logged
        name = m.group(1).decode()
        kind: Starttls | None = None
        if name == "starttls" and side == "client":
            self.pending, kind = True, "requested"
        elif name == "starttls":
            kind = "offered"
        elif name in ("proceed", "failure") and self.pending and side == "server" \
                and b"xmpp-tls" in raw:
            self.pending = False
            kind = "accepted" if name == "proceed" else "refused"
        key = "verb" if side == "client" else "status"
        return self.line(side, raw, **{key: name}, starttls=kind)


def _ber_length(buf: bytes, at: int) -> tuple[int, int] | None:
    """(content length, header end) of the BER element whose length octets start at
    ``at`` (X.690 8.1.3); None: need more bytes. Indefinite length counts as huge."""
    if len(buf) <= at:
        return None
    first = buf[at]
    if first < 0x80:
        return first, at + 1
    n = first & 0x7F
    if n == 0 or n > 4:
        return MAX_UNIT + 1, at + 1
    if len(buf) < at + 1 + n:
        return None
    return int.from_bytes(buf[at + 1:at + 1 + n], "big"), at + 1 + n


class Ldap(Dialect):
    """LDAP (RFC 4511) messages by operation name; StartTLS is the extended operation
    1.3.6.1.4.1.1466.20037 (RFC 4511 4.14), accepted by resultCode success (0)."""

    name = "ldap"
    OPS = {0: "bindRequest", 1: "bindResponse", 2: "unbindRequest", 3: "searchRequest",
           4: "searchResEntry", 5: "searchResDone", 6: "modifyRequest", 7: "modifyResponse",
           8: "addRequest", 9: "addResponse", 10: "delRequest", 11: "delResponse",
           12: "modDNRequest", 13: "modDNResponse", 14: "compareRequest",
           15: "compareResponse", 16: "abandonRequest", 19: "searchResRef",
           23: "extendedReq", 24: "extendedResp", 25: "intermediateResponse"}
    STARTTLS_OID = b"1.3.6.1.4.1.1466.20037"

    def frame(self, side: Side, buf: bytes) -> int:
        got = _ber_length(buf, 1)
        if got is None:
            return 0
        length, head = got
        return head + length if len(buf) >= head + length else 0

    def describe(self, side: Side, raw: bytes) -> Line | None:
        op = self._op(raw)
        name = self.OPS.get(op, f"op{op}") if op is not None else "(other)"
        kind: Starttls | None = None
        if name == "extendedReq" and self.STARTTLS_OID in raw:
            self.pending, kind = True, "requested"
        elif name == "extendedResp" and self.pending:
            self.pending = False
            kind = "accepted" if self._result(raw) == 0 else "refused"
        key = "verb" if side == "client" else "status"
        return self.line(side, raw, **{key: name}, starttls=kind)

    @staticmethod
    def _op(raw: bytes) -> int | None:
        """The [APPLICATION n] tag after the messageID (RFC 4511 4.1.1)."""
        got = _ber_length(raw, 1)
        if got is None or raw[0] != 0x30:
            return None
        at = got[1]
        if raw[at:at + 1] != b"\x02":
            return None
        mid = _ber_length(raw, at + 1)
        if mid is None or mid[1] + mid[0] >= len(raw):
            return None
        tag = raw[mid[1] + mid[0]]
        return tag & 0x1F if tag & 0xC0 == 0x40 else None

    @staticmethod
    def _result(raw: bytes) -> int | None:
        """The resultCode ENUMERATED (tag 0x0a) opening an extendedResp (RFC 4511 4.1.9)."""
        at = raw.find(b"\x78")
        got = _ber_length(raw, at + 1) if at >= 0 else None
        if got is None or raw[got[1]:got[1] + 2] != b"\x0a\x01":
            return None
        return raw[got[1] + 2] if len(raw) > got[1] + 2 else None


SSL_REQUEST = 80877103     # PostgreSQL protocol 3 (53.2.10): 1234 << 16 | 5679
GSSENC_REQUEST = 80877104
CANCEL_REQUEST = 80877102


class Postgres(Dialect):
    """PostgreSQL (protocol 3, docs 55.2.10 "SSL Session Encryption"): the 8-byte
    SSLRequest, answered by one byte 'S' (TLS follows) or 'N'; then typed messages."""

    name = "postgres"
    CLIENT = {"p": "PasswordMessage", "Q": "Query", "X": "Terminate", "P": "Parse",
              "B": "Bind", "E": "Execute", "S": "Sync", "D": "Describe", "C": "Close"}
    SERVER = {"R": "Authentication", "S": "ParameterStatus", "K": "BackendKeyData",
              "Z": "ReadyForQuery", "E": "ErrorResponse", "N": "NoticeResponse",
              "T": "RowDescription", "D": "DataRow", "C": "CommandComplete"}

    def __init__(self) -> None:
        super().__init__()
        self.started = False          # the client's untyped first message went by
        self.answer = False           # the server's next byte answers an 8-byte request

    def frame(self, side: Side, buf: bytes) -> int:
        if side == "server" and self.answer:
            return 1
        if side == "client" and not self.started:
            if len(buf) < 4:
                return 0
            n = int.from_bytes(buf[:4], "big")
            return n if 8 <= n <= len(buf) else (len(buf) if n < 8 else 0)
        if len(buf) < 5:
            return 0
        n = int.from_bytes(buf[1:5], "big") + 1
        return n if len(buf) >= n else 0

    def describe(self, side: Side, raw: bytes) -> Line | None:
        if side == "server" and self.answer:
            self.answer = False
            ok = raw in (b"S", b"G")
            was = self.pending
            self.pending = False
            kind: Starttls | None = ("accepted" if ok else "refused") if was else None
            return self.line("server", raw, status=raw.decode("ascii", "replace")
                             if raw in (b"S", b"N", b"G") else "(other)", starttls=kind)
        if side == "client" and not self.started:
            code = int.from_bytes(raw[4:8], "big") if len(raw) >= 8 else 0
            if code == SSL_REQUEST:
                self.pending = self.answer = True
                return self.line("client", raw, verb="SSLRequest", starttls="requested")
            if code == GSSENC_REQUEST:
                self.answer = True
                return self.line("client", raw, verb="GSSENCRequest")
            self.started = True
            verb = "CancelRequest" if code == CANCEL_REQUEST else "StartupMessage"
            return self.line("client", raw, verb=verb)
        table = self.CLIENT if side == "client" else self.SERVER
        name = table.get(chr(raw[0]), "(other)") if raw else "(other)"
        key = "verb" if side == "client" else "status"
        return self.line(side, raw, **{key: name})


CLIENT_SSL = 0x0800        # MySQL capability flag (Protocol::CapabilityFlags)


class Mysql(Dialect):
    """MySQL client/server protocol: the server's Handshake v10 packet says whether it
    offers TLS (CLIENT_SSL); a client SSLRequest packet (32 bytes, CLIENT_SSL set) is
    followed at once by its ClientHello, with no answer from the server."""

    name = "mysql"

    def __init__(self) -> None:
        super().__init__()
        self.greeted = False

    def frame(self, side: Side, buf: bytes) -> int:
        if len(buf) < 4:
            return 0
        n = int.from_bytes(buf[:3], "little") + 4
        return n if len(buf) >= n else 0

    def describe(self, side: Side, raw: bytes) -> Line | None:
        payload = raw[4:]
        if side == "server" and not self.greeted and payload[:1] == b"\x0a":
            self.greeted = True
            end = payload.find(b"\x00", 1)
            caps = payload[end + 1 + 4 + 8 + 1:end + 1 + 4 + 8 + 3] if end > 0 else b""
            offered = len(caps) == 2 and int.from_bytes(caps, "little") & CLIENT_SSL
            return self.line("server", raw, status="Handshake",
                             words=("CLIENT_SSL",) if offered else (),
                             starttls="offered" if offered else None)
        if side == "client" and raw[3:4] == b"\x01":
            flags = int.from_bytes(payload[:4], "little") if len(payload) >= 4 else 0
            if len(payload) == 32 and flags & CLIENT_SSL:
                self.switch_client = True
                return self.line("client", raw, verb="SSLRequest", starttls="requested")
            return self.line("client", raw, verb="HandshakeResponse")
        status = {0x00: "OK", 0xFF: "ERR", 0xFE: "EOF"}.get(payload[0] if payload else -1)
        if side == "server":
            return self.line("server", raw, status=status or "(packet)")
        return self.line("client", raw, verb="(packet)")


# -- the registry ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ProtocolSpec:
    """One STARTTLS-style protocol, declared once: ``--protocol``, detection and the
    documentation read it."""

    name: str
    dialect: Callable[[], Dialect]
    server_first: bool                # the server speaks first (a greeting)
    ports: tuple[int, ...]            # well-known ports, for the documentation
    reference: str
    doc: str


_REGISTRY: dict[str, ProtocolSpec] = {}
PROTOCOLS: Mapping[str, ProtocolSpec] = MappingProxyType(_REGISTRY)


def protocol(spec: ProtocolSpec) -> None:
    if spec.name in _REGISTRY:
        raise ValueError(f"protocol {spec.name!r} declared twice")
    _REGISTRY[spec.name] = spec


for _spec in (
    ProtocolSpec("smtp", Smtp, True, (25, 587), "RFC 3207",
                 "SMTP: EHLO, STARTTLS, 220 then TLS"),
    ProtocolSpec("lmtp", Lmtp, True, (24,), "RFC 2033, RFC 3207",
                 "LMTP: LHLO, STARTTLS, 220 then TLS"),
    ProtocolSpec("imap", Imap, True, (143,), "RFC 9051 6.2.1",
                 "IMAP: tag STARTTLS, tag OK then TLS"),
    ProtocolSpec("pop3", Pop3, True, (110,), "RFC 2595 4",
                 "POP3: STLS, +OK then TLS"),
    ProtocolSpec("ftp", Ftp, True, (21,), "RFC 4217 4",
                 "FTP: AUTH TLS, 234 then TLS"),
    ProtocolSpec("xmpp", Xmpp, False, (5222, 5269), "RFC 6120 5.4",
                 "XMPP: <starttls/>, <proceed/> then TLS"),
    ProtocolSpec("ldap", Ldap, False, (389,), "RFC 4511 4.14",
                 "LDAP: StartTLS extended request, success then TLS"),
    ProtocolSpec("postgres", Postgres, False, (5432,), "PostgreSQL docs 55.2.10",
                 "PostgreSQL: SSLRequest, 'S' then TLS (direct TLS since 17: TLS at once)"),
    ProtocolSpec("mysql", Mysql, True, (3306,), "MySQL protocol: SSLRequest packet",
                 "MySQL: greeting with CLIENT_SSL, SSLRequest packet then TLS"),
):
    protocol(_spec)


def detect(side: Side, data: bytes, banner: bool) -> str | None | Literal[""]:
    """The protocol ``data`` (the first bytes ``side`` sent) begins, "" when it
    begins none of them, None when more bytes are needed. ``banner``: the server
    spoke before the client."""
    if side == "server":
        return _detect_server(data)
    if not data:
        return None
    if data[0] in TLS_FIRST or data[0] & 0x80:
        return ""                     # TLS (or an SSLv2 hello) from the first byte
    if data[:1] == b"<":
        return "xmpp"
    if data[:1] == b"\x30":
        return "ldap"
    if data[:1] == b"\x00":
        if len(data) < 8:
            return None
        code = int.from_bytes(data[4:8], "big")
        known = (SSL_REQUEST, GSSENC_REQUEST, CANCEL_REQUEST, 0x00030000)
        return "postgres" if code in known else ""
    return _detect_client_text(data)


# A client that speaks first in a server-first protocol: its first command names it.
_FIRST_VERBS = {b"EHLO": "smtp", b"HELO": "smtp", b"LHLO": "lmtp", b"CAPA": "pop3",
                b"STLS": "pop3", b"FEAT": "ftp", b"AUTH": "ftp"}
_IMAP_FIRST = (b"CAPABILITY", b"STARTTLS", b"NOOP", b"ID")


def _detect_client_text(data: bytes) -> str | None | Literal[""]:
    """"a CAPABILITY", "EHLO x", "FEAT": a server-first protocol whose client did not
    wait; None until the first one or two words are in (at most DETECT_TEXT bytes)."""
    words_ = data[:DETECT_TEXT].split(b" ", 2)
    whole = b"\n" in data or len(data) >= DETECT_TEXT
    first = words_[0].strip().upper()
    if first in _FIRST_VERBS and (len(words_) > 1 or whole):
        return _FIRST_VERBS[first]
    if len(words_) == 1 and not whole:
        return None if first.isalnum() or not first else ""
    second = words_[1].strip().upper() if len(words_) > 1 else b""
    if second in _IMAP_FIRST and first.isalnum():
        return "imap"
    if len(words_) == 2 and not whole and (not second or second.isalpha()):
        return None                   # the second word is still coming
    return ""


def _detect_server(data: bytes) -> str | None | Literal[""]:
    if len(data) < 5:
        return None if data and b"\n" not in data else ""
    if data.startswith((b"* OK", b"* PREAUTH", b"* BYE")):
        return "imap"
    if data.startswith((b"+OK", b"-ERR")):
        return "pop3"
    if data[:3].isdigit() and data[3:4] in (b" ", b"-"):
        return "smtp"                 # refined on the first line and the client's verb
    if data[3:5] == b"\x00\x0a":
        return "mysql"
    return ""


# -- the session ----------------------------------------------------------------------


class Session:
    """Both sides of one connection's plaintext phase."""

    def __init__(self, forced: str | None = None, hold: bool = False) -> None:
        """``hold``: forward whole units only (a plaintext fault may rewrite them),
        keeping a partial one back; otherwise every plaintext byte is forwarded as
        it arrives and a copy is parsed (DESIGN.md "Transparency")."""
        if forced is not None and forced not in PROTOCOLS:
            raise ValueError(f"unknown protocol {forced!r} (known: {', '.join(PROTOCOLS)})")
        self.protocol = forced
        self.dialect: Dialect | None = PROTOCOLS[forced].dialect() if forced else None
        self.done = {"client": False, "server": False}   # the side is past plaintext
        self._buf = {"client": bytearray(), "server": bytearray()}
        self._skip = {"client": 0, "server": 0}          # rest of a cut, overlong unit
        self.offset = {"client": 0, "server": 0}         # plaintext bytes per side
        self.lines: list[Line] = []                      # for diagnosis (capped)
        self._first: Side | None = None
        self.hold = hold
        # A side that sent TLS while no TLS was agreed (a TLS client on a STARTTLS
        # port, a TLS server answering a plaintext client): its first record's index.
        self.unasked: dict[str, int] = {}
        self._early: dict[str, bytes] = {"client": b"", "server": b""}

    @property
    def active(self) -> bool:
        return not (self.done["client"] and self.done["server"])

    def held(self) -> int:
        return len(self._buf["client"]) + len(self._buf["server"])

    def feed(self, side: Side, data: bytes) -> Fed:
        """Bytes from ``side``: its units, how many bytes are plaintext, and the rest."""
        fed = Fed()
        if self._early[side]:  # held while the other side's bytes named the protocol
            data, self._early[side] = self._early[side] + data, b""
        if self.done[side]:
            fed.rest = self.release(side) + data
            return fed
        if self._first is None and data:
            self._first = side
            if side == "client" and (data[0] in TLS_FIRST or data[0] & 0x80):
                # TLS from the first byte (implicit TLS, PostgreSQL 17 direct TLS):
                # no plaintext phase, whatever --protocol said.
                self.done = {"client": True, "server": True}
                fed.rest = data
                return fed
        if self.dialect is None:
            if not self._detect(side, data, fed):
                return fed
            data = bytes(self._buf[side])
            self._buf[side].clear()
            # The other side's bytes held during detection were never forwarded: they
            # go through its units on its next feed (or at its end), not lost.
            other: Side = "server" if side == "client" else "client"
            self._early[other] = bytes(self._buf[other])
            self._buf[other].clear()
        self._units(side, data, fed)
        return fed

    def passes(self, side: Side, data: bytes) -> bool:
        """Whether :meth:`feed` of ``data`` from ``side`` hands it on whole and
        unchanged: the side is past plaintext, or these are a client's first bytes and
        they start TLS (see :meth:`feed`: implicit TLS, nothing held before)."""
        if self.done[side]:
            return not self._early[side] and not self._buf[side]
        return (self._first is None and side == "client" and bool(data)
                and (data[0] in TLS_FIRST or bool(data[0] & 0x80)))

    def withheld(self, unit: Unit) -> None:
        """A fault kept ``unit`` from its receiver: a TLS request it carried is not
        pending (the server never saw it; its next reply answers something else)."""
        if unit.line is not None and unit.line.starttls == "requested" and self.dialect:
            self.dialect.pending = False
            if isinstance(self.dialect, Postgres):
                self.dialect.answer = False

    def release(self, side: Side) -> bytes:
        """Bytes ``side`` sent while undetected, once the other side's bytes showed the
        connection is no plaintext protocol: they go to the record path now."""
        if not self.done[side] or self.dialect is not None:
            return b""
        held = bytes(self._buf[side])
        self._buf[side].clear()
        return held

    def unforwarded(self, side: Side) -> bytes:
        """Bytes of ``side`` taken in and not passed on (detection, or a held unit)."""
        held = bytes(self._buf[side]) if self.dialect is None or self.hold else b""
        return self._early[side] + held

    def end(self, side: Side) -> bytes:
        """``side`` closed: its plaintext is over; what was held back, to pass on (a
        partial unit as it was; undetected bytes then go to the record path)."""
        held = self.unforwarded(side)
        self._buf[side].clear()
        self._early[side] = b""
        self.done[side] = True
        return held

    def _detect(self, side: Side, data: bytes, fed: Fed) -> bool:
        buf = self._buf[side]
        buf += data
        found = detect(side, bytes(buf), banner=self._first == "server")
        if found is None and len(buf) < max(DETECT_BYTES, DETECT_TEXT):
            return False              # held: a few bytes until the protocol is known
        if not found:
            self.done = {"client": True, "server": True}
            fed.rest = bytes(buf)
            buf.clear()
            return False
        self.protocol = found
        self.dialect = PROTOCOLS[found].dialect()
        return True

    def _units(self, side: Side, data: bytes, fed: Fed) -> None:
        assert self.dialect is not None
        buf = self._buf[side]
        skipped = self._skip_overlong(side, data)
        # Held from earlier reads: already forwarded unless whole units are held.
        old = 0 if self.hold else len(buf)
        buf += data[skipped:]
        pieces = [data[:skipped]]
        view = bytes(buf)
        start = 0
        while start < len(view):
            if self._tls_now(side) or self._unasked_tls(side, view[start:start + 3]):
                self._switch(side, data, view, start, old, pieces, fed)
                return
            n = self.dialect.frame(side, view[start:])
            if n == 0:
                if len(view) - start <= MAX_UNIT:
                    break
                n = MAX_UNIT
                self._skip[side] = -1     # the rest of this overlong unit is skipped
            raw = view[start:start + n]
            start += n
            pieces.append(raw)
            if self._unit(side, raw, fed):
                self._switch(side, data, view, start, old, pieces, fed)
                return
            if self._skip[side] == -1:
                pieces.append(view[start:])
                start = len(view)         # what follows the cut belongs to the skip
                break
        del buf[:start]
        fed.forward = b"".join(pieces) if self.hold else data
        self.offset[side] += len(data)

    def _skip_overlong(self, side: Side, data: bytes) -> int:
        """Bytes at the start of ``data`` that finish a unit cut at MAX_UNIT."""
        if self._skip[side] != -1:
            return 0
        end = data.find(b"\n")
        if end < 0:
            return len(data)
        self._skip[side] = 0
        return end + 1

    def _unit(self, side: Side, raw: bytes, fed: Fed) -> bool:
        """Describe one unit; True when this side's TLS starts right after it."""
        assert self.dialect is not None
        self._refine(side, raw)
        line = self.dialect.describe(side, raw)
        fed.units.append(Unit(raw, line))
        if line is not None and len(self.lines) < 256:
            self.lines.append(line)
        if side == "server":
            return line is not None and line.starttls == "accepted"
        return self.dialect.switch_client

    def _refine(self, side: Side, raw: bytes) -> None:
        """SMTP, LMTP and FTP greet alike (220): the whole greeting line, or else the
        client's first verb, tells."""
        if self.protocol not in ("smtp", "ftp", "lmtp"):
            return
        if side == "server" and not self.lines:
            upper = raw.upper()
            name = "ftp" if b"FTP" in upper else "lmtp" if b"LMTP" in upper else None
            if name is not None:
                self.protocol = name
                self.dialect = PROTOCOLS[name].dialect()
            return
        if side != "client":
            return
        if any(ln.side == "client" for ln in self.lines):
            return
        verb = raw.split(None, 1)[0].upper() if raw.strip() else b""
        name = {b"LHLO": "lmtp", b"EHLO": "smtp", b"HELO": "smtp"}.get(verb)
        if name is None and verb in (b"USER", b"AUTH", b"FEAT", b"SYST", b"OPTS"):
            name = "ftp" if self.protocol != "smtp" or verb != b"AUTH" else None
        if name is not None and name != self.protocol:
            self.protocol = name
            self.dialect = PROTOCOLS[name].dialect()
            self.lines = [Line(x.side, name, x.length, x.verb, x.status, x.words, x.hidden,
                               x.starttls) for x in self.lines]

    def _unasked_tls(self, side: Side, head: bytes) -> bool:
        """A TLS record header where a plaintext unit was due (RFC 8446 5.1): a
        handshake or alert record, version 3.x. The side goes to the record path."""
        if len(head) < 3 or head[0] not in (0x15, 0x16) or head[1] != 3 or head[2] > 4:
            return False
        if isinstance(self.dialect, Postgres | Mysql | Ldap):
            return False              # binary protocols: such bytes can be a message
        self.unasked[side] = self.offset[side]
        return True

    def _tls_now(self, side: Side) -> bool:
        """This side's next byte is TLS: the server accepted the client's request (or,
        MySQL, the client's SSLRequest needs no answer and the server's TLS follows)."""
        if side == "client":
            return self.done["server"]
        return self.done["client"] and self.dialect is not None \
            and self.dialect.switch_client

    def _switch(self, side: Side, data: bytes, view: bytes, at: int, old: int,
                pieces: list[bytes], fed: Fed) -> None:
        """``side``'s TLS starts at ``view[at]``; ``view`` is the held bytes (``old``
        of them already forwarded) followed by ``data``. The rest goes to the record
        path; the plaintext before it is forwarded (whole units when held)."""
        cut = max(at, old)
        fed.rest = view[cut:]
        plain = len(data) - len(fed.rest)
        fed.forward = b"".join(pieces) if self.hold else data[:plain]
        self.offset[side] += plain
        self._buf[side].clear()
        self.done[side] = True
        fed.tls_at = self.offset[side]
