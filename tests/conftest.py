"""Shared fixtures: one set of test certificates per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from lab.certs import Certs, make_certs


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(Path(tmp_path_factory.mktemp("certs")))
