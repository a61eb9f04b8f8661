"""Shared fixtures: one set of test certificates per session; the suite's own
temporary directory, checked empty at the end."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

from tlsinspector.lab.certs import Certs, make_certs
from tlsinspector.lab.tlsserver import HelloServer

# Everything the suite and its child processes (proxies, reproduce, go build) put
# in "the temporary directory" goes to one folder of its own, pytest's tmp_path
# folders included. At the end anything there that is not pytest's is a folder
# someone forgot to remove, and fails the run; the folder is removed when the
# suite passes (kept, with its path printed, when something failed; like pytest's
# own, only the last KEEP_FAILED such folders stay). Other runs sharing /tmp at
# the same time cannot disturb the check.
KEEP_FAILED = 3


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _prune_old_runs(tmp: Path) -> None:
    """Drop the folders of finished runs beyond the newest KEEP_FAILED (a running
    suite's folder is named by its pid, and left alone)."""
    done = []
    for d in tmp.glob("tlsinspector-suite-*-*"):
        pid = d.name.split("-")[2]
        if pid.isdigit() and not _alive(int(pid)):
            done.append(d)
    done.sort(key=lambda d: d.stat().st_mtime, reverse=True)
    for d in done[KEEP_FAILED:]:
        shutil.rmtree(d, ignore_errors=True)


# Under pytest-xdist the workers inherit the controller's folder (a folder per
# worker inside it would make paths too long for chromium's singleton socket);
# the controller checks it at the end.
WORKER = "PYTEST_XDIST_WORKER" in os.environ
if WORKER and "tlsinspector-suite-" in os.environ.get("TMPDIR", ""):
    SUITE_TMP = Path(os.environ["TMPDIR"])
else:
    WORKER = False
    _prune_old_runs(Path(tempfile.gettempdir()))
    SUITE_TMP = Path(tempfile.mkdtemp(prefix=f"tlsinspector-suite-{os.getpid()}-"))
    os.environ["TMPDIR"] = str(SUITE_TMP)
    tempfile.tempdir = None  # gettempdir() reads TMPDIR again


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if WORKER:
        return
    left = sorted(p.name for p in SUITE_TMP.iterdir() if not p.name.startswith("pytest-of-"))
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.ensure_newline()
    if left:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
        if reporter is not None:
            reporter.write_line(f"FAILED: left in the temporary directory {SUITE_TMP}: "
                                f"{', '.join(left)}", red=True)
    elif session.exitstatus == pytest.ExitCode.OK:
        shutil.rmtree(SUITE_TMP, ignore_errors=True)
        return
    if reporter is not None:
        reporter.write_line(f"the suite's temporary files are kept in {SUITE_TMP}")


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
