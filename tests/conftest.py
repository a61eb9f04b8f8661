"""Shared fixtures: one set of test certificates per session."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

from tlsinspector.lab.certs import Certs, make_certs
from tlsinspector.lab.tlsserver import HelloServer


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "handmade_logs: the test writes JSONL by hand (a "
                            "reader's input); its tmp_path is not checked against the schema")


# `make mutation` runs the fast tests once per mutant: fewer, fixed examples there.
settings.register_profile("mutation", max_examples=25, derandomize=True, database=None,
                          deadline=None)
if os.environ.get("TLSINSPECTOR_HYPOTHESIS_PROFILE"):
    settings.load_profile(os.environ["TLSINSPECTOR_HYPOTHESIS_PROFILE"])


@pytest.fixture(autouse=True)
def _logs_follow_the_event_schema(request: pytest.FixtureRequest) -> Iterator[None]:
    """After every test: each JSONL log it wrote under tmp_path matches
    docs/events.schema.json (every event, every field)."""
    if "tmp_path" not in request.fixturenames or request.node.get_closest_marker(
            "handmade_logs"):
        yield
        return
    tmp: Path = request.getfixturevalue("tmp_path")
    yield
    from tests.events_schema import log_problems

    # Regular files only: a test may point the log at /dev/full, endless to read.
    logs = [p for p in sorted(tmp.rglob("*.jsonl")) if p.is_file() and not p.is_symlink()]
    found = [p for log in logs for p in log_problems(log)]
    if found:
        pytest.fail("events outside docs/events.schema.json:\n" + "\n".join(found[:20]),
                    pytrace=False)


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(Path(tmp_path_factory.mktemp("certs")))


@pytest.fixture(scope="session")
def demo_server(certs: Certs) -> HelloServer:
    """A Python ssl HTTPS server answering one page per connection; trust certs.ca_cert."""
    srv = HelloServer(certs.server_cert, certs.server_key)
    srv.start()
    return srv
