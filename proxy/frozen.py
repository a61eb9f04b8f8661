"""A cheaper constructor for the frozen slotted dataclasses made per record.

``@dataclass(frozen=True, slots=True)`` writes every field in ``__init__`` with
``object.__setattr__(self, name, value)``: a global lookup, a method call and an
attribute lookup by name per field. A keyed TLS 1.3 connection makes about forty
such objects more than a keyless one (Decrypted, DecryptedSeen, DecodedMessage,
HandshakeMessage per encrypted record), and that was 3x the cost of a mutable
dataclass (issue 14's handshakes/s row). :func:`fast_init` gives the class an
``__init__`` that stores each field through its slot's own descriptor instead,
which bypasses the frozen ``__setattr__`` as the original does, with the same
signature, defaults and field order. Everything else (frozen, eq, hash, repr,
match args, ``dataclasses.replace``) is the dataclass's own and unchanged.
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

T = TypeVar("T")


def fast_init(cls: type[T]) -> type[T]:
    """Replace a frozen slotted dataclass's ``__init__`` (see the module docstring).
    Refuses a class it cannot serve exactly: not a frozen slotted dataclass, a
    ``__post_init__``, a field with ``init=False`` or a ``default_factory``."""
    params = getattr(cls, "__dataclass_params__", None)
    if params is None or not params.frozen or "__slots__" not in cls.__dict__:
        raise TypeError(f"{cls.__name__}: fast_init needs @dataclass(frozen=True, slots=True)")
    if hasattr(cls, "__post_init__"):
        raise TypeError(f"{cls.__name__}: fast_init does not call __post_init__")
    ns: dict[str, Any] = {}
    args: list[str] = []
    body: list[str] = []
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if not f.init or f.default_factory is not dataclasses.MISSING:
            raise TypeError(f"{cls.__name__}.{f.name}: fast_init takes plain fields only")
        if f.kw_only:
            raise TypeError(f"{cls.__name__}.{f.name}: fast_init takes no keyword-only fields")
        if f.default is dataclasses.MISSING:
            args.append(f.name)
        else:
            ns[f"_default_{f.name}"] = f.default
            args.append(f"{f.name}=_default_{f.name}")
        ns[f"_set_{f.name}"] = cls.__dict__[f.name].__set__  # the slot's descriptor
        body.append(f"    _set_{f.name}(self, {f.name})")
    src = f"def __init__(self, {', '.join(args)}):\n" + ("\n".join(body) or "    pass")
    exec(src, ns)  # noqa: S102 - generated from the class's own field names, as dataclasses does
    init = ns["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    init.__doc__ = cls.__init__.__doc__
    init.__annotations__ = dict(cls.__init__.__annotations__)  # (the same signature)
    cls.__dataclass_init__ = cls.__init__  # type: ignore[attr-defined]  # (tests compare)
    cls.__init__ = init  # type: ignore[method-assign]
    return cls
