"""Build step beside pyproject.toml (which holds everything else): compile
proxy/scan.py, the tight loop of `analyze`'s capture runs, with mypyc into the
C extension ``tlsinspector.proxy.scan`` (issue 16: about 5x on that loop).

The same file is the pure-Python module where it is not compiled: with
TLSINSPECTOR_PURE=1, or when mypyc or a C compiler is missing (a one-line
notice says so and the install goes on). ``tlsinspector.proxy.scan.COMPILED``
tells which one a Python imports.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from setuptools import setup
from setuptools.command.build_ext import build_ext

MODULE = "tlsinspector/proxy/scan.py"   # mypyc names it by its path: tlsinspector.proxy.scan


def _notice(why: str) -> None:
    print(f"tlsinspector: {why}; installing proxy/scan.py as pure Python "
          "(analyze runs slower)", file=sys.stderr)


class _OptionalBuildExt(build_ext):
    """A failed compile (no gcc, no Python headers) is a notice, not a failed install.
    All or nothing: mypyc makes two extensions (the module and its runtime library),
    and one without the other would not import, so what did build is removed."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as e:   # distutils raises its own error classes per platform
            for path in self.get_outputs():
                if os.path.exists(path):
                    os.remove(path)
            _notice(f"the C extension did not build ({type(e).__name__})")


def _ext_modules() -> list[Any]:
    if os.environ.get("TLSINSPECTOR_PURE") == "1":
        _notice("TLSINSPECTOR_PURE=1")
        return []
    try:
        from mypyc.build import mypycify
    except ImportError:
        _notice("mypyc is not installed")
        return []
    return list(mypycify([MODULE], opt_level="3"))


setup(ext_modules=_ext_modules(), cmdclass={"build_ext": _OptionalBuildExt})
