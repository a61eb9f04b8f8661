"""lab.peers.free_port: a port for a server started next, outside the range the kernel
hands out itself, so that no connect() or bind to port 0 elsewhere on a loaded
machine takes it before the server binds it."""

from __future__ import annotations

import socket

import pytest

from tlsinspector.lab import peers


def test_free_port_is_outside_the_kernels_ephemeral_range_and_bindable() -> None:
    lo, hi = peers.ephemeral_range()
    ports = {peers.free_port() for _ in range(20)}
    assert len(ports) > 1  # random picks, not one fixed port
    for port in ports:
        assert not lo <= port <= hi, (port, lo, hi)
        assert port >= peers.FREE_PORT_FLOOR
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))


def test_free_port_skips_a_port_in_use(monkeypatch: pytest.MonkeyPatch) -> None:
    # The first picks are a port that is bound: it is never returned.
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        taken = busy.getsockname()[1]
        picks = iter([taken, taken, taken])
        real = peers._port_rng.randint
        monkeypatch.setattr(peers._port_rng, "randint", lambda a, b: next(picks, real(a, b)))
        port = peers.free_port()
        assert port != taken and next(picks, None) is None  # all three were tried


def test_free_port_falls_back_to_the_kernels_choice_without_room(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(peers, "ephemeral_range", lambda: (1024, 65535))
    port = peers.free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
