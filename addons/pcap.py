"""Both legs of every inspected connection as one pcapng file, faults marked.

Run it with the inspector under plain mitmproxy:

    mitmdump --mode reverse:tcp://127.0.0.1:4433 -p 8443 -s addons/inspector.py \
        -s addons/pcap.py --set tlsinspector_pcap=both-legs.pcapng

or through the CLI: ``tlsinspector run ... --pcap both-legs.pcapng``.

Glue only: the inspector asks :meth:`PcapRecorder.observe` to watch each engine
connection it makes; the watcher passes every call through unchanged and hands
what went in and out to proxy/pcapng.py, which returns whole pcapng blocks. Each
block is appended with one write(2) on an unbuffered file, so the file is a valid
capture at every moment (a SIGKILLed proxy leaves everything written so far).
"""

from __future__ import annotations

import os
import random
import sys
from typing import Any

from mitmproxy import ctx, exceptions

from tlsinspector.addons.logfile import LogFileError, open_regular
from tlsinspector.proxy import engine, pcapng
from tlsinspector.proxy.keylog import KeyLog

HOLD_LIMIT = 4 << 20   # bytes of one connection held back while its secrets are awaited
# NSS key log labels that complete a connection's secrets (TLS 1.2; TLS 1.3 traffic).
COMPLETE = (b"CLIENT_RANDOM", b"CLIENT_TRAFFIC_SECRET_0")


def _hostport(address: Any, fallback: tuple[str, int]) -> tuple[str, int]:
    if not address:
        return fallback
    return str(address[0]), int(address[1])


