"""proxy/frozen.py: the fast constructor builds exactly what the dataclass's own would."""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

import pytest

from tlsinspector.proxy import decrypt, handshake, history, protected_messages, records
from tlsinspector.proxy.frozen import fast_init

CLASSES = [decrypt.Decrypted, handshake.HandshakeMessage, history.AlertSeen,
           history.DecryptedSeen, history.EncryptedSeen, protected_messages.DecodedMessage,
           records.Record]


def _values(cls: type, salt: int) -> list[Any]:
    """One distinct value per field (the types do not matter to construction)."""
    return [f"{f.name}-{salt}" for f in dataclasses.fields(cls)]


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_same_signature_fields_and_defaults_as_the_dataclass_init(cls: type) -> None:
    assert inspect.signature(cls.__init__) == inspect.signature(cls.__dataclass_init__)
    values = _values(cls, 1)
    fast, slow = object.__new__(cls), object.__new__(cls)
    cls.__init__(fast, *values)
    cls.__dataclass_init__(slow, *values)
    assert fast == slow and repr(fast) == repr(slow) and hash(fast) == hash(slow)
    assert [getattr(fast, f.name) for f in dataclasses.fields(cls)] == values
    # Keyword arguments and defaults: only the fields without a default given.
    required = {f.name: f"{f.name}-2" for f in dataclasses.fields(cls)
                if f.default is dataclasses.MISSING}
    assert cls(**required) == _slow(cls, **required)
    with pytest.raises(dataclasses.FrozenInstanceError):
        fast.__setattr__(dataclasses.fields(cls)[0].name, "changed")
    assert dataclasses.replace(fast) == fast


def _slow(cls: type, **kw: Any) -> Any:
    obj = object.__new__(cls)
    cls.__dataclass_init__(obj, **kw)
    return obj


def test_refuses_what_it_cannot_build_exactly() -> None:
    @dataclasses.dataclass(slots=True)
    class Mutable:
        a: int

    @dataclasses.dataclass(frozen=True, slots=True)
    class Factory:
        a: list[int] = dataclasses.field(default_factory=list)

    @dataclasses.dataclass(frozen=True, slots=True)
    class Post:
        a: int

        def __post_init__(self) -> None:
            pass

    for cls in (Mutable, Factory, Post):
        with pytest.raises(TypeError, match=cls.__name__):
            fast_init(cls)
