"""Re-sealing changed encrypted records, one direction at a time, sans-io (issue 14).

A fault inside encryption works on the plaintext: the record is opened with the
protection state :class:`~proxy.decrypt.Decryptor` reported for it, the fault
engine's action changes the plaintext records, and each resulting record is
sealed again with the same keys (recipe in decrypt.py's docstring). A record's
sequence number is implicit (RFC 8446 5.3, RFC 5246 6.2.3): the receiver
counts what it got. So after the proxy inserts a record into a direction, every
later record of that direction must be sealed with its number + 1, and after a
drop with its number - 1. :class:`Resealer` keeps that shift, per key epoch
(a new epoch starts again at 0 on both ends: TLS 1.3 KeyUpdate and handshake
to application keys, RFC 8446 7.2; a TLS 1.2 renegotiation's ChangeCipherSpec,
RFC 5246 6.1), and re-seals the records that follow:

    rs = Resealer()                               # one per direction
    plain = rs.open(res, record)                  # Record(inner type, version, plaintext)
    out = rs.replace(res, record, changed)        # changed: list[Record] of plaintexts
    out = rs.forward(res, record)                 # an unchanged later record
    out = rs.inject(protection, epoch, records)   # new records between two originals

Every method returns the records to send (outer type, version, sealed payload).
The sealing state is a clone of the Decryptor's: the Decryptor goes on reading
the sender's own records with the sender's numbers.

What re-sealing cannot repair: a changed handshake message is still a changed
transcript (RFC 8446 4.4.1, RFC 5246 7.4.9), so the Finished of either side
fails afterwards (decrypt_error, or bad_record_mac in the other direction).
Re-sealing reuses (key, nonce) pairs the sender used for other plaintexts; that
is harmless for a test tool whose operator holds the keys, and a reason never
to run faults on production traffic.
"""

from __future__ import annotations

from collections.abc import Sequence

from tlsinspector.proxy.decrypt import Decrypted
from tlsinspector.proxy.protection import RecordProtection
from tlsinspector.proxy.records import Record


class ResealError(Exception):
    """The record cannot be opened or re-sealed with what the Decryptor knows."""


def _state(res: Decrypted) -> tuple[RecordProtection, int]:
    if res.status != "decrypted" or res.protection is None or res.seq is None:
        raise ResealError(f"record {res.side} #{res.index} is {res.status}"
                          + (f" ({res.reason})" if res.reason else "")
                          + ": it cannot be re-sealed")
    return res.protection, res.seq


class Resealer:
    """One direction's re-sealing state: the sequence-number shift per key epoch."""

    __slots__ = ("_shift",)

    def __init__(self) -> None:
        self._shift: dict[str, int] = {}

    def __repr__(self) -> str:
        return f"Resealer({dict(self._shift)})"

    def shift(self, epoch: str) -> int:
        """Records inserted minus records dropped so far in ``epoch``."""
        return self._shift.get(epoch, 0)

    @property
    def ever_shifted(self) -> bool:
        """Some record was inserted or dropped: this direction must stay on the record
        path (never raw passthrough), so each later record can be re-sealed."""
        return any(self._shift.values())

    def shifted(self, res: Decrypted) -> bool:
        """Whether ``res`` (a record of this direction) must be re-sealed to stay valid."""
        return self.shift(res.epoch) != 0

    def open(self, res: Decrypted, record: Record) -> Record:
        """The record's inner plaintext as a plaintext record (inner type, outer version)."""
        prot, seq = _state(res)
        p = prot.clone()
        p.seq = seq
        inner_type, plaintext = p.open(record.header(), record.payload)
        return Record(inner_type, record.version, plaintext)

    def replace(self, res: Decrypted, record: Record, plain: Sequence[Record]) -> list[Record]:
        """Send ``plain`` (plaintext records: type, version, payload) instead of ``record``.

        ``plain`` may be empty (a drop: later records move down by one) or hold
        several records (an insert or a split: later records move up).
        """
        prot, seq = _state(res)
        p = prot.clone()
        p.seq = seq + self.shift(res.epoch)
        out = [self._seal(p, r) for r in plain]
        self._shift[res.epoch] = self.shift(res.epoch) + len(plain) - 1
        return out

    def forward(self, res: Decrypted, record: Record) -> list[Record]:
        """An unchanged record: its own bytes, or re-sealed when the epoch is shifted."""
        if res.status == "plaintext" or not self.shifted(res):
            return [record]
        plain = self.open(res, record)
        prot, seq = _state(res)
        p = prot.clone()
        p.seq = seq + self.shift(res.epoch)
        return [self._seal(p, plain, _padding(prot, record, plain))]

    def inject(self, prot: RecordProtection | None, epoch: str,
               plain: Sequence[Record]) -> list[Record]:
        """New records sent before the sender's next record in ``epoch``.

        ``prot`` is the Decryptor's live protection of this direction
        (``Decryptor.protection(side)``): its ``seq`` is the sender's next
        number, so the receiver's next is that plus the shift.
        """
        if prot is None:
            raise ResealError("the keys of this direction are not known yet")
        p = prot.clone()
        p.seq = prot.seq + self.shift(epoch)
        out = [self._seal(p, r) for r in plain]
        self._shift[epoch] = self.shift(epoch) + len(plain)
        return out

    @staticmethod
    def _seal(p: RecordProtection, r: Record, padding: int = 0) -> Record:
        return Record(p.outer_type(r.content_type), r.version,
                      p.seal(r.content_type, r.payload, r.version, padding))


def _padding(prot: RecordProtection, record: Record, plain: Record) -> int:
    """TLS 1.3 zero padding of the original (RFC 8446 5.4), kept so lengths match."""
    if not prot.suite.tls13:
        return 0
    return max(0, len(record.payload) - len(plain.payload) - 1 - prot.suite.tag_len)
