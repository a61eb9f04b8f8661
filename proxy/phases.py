"""Where one direction of a connection stands: phases and the one transition table.

The model is h11's ``_state.py``: the engine never sets a flag, it asks
:func:`step` for the next phase, and a transition the table does not list is an
:class:`EngineError` (a bug, caught by the engine's error boundary).
"""

from __future__ import annotations

from enum import Enum


class Phase(Enum):
    """Where one direction (the records one side sends) stands."""

    HANDSHAKE = "handshake"            # records in the clear: parsed, messages decoded
    CLEAR_FINISHED = "clear-finished"  # a Finished went by in the clear (no real stack)
    PROTECTED = "protected"            # keys in use: after its ChangeCipherSpec (RFC 5246
                                       # 7.1) or a TLS 1.3 ServerHello (RFC 8446 2)
    FINISHED = "finished"              # keys in use and its Finished went by
    SKIM = "skim"                      # handshake over, no fault left: boundaries only
    CLOSED = "closed"                  # the side ended its stream (FIN)
    BROKEN = "broken"                  # the engine failed: bytes forwarded raw


class Step(Enum):
    KEYS = "keys"            # protection starts (CCS; TLS 1.3 ServerHello, both ways)
    FINISHED = "finished"    # its Finished (or first encrypted handshake record) went by
    SKIM = "skim"            # nothing left to parse: only record boundaries
    EOF = "eof"              # the side closed its sending half
    FAIL = "fail"            # an internal error: plain passthrough from now on


_P, _S = Phase, Step
TRANSITIONS: dict[tuple[Phase, Step], Phase] = {
    (_P.HANDSHAKE, _S.KEYS): _P.PROTECTED,
    (_P.HANDSHAKE, _S.FINISHED): _P.CLEAR_FINISHED,
    (_P.CLEAR_FINISHED, _S.KEYS): _P.FINISHED,
    (_P.CLEAR_FINISHED, _S.FINISHED): _P.CLEAR_FINISHED,
    (_P.PROTECTED, _S.KEYS): _P.PROTECTED,
    (_P.PROTECTED, _S.FINISHED): _P.FINISHED,
    (_P.PROTECTED, _S.SKIM): _P.SKIM,            # TLS 1.3: its Finished is encrypted
    (_P.FINISHED, _S.KEYS): _P.FINISHED,         # a TLS 1.2 renegotiation's CCS
    (_P.FINISHED, _S.FINISHED): _P.FINISHED,
    (_P.FINISHED, _S.SKIM): _P.SKIM,
    # A TLS 1.3 ServerHello turns on keys both ways, whatever the other side did.
    (_P.SKIM, _S.KEYS): _P.SKIM,
    (_P.CLOSED, _S.KEYS): _P.CLOSED,
    (_P.CLOSED, _S.FINISHED): _P.CLOSED,
    (_P.CLOSED, _S.FAIL): _P.CLOSED,
    (_P.BROKEN, _S.FAIL): _P.BROKEN,
    (_P.BROKEN, _S.EOF): _P.CLOSED,
    **{(p, _S.EOF): _P.CLOSED for p in Phase if p not in (_P.CLOSED, _P.BROKEN)},
    **{(p, _S.FAIL): _P.BROKEN for p in Phase if p not in (_P.CLOSED, _P.BROKEN)},
}
PROTECTED_PHASES = frozenset({Phase.PROTECTED, Phase.FINISHED, Phase.SKIM})
FINISHED_PHASES = frozenset({Phase.CLEAR_FINISHED, Phase.FINISHED})


class EngineError(Exception):
    """A transition the table does not allow: a bug in the engine."""


def step(phase: Phase, event: Step) -> Phase:
    """The one transition function: the next phase, or EngineError."""
    try:
        return TRANSITIONS[(phase, event)]
    except KeyError:
        raise EngineError(f"no transition from {phase.value} on {event.value}") from None