class Watched:
    """An engine connection whose inputs and outputs are also written as packets.

    It may go on the hot path (addons/hotpath.py, ``HOT_PATH``): the relay hands every
    chunk it reads to :meth:`receive` as the layer does, and what it writes is that
    chunk (a settled engine forwards what it read), so the packets are the raw TCP
    payload relayed each way, cut at the relay's reads; written (copied) before
    :meth:`receive` returns, as the relay's read buffer is reused. A settled engine
    has no fault left, so no packet of the hot path needs a fault comment."""

    HOT_PATH = True

    def __init__(self, inner: engine.Connection, context: Any, rec: PcapRecorder) -> None:
        self._inner, self._ctx, self._rec = inner, context, rec
        client = _hostport(context.client.peername, ("0.0.0.0", 0))
        front = _hostport(context.client.sockname, ("0.0.0.0", 0))
        self._w = pcapng.CaptureWriter(client, front, rec.rng.randrange(1 << 31),
                                       rec.headers_only)
        # With --pcap-keys, this connection's packets wait until the key log has its
        # secrets, so the Decryption Secrets Block comes before them: Wireshark and
        # tshark need secrets before the records they decrypt.
        self._held: list[bytes] | None = [] if rec.keys else None
        self._random: str | None = None

    def _write(self, parts: pcapng.Buffers) -> None:
        """Whole blocks, as buffers (views of what was relayed among them): written at
        once, or copied while they wait for the connection's secrets."""
        if not parts:
            return
        if self._held is None:
            self._rec.write_parts(parts)
            return
        self._held.append(b"".join(parts))
        if self._random is None:
            return
        self._rec.keys_block()
        if self._rec.has_secrets(self._random) or sum(map(len, self._held)) > HOLD_LIMIT:
            self.release()

    def release(self) -> None:
        if self._held is not None:
            self._rec.keys_block()
            held, self._held = self._held, None
            self._rec.write(b"".join(held))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def forwards_unchanged(self, side: Any, data: bytes) -> bool:
        """Never: the packets are written from :meth:`receive`'s Sends, each after its
        record events (a fault's comment goes on the packet it changed)."""
        return False

    def _server_leg(self) -> None:
        if "server" not in self._w.legs:
            s = self._ctx.server
            self._w.server_leg(_hostport(s.sockname, ("0.0.0.0", 0)),
                               _hostport(s.peername or s.address, ("0.0.0.0", 0)))

    def _outputs(self, outputs: list[engine.Output], now: float,
                 parts: pcapng.Buffers) -> None:
        """Sends and closes on their legs (after ``parts``, written with them); a Send
        right after a record event that a fault touched carries that fault's comment
        (the engine emits a record's event, then delivers what the fault made of it)."""
        comment: str | None = None
        for o in outputs:
            if isinstance(o, engine.Emit):
                for m in o.event.get("messages", ()):
                    if m.get("type") == "client_hello" and self._random is None:
                        self._random = str(m.get("random", "")).lower() or None
                if o.event.get("event") == "record":
                    faults = self._faults([o])
                    comment = "; ".join(pcapng.fault_comment(f, True) for f in faults) or None
            elif isinstance(o, engine.Send):
                if o.to == "server":
                    self._server_leg()
                parts += self._w.data_parts(o.to, True, o.data, now, comment)
            elif isinstance(o, engine.Close):
                parts.append(self._w.close(o.to, True, o.how, now))
        self._write(parts)

    @staticmethod
    def _faults(outputs: list[engine.Output]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for o in outputs:
            if isinstance(o, engine.Emit) and "fault" in o.event:
                f = o.event["fault"]
                out += f if isinstance(f, list) else [f]
        return out

    def start(self, now: float) -> list[engine.Output]:
        return self._inner.start(now)

    def receive(self, side: Any, data: bytes, now: float,
                forwarded: bool = False) -> list[engine.Output]:
        outputs = self._inner.receive(side, data, now, forwarded)
        faults = self._faults(outputs)
        if side == "server":
            self._server_leg()
        note = "; ".join(pcapng.fault_comment(f, False) for f in faults) or None
        self._outputs(outputs, now, self._w.data_parts(side, False, data, now, note))
        return outputs

    def eof(self, side: Any, now: float) -> list[engine.Output]:
        outputs = self._inner.eof(side, now)
        self._outputs(outputs, now, [self._w.close(side, False, "fin", now)])
        return outputs

    def wakeup(self, now: float) -> list[engine.Output]:
        outputs = self._inner.wakeup(now)
        self._outputs(outputs, now, [])
        return outputs

    def finish(self, now: float, by: str | None = None) -> list[engine.Output]:
        self.release()
        return self._inner.finish(now, by)


class InterceptCapture:
    """Both legs of an intercepted connection (``--intercept``): each leg is its own
    TLS connection, and its engine sees that leg's raw bytes both ways (what the
    peer sent, what the inspector sent it), so the leg's packets are exactly its
    engine's inputs (its Send outputs are not used by the intercept layer). One
    CaptureWriter: the client leg on interface 0, the server leg on interface 1.

    Secrets: with ``--pcap-keys`` (tlsinspector_pcap_own_keys), the inspector's own
    secrets of both legs (it is an endpoint of each; OpenSSL's key log callback put
    them in ``own``, the connection's in-memory KeyLog) are embedded as Decryption
    Secrets Blocks, and the connection's packets wait for them as in the
    transparent mode (tshark needs a DSB before the records it decrypts); a
    --pcap-keys file's new lines too. Without it nothing secret is written."""

    def __init__(self, context: Any, rec: PcapRecorder, own: KeyLog | None) -> None:
        self._ctx, self._rec = context, rec
        client = _hostport(context.client.peername, ("0.0.0.0", 0))
        front = _hostport(context.client.sockname, ("0.0.0.0", 0))
        self.w = pcapng.CaptureWriter(client, front, rec.rng.randrange(1 << 31),
                                      rec.headers_only)
        embed = bool(rec.keys) or rec.own_keys
        self._own = own if rec.own_keys else None
        self._held: list[bytes] | None = [] if embed else None
        self.randoms: dict[str, str] = {}      # leg -> its ClientHello's random (hex)
        self._written: set[tuple[str, str]] = set()   # (random, label) embedded

    def server_leg(self) -> None:
        if "server" not in self.w.legs:
            s = self._ctx.server
            self.w.server_leg(_hostport(s.sockname, ("0.0.0.0", 0)),
                              _hostport(s.peername or s.address, ("0.0.0.0", 0)))

    def write(self, blob: bytes) -> None:
        if self._held is None:
            self._rec.write(blob)
            return
        self._held.append(blob)
        if len(self.randoms) == 2 and all(self._complete(r) for r in self.randoms.values()):
            self.release()
        elif sum(map(len, self._held)) > HOLD_LIMIT:
            self.release()

    def _complete(self, random_hex: str) -> bool:
        if self._rec.has_secrets(random_hex):
            return True
        keys = self._own.get(bytes.fromhex(random_hex)) if self._own is not None else None
        return keys is not None and any(k.encode() in COMPLETE for k in keys.secrets)

    def own_secrets(self) -> None:
        """The inspector's own secrets of both legs not embedded yet, as one block."""
        if self._own is None:
            return
        lines = []
        for r in self.randoms.values():
            keys = self._own.get(bytes.fromhex(r))
            for label, secret in sorted(keys.secrets.items()) if keys is not None else ():
                if (r, label) not in self._written:
                    self._written.add((r, label))
                    lines.append(f"{label} {r} {secret.hex()}\n")
        if lines:
            self._rec.write(pcapng.secrets_block("".join(lines).encode()))

    def release(self) -> None:
        self._rec.keys_block()
        self.own_secrets()
        if self._held is not None:
            held, self._held = self._held, None
            self._rec.write(b"".join(held))


class WatchedLeg:
    """One leg's engine of an intercepted connection: passed through unchanged, its
    inputs written as that leg's packets (``side`` from the engine's view: the
    leg's peer, or the inspector toward it)."""

    def __init__(self, inner: engine.Connection, leg: str, cap: InterceptCapture) -> None:
        self._inner, self._leg, self._cap = inner, leg, cap

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def forwards_unchanged(self, side: Any, data: bytes) -> bool:
        """Never: the packets are written from :meth:`receive`'s Sends, each after its
        record events (a fault's comment goes on the packet it changed)."""
        return False

    def _leg_side(self) -> Any:
        if self._leg == "server":
            self._cap.server_leg()
        return self._leg

    def start(self, now: float) -> list[engine.Output]:
        return self._inner.start(now)

    def receive(self, side: Any, data: bytes, now: float,
                forwarded: bool = False) -> list[engine.Output]:
        outputs = self._inner.receive(side, data, now, forwarded)
        faults = Watched._faults(outputs)
        for o in outputs:
            if isinstance(o, engine.Emit) and self._leg not in self._cap.randoms:
                for m in o.event.get("messages", ()):
                    if m.get("type") == "client_hello" and m.get("random"):
                        self._cap.randoms[self._leg] = str(m["random"]).lower()
        # A fault on this leg changed what its engine forwards, not what the leg's
        # peer sent: the comment says so on the packet that carried the record.
        note = "; ".join(pcapng.fault_comment(f, False) for f in faults) or None
        toward = side != self._leg     # the inspector sent it to this leg's peer
        self._cap.write(self._cap.w.data(self._leg_side(), toward, data, now, note))
        return outputs

    def eof(self, side: Any, now: float) -> list[engine.Output]:
        outputs = self._inner.eof(side, now)
        self._cap.write(self._cap.w.close(self._leg_side(), side != self._leg, "fin", now))
        return outputs

    def finish(self, now: float, by: str | None = None) -> list[engine.Output]:
        self._cap.release()
        return self._inner.finish(now, by)


IOV_MAX = 1024   # buffers per writev(2) (Linux's UIO_MAXIOV)


def _writev_all(fd: int, parts: pcapng.Buffers) -> None:
    """Every byte of ``parts``, in order, however many calls the kernel takes."""
    todo = [memoryview(p) for p in parts if len(p)]
    i = 0
    while i < len(todo):
        done = os.writev(fd, todo[i:i + IOV_MAX])
        while i < len(todo) and done >= len(todo[i]):
            done -= len(todo[i])
            i += 1
        if done:   # a short write stopped inside this buffer
            todo[i] = todo[i][done:]


class PcapRecorder:
    """Options and the one capture file of a run."""

    def __init__(self) -> None:
        self._fd: int | None = None
        self.path = ""
        self.size = 0
        self.limit = 0
        self.stopped = False
        self.headers_only = False
        self.keys = ""
        self.own_keys = False
        self._keys_at = 0
        self._complete: set[str] = set()   # client randoms whose secrets are complete
        self.rng = random.Random(0)

    def load(self, loader: Any) -> None:
        loader.add_option("tlsinspector_pcap", str, "",
                          "Write both legs of every connection to this pcapng file.")
        loader.add_option("tlsinspector_pcap_max_mb", int, 0,
                          "Stop writing the pcapng (with a warning) at this size; 0: no bound.")
        loader.add_option("tlsinspector_pcap_headers_only", bool, False,
                          "In the pcapng, zero application_data payloads (record headers, "
                          "lengths and TCP sequence numbers stay true).")
        loader.add_option("tlsinspector_pcap_keys", str, "",
                          "Embed the NSS key log lines of this file in the pcapng as "
                          "Decryption Secrets Blocks: anyone with the capture can decrypt it.")
        loader.add_option("tlsinspector_pcap_own_keys", bool, False,
                          "With tlsinspector_intercept: embed the inspector's own secrets of "
                          "both legs in the pcapng: anyone with the capture can decrypt it.")

    def configure(self, updated: set[str]) -> None:
        if "tlsinspector_pcap" in updated:
            self.done()
            self.path = ctx.options.tlsinspector_pcap
            if self.path:
                try:  # never through a planted symlink, never a FIFO's hang
                    self._fd = open_regular(self.path, os.O_TRUNC, "the pcapng")
                except LogFileError as e:
                    raise exceptions.OptionsError(str(e)) from e
                self.size, self.stopped = 0, False
                self.rng = random.Random(self.path)
                self.write(pcapng.header_blocks())
        self.limit = ctx.options.tlsinspector_pcap_max_mb * 1_000_000
        self.headers_only = ctx.options.tlsinspector_pcap_headers_only
        self.keys = ctx.options.tlsinspector_pcap_keys
        self.own_keys = ctx.options.tlsinspector_pcap_own_keys

    def observe(self, conn: engine.Connection, context: Any) -> Any:
        """The inspector's one call: watch this engine connection (or not)."""
        return Watched(conn, context, self) if self._fd is not None else conn

    def observe_legs(self, legs: tuple[engine.Connection, engine.Connection], context: Any,
                     own: KeyLog | None) -> tuple[Any, Any]:
        """--intercept: watch the client leg's and the server leg's engines (or not).
        ``own``: the inspector's own secrets of the connection (see InterceptCapture)."""
        if self._fd is None:
            return legs
        cap = InterceptCapture(context, self, own)
        return WatchedLeg(legs[0], "client", cap), WatchedLeg(legs[1], "server", cap)

    def write(self, blob: bytes) -> None:
        self.write_parts([blob])

    def write_parts(self, parts: pcapng.Buffers) -> None:
        """Whole blocks, given as buffers in order: one writev(2) (a few for a large
        write), so the file holds whole blocks at every moment and no byte relayed is
        copied on its way (the hot path's --pcap cost is mostly this write)."""
        total = sum(map(len, parts))
        if not total or self._fd is None or self.stopped:
            return
        if self.limit and self.size + total > self.limit:
            self.stopped = True
            self._warn(f"the pcapng {self.path} reached --pcap-max-mb "
                       f"({self.limit // 1_000_000} MB); no more packets are written")
            return
        try:
            _writev_all(self._fd, parts)
        except OSError as e:
            self.stopped = True
            self._warn(f"cannot write the pcapng {self.path}: {e.strerror}; "
                       "no more packets are written")
            return
        self.size += total

    def keys_block(self) -> None:
        """New whole lines of the key log, as a Decryption Secrets Block (pcapng 4.7)."""
        if not self.keys or self._fd is None:
            return
        try:
            if os.stat(self.keys).st_size <= self._keys_at:
                return
            with open(self.keys, "rb") as f:
                f.seek(self._keys_at)
                new = f.read()
        except OSError:
            return
        whole = new[: new.rfind(b"\n") + 1]
        if whole:
            self._keys_at += len(whole)
            self.write(pcapng.secrets_block(whole))
            for line in whole.splitlines():
                parts = line.split()
                if len(parts) == 3 and parts[0] in COMPLETE:
                    self._complete.add(parts[1].decode("ascii", "replace").lower())

    def has_secrets(self, client_random: str) -> bool:
        return client_random in self._complete

    @staticmethod
    def _warn(text: str) -> None:
        print(f"tlsinspector: WARNING {text}", file=sys.stderr, flush=True)

    def done(self) -> None:
        if self._fd is not None:
            self.keys_block()
            os.close(self._fd)
            self._fd = None


addons = [PcapRecorder()]
