"""The per-direction phases and their one transition table (proxy/phases.py)."""

from __future__ import annotations

import pytest

from tlsinspector.proxy.phases import TRANSITIONS, EngineError, Phase, Step, step


def test_the_transition_table_refuses_what_it_does_not_list() -> None:
    assert step(Phase.HANDSHAKE, Step.KEYS) is Phase.PROTECTED
    assert step(Phase.PROTECTED, Step.FINISHED) is Phase.FINISHED
    assert step(Phase.FINISHED, Step.SKIM) is Phase.SKIM
    with pytest.raises(EngineError, match="no transition from handshake on skim"):
        step(Phase.HANDSHAKE, Step.SKIM)
    # Every phase can fail and end; nothing leaves CLOSED but more of the same.
    for p in Phase:
        assert (p, Step.FAIL) in TRANSITIONS
        assert p is Phase.CLOSED or (p, Step.EOF) in TRANSITIONS
    assert {v for (p, _), v in TRANSITIONS.items() if p is Phase.CLOSED} == {Phase.CLOSED}
