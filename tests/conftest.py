"""Shared fixtures: one set of test certificates per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from tlsinspector.lab.certs import Certs, make_certs
from tlsinspector.lab.tlsserver import HelloServer


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(Path(tmp_path_factory.mktemp("certs")))


@pytest.fixture(scope="session")
def demo_server(certs: Certs) -> HelloServer:
    """A Python ssl HTTPS server answering one page per connection; trust certs.ca_cert."""
    srv = HelloServer(certs.server_cert, certs.server_key)
    srv.start()
    return srv
