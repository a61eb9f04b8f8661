"""Experiments with real TLS stacks: built-in servers and clients (see lab/peers.py).

Used by `tlsinspector reproduce` and `matrix`, and by the test suite. Every
process is started by handle with a timeout and stopped by the same handle.
"""
