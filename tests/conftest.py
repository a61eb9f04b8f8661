"""Shared fixtures: the real-peer harness's certificates."""

from tests.peers.fixtures import certs  # noqa: F401
