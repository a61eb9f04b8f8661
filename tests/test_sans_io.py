"""The sans-io line (DESIGN.md "Architecture" 1): proxy/ imports no I/O framework.

Every module in proxy/ is read with ast and every import in it, at module level
or inside a function, is checked against the modules the core must not use;
then all of proxy/ is imported in a fresh interpreter to catch anything pulled
in indirectly.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PROXY = Path(__file__).resolve().parent.parent / "proxy"
BANNED = ("mitmproxy", "asyncio", "uvloop", "socket", "selectors", "ssl", "subprocess",
          "threading", "tlsinspector.addons", "tlsinspector.lab", "tlsinspector.cli")
# Modules allowed to break the rule, each with the reason. Empty: the JSONL file
# writer is on the I/O side (addons/logfile.py, issue 12).
ALLOWED: dict[str, str] = {}
# What may be loaded indirectly: cryptography.x509 imports email.utils, which imports
# socket (for getfqdn) at module level. The core itself never uses them (the ast walk
# above checks that); frameworks and the I/O side stay banned transitively too.
INDIRECT_OK = ("socket", "selectors")


def imports_of(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
            found += [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
    return found


def banned(name: str) -> bool:
    return any(name == b or name.startswith(b + ".") for b in BANNED)


def test_no_module_in_proxy_imports_io_frameworks_or_the_io_side() -> None:
    modules = sorted(PROXY.glob("*.py"))
    assert len(modules) >= 15
    bad = [f"{p.name}:{line}: imports {name}" for p in modules if p.stem not in ALLOWED
           for line, name in imports_of(p) if banned(name)]
    assert bad == [], "proxy/ must stay sans-io:\n" + "\n".join(bad)


def test_the_walk_catches_a_planted_import(tmp_path: Path) -> None:
    planted = tmp_path / "planted.py"
    planted.write_text("def f():\n    from mitmproxy.proxy import layer\n"
                       "import tlsinspector.lab.servers\n")
    assert sorted(n for _, n in imports_of(planted) if banned(n)) == [
        "mitmproxy.proxy", "mitmproxy.proxy.layer", "tlsinspector.lab.servers"]


def test_importing_all_of_proxy_loads_none_of_them() -> None:
    names = [p.stem for p in sorted(PROXY.glob("*.py")) if p.stem != "__init__"]
    code = ("import sys\n"
            + "".join(f"import tlsinspector.proxy.{n}\n" for n in names)
            + f"print('\\n'.join(sorted(m for m in sys.modules if any(m == b or "
              f"m.startswith(b + '.') for b in "
              f"{tuple(b for b in BANNED if b not in INDIRECT_OK)!r}))))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True)
    assert res.stdout.split() == []
