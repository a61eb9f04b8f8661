"""Hex dumps as people paste them, turned into TLS byte streams per side (sans-io).

Customers paste the bytes they saw into a forum post or a ticket: spaced bytes,
one long run of digits, ``xxd`` (``00000000: 1603 0300 ...  ascii``),
``hexdump -C`` (``00000000  16 03 03 00 ...  |ascii|``, ``*`` for repeated
lines, the total as a last line), Wireshark's "Copy as Hex Dump"
(``0000   16 03 03 ...   ascii``), C arrays (``0x16, 0x03``) and escapes
(``\\x16\\x03``), all mixed with prose. :func:`parse` finds the runs of hex lines
(a *block* each), strips offsets and ASCII columns, and says for every block which
side sent it: as marked (a ``client:``/``server:``/``C->S``/``S->C`` line or line
prefix) or guessed from the content, with the guess stated, because a wrong side
would make every later diagnosis wrong.

Only blocks that hold TLS records are returned; a block that starts with a bare
handshake message (copied from Wireshark's "Handshake Protocol" pane) gets a
record header, and a block with frame headers before the first record (a whole
frame copied) has them cut: each such change is stated in the block's notes.
Nothing here raises anything but :class:`HexError`, whose message names the line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from tlsinspector.proxy.history import Side
from tlsinspector.proxy.records import is_sslv2_client_hello

# A side marker: a line of its own ("Server:", "C->S", "from client") or a prefix
# on a hex line ("S: 15 03 03 ...").
_MARK = re.compile(
    r"^\W*(?:from\s+|sent\s+by\s+|by\s+)?(?P<m>client\s*->\s*server|server\s*->\s*client|"
    r"c\s*->\s*s|s\s*->\s*c|client|server|[cs](?=\s*:))(?P<words>(?:\s+[\w-]+){0,2})"
    r"\s*(?::|$)(?P<rest>.*)$",
    re.IGNORECASE)
# An arrow needs no colon before the bytes: "S->C 15 03 03 ..." (how the inspector's
# own terminal view names a side) is a prefix, not prose.
_ARROW = re.compile(
    r"^\W*(?P<m>client\s*->\s*server|server\s*->\s*client|c\s*->\s*s|s\s*->\s*c)"
    r"\s+(?P<rest>.*)$", re.IGNORECASE)
_HEXTOK = re.compile(r"^(?:[0-9a-fA-F]{2})+$")
_OFFSET = re.compile(r"^(?P<o>[0-9a-fA-F]{4,8}):?$")
_INVISIBLE = dict.fromkeys(map(ord, "\u200b\u200c\u200d\u2060\ufeff"))
MAX_HEX_CHARS = 64 << 20   # a pasted dump is small; bound the work on a hostile one
MIN_BYTES_IN_PROSE = 4     # fewer leading hex tokens than this on a prose line: prose
CLIENT_HS = {1: "a ClientHello", 15: "a CertificateVerify", 16: "a ClientKeyExchange"}
SERVER_HS = {0: "a HelloRequest", 2: "a ServerHello", 4: "a NewSessionTicket",
             8: "EncryptedExtensions", 11: "a Certificate", 12: "a ServerKeyExchange",
             13: "a CertificateRequest", 14: "a ServerHelloDone"}


class HexError(ValueError):
    """The text holds no usable hex, or a hex line is broken; the message names the line."""


@dataclass(frozen=True, slots=True)
class Block:
    """One run of hex lines: the bytes one side sent, and why we think it was that side."""

    side: Side
    data: bytes
    first_line: int
    last_line: int
    how: str                        # "marked at line 3" or "guessed: starts with a ClientHello"
    notes: tuple[str, ...] = ()     # changes made to the bytes (header added, frame cut)

    @property
    def lines(self) -> str:
        if self.first_line == self.last_line:
            return f"line {self.first_line}"
        return f"lines {self.first_line}-{self.last_line}"


@dataclass(slots=True)
class _Run:
    first: int
    last: int
    side: Side | None
    mark_line: int | None
    data: bytearray
    offsets: bool = False          # the lines carry offsets (xxd, hexdump, Wireshark)
    repeat: bytes | None = None    # hexdump's "*": the previous line repeats


def _token_bytes(tok: str) -> bytes | None:
    """One whitespace-separated token as bytes, or None if it is not hex."""
    tok = tok.rstrip(",;")
    if tok[:2] in ("0x", "0X"):
        tok = tok[2:]
    if "\\x" in tok:
        tok = tok.replace("\\x", "")
    if not _HEXTOK.match(tok):
        return None
    return bytes.fromhex(tok)


def _hex_run(tokens: list[str]) -> tuple[bytes, int]:
    """The bytes of the leading hex tokens and how many tokens they were."""
    out = bytearray()
    for n, tok in enumerate(tokens):
        b = _token_bytes(tok)
        if b is None:
            return bytes(out), n
        out += b
    return bytes(out), len(tokens)


def _dump_line(rest: str) -> bytes:
    """The hex part of a line after its offset: stop at the ASCII column.

    The column follows the hex after two or more spaces; it is ``|...|`` in
    ``hexdump -C`` and as many characters wide as the line has bytes in xxd and
    Wireshark, which tells it from hex even when it happens to look like hex.
    """
    segments = re.split(r"\s{2,}", rest.strip())
    data = bytearray()
    for i, seg in enumerate(segments):
        if seg.startswith("|"):
            break
        toks = seg.split()
        b, n = _hex_run(toks)
        if n < len(toks):
            data += b if i == 0 or n else b""
            break
        if i > 0 and i == len(segments) - 1 and len(seg) == len(data) and len(toks) == 1:
            break  # an ASCII column that looks like hex
        data += b
    return bytes(data)


class _Parser:
    def __init__(self) -> None:
        self.runs: list[_Run] = []
        self.run: _Run | None = None
        self.side: Side | None = None       # marked side for the next block
        self.mark_line: int | None = None
        self._last_line = b""               # for hexdump's "*"

    def _end(self) -> None:
        if self.run is not None:
            self.runs.append(self.run)
            self.run = None

    def _mark(self, word: str, lineno: int) -> None:
        w = re.sub(r"\s", "", word.lower())
        self._end()
        self.side = "client" if w in ("client", "c", "c->s", "client->server") else "server"
        self.mark_line = lineno

    def line(self, raw: str, lineno: int) -> None:
        text = raw.translate(_INVISIBLE).strip()
        m = _MARK.match(text)
        if m and len(text) <= 48 and not m.group("rest").strip():
            self._mark(m.group("m"), lineno)
            return
        if m is None:
            m = _ARROW.match(text)
        if m and _hex_run(m.group("rest").split())[1] >= MIN_BYTES_IN_PROSE:
            self._mark(m.group("m"), lineno)
            text = m.group("rest").strip()
        if not text:
            self._end()
            return
        if text == "*" and self.run is not None and self.run.offsets:
            self.run.repeat = self._last_line
            return
        tokens = text.split()
        offset = self._offset(tokens[0])
        if offset is not None:
            self._offset_line(offset, text[len(tokens[0]):], lineno)
            return
        data, n = _hex_run(tokens)
        if n == len(tokens):
            self._add(data, lineno, offsets=False)
            return
        if n >= MIN_BYTES_IN_PROSE:
            raise HexError(f"line {lineno}: {tokens[n][:20]!r} is not a hex byte "
                           f"(after {n} hex tokens)")
        self._end()   # prose

    def _offset(self, tok: str) -> int | None:
        """The line's offset, if its first token is one: the count of bytes so far
        (or 0 for a new dump), or anything with xxd's colon; else the token is data
        ("16030300 4f010000" is eight-digit grouped hex, not an offset)."""
        m = _OFFSET.match(tok)
        if not m:
            return None
        value = int(m.group("o"), 16)
        run = self.run
        dump = run is not None and run.offsets
        expected = len(run.data) if run is not None and dump else 0
        if value == expected or tok.endswith(":") or (dump and value == 0):
            return value
        if run is not None and dump and run.repeat is not None:
            return value
        return None

    def _offset_line(self, offset: int, rest: str, lineno: int) -> None:
        run = self.run
        if run is not None and run.offsets and offset != len(run.data):
            if run.repeat is not None and offset > len(run.data) and run.repeat:
                # hexdump's "*": the last line repeats up to this offset.
                while len(run.data) < offset:
                    run.data += run.repeat[: offset - len(run.data)]
                run.repeat = None
            elif offset == 0:
                self._end()   # a new dump starts
            else:
                raise HexError(f"line {lineno}: offset 0x{offset:x} does not follow the "
                               f"{len(run.data)} bytes before it (a line is missing?)")
        data = _dump_line(rest)
        if not data:
            if self.run is not None and self.run.offsets:
                self._end()   # hexdump's last line: the total length alone
            return
        self._last_line = data
        self._add(data, lineno, offsets=True)

    def _add(self, data: bytes, lineno: int, offsets: bool) -> None:
        if self.run is None or self.run.offsets != offsets:
            self._end()
            self.run = _Run(lineno, lineno, self.side, self.mark_line, bytearray(), offsets)
            self.side, self.mark_line = None, None
        self.run.data += data
        self.run.last = lineno


def _is_header(data: bytes, i: int) -> bool:
    # RFC 8446 5.1 / RFC 5246 6.2.1: type 20..24, major version 3, minor 0..4.
    return (len(data) >= i + 5 and 20 <= data[i] <= 24 and data[i + 1] == 3
            and data[i + 2] <= 4)


def _chains(data: bytes, i: int) -> bool:
    """Records from offset i end exactly at the end of the data (or one runs past it)."""
    while i < len(data):
        if not _is_header(data, i):
            return False
        i += 5 + int.from_bytes(data[i + 3 : i + 5], "big")
    return True


def _as_records(data: bytes) -> tuple[bytes, tuple[str, ...]] | None:
    """The block's bytes from its first TLS record on, with what had to change."""
    if _is_header(data, 0):
        return data, ()
    if is_sslv2_client_hello(data[:5]):
        # A scanner's SSL 2.0-format hello (RFC 5246 E.2): the engine names it.
        return data, ()
    if len(data) >= 4 and data[0] in (1, 2) and int.from_bytes(data[1:4], "big") == len(data) - 4:
        # A bare hello (Wireshark's "Handshake Protocol" bytes): frame it as one
        # record (RFC 8446 5.1), version from the hello's legacy_version.
        version = data[4:6] if len(data) >= 6 and data[4] == 3 else b"\x03\x03"
        header = b"\x16" + version + len(data).to_bytes(2, "big")
        return header + data, (f"a bare handshake message: record header "
                               f"{header.hex(' ')} added",)
    for i in range(1, min(len(data) - 4, 256)):
        if _is_header(data, i) and _chains(data, i):
            return data[i:], (f"{i} bytes before the first TLS record cut "
                              f"(frame headers: {data[:min(i, 8)].hex(' ')} ...)",)
    return None


def _guess(data: bytes, previous: Side | None) -> tuple[Side, str]:
    ct = data[0]
    if is_sslv2_client_hello(data[:5]):
        return "client", "guessed: an SSLv2-compatible ClientHello is the client's"
    if ct == 22 and len(data) > 5:
        t = data[5]
        if t in CLIENT_HS:
            return "client", f"guessed: starts with {CLIENT_HS[t]}"
        if t in SERVER_HS:
            return "server", f"guessed: starts with {SERVER_HS[t]}"
    what = {21: "an alert", 20: "a ChangeCipherSpec", 23: "application data"}.get(ct, "records")
    if previous is None:
        return "client", f"guessed: {what} first, taken as the client's"
    side: Side = "server" if previous == "client" else "client"
    return side, f"guessed: {what} answering the {previous}'s block before it"


def _plaintext(data: bytes) -> bool:
    """Bytes that start as a line of text (HTTP/1.1 400, 220 smtp ...), not a key or hash."""
    head = data[:8]
    return len(head) == 8 and all(0x20 <= c < 0x7F or c in b"\r\n\t" for c in head)


def parse(text: str) -> tuple[list[Block], list[str]]:
    """The TLS blocks in ``text`` and notes on what was skipped.

    Raises :class:`HexError` when there is no TLS record in the text at all.
    """
    if len(text) > MAX_HEX_CHARS:
        raise HexError(f"the hex text is {len(text)} characters; at most {MAX_HEX_CHARS}")
    p = _Parser()
    for n, raw in enumerate(text.splitlines(), 1):
        p.line(raw, n)
    p._end()
    blocks: list[Block] = []
    skipped: list[str] = []
    previous: Side | None = None
    for run in p.runs:
        data = bytes(run.data)
        where = f"line {run.first}" if run.first == run.last else f"lines {run.first}-{run.last}"
        framed = _as_records(data)
        if framed is None and blocks and (run.side is not None or _plaintext(data)):
            # After TLS, a marked block or text (a server's 'HTTP/1.1 400' answer to
            # the hello): the peer's real bytes, which the engine names non-TLS.
            side = run.side or ("server" if previous == "client" else "client")
            how = (f"marked {run.side} at line {run.mark_line}" if run.side else
                   f"guessed: text answering the {previous}'s block before it")
            blocks.append(Block(side, data, run.first, run.last, how,
                                ("no TLS record: passed on as it is",)))
            previous = side
            continue
        if framed is None:
            skipped.append(f"{where}: {len(data)} bytes that hold no TLS record "
                           f"({data[:8].hex(' ')}{' ...' if len(data) > 8 else ''}); skipped")
            continue
        records, notes = framed
        if run.side is not None:
            side, how = run.side, f"marked {run.side} at line {run.mark_line}"
        else:
            side, how = _guess(records, previous)
        blocks.append(Block(side, records, run.first, run.last, how, notes))
        previous = side
    if not blocks:
        if not p.runs:
            raise HexError("no hex bytes found (expected e.g. '16 03 03 00 4f ...', xxd or "
                           "hexdump -C output, or Wireshark's 'Copy as Hex Dump')")
        raise HexError("no TLS record in the hex: " + "; ".join(skipped))
    return blocks, skipped
