"""tlsinspector: a transparent man-in-the-middle TLS inspector and fault injector.

Everything installed lives under this one name: ``tlsinspector.proxy`` (the
sans-io core), ``tlsinspector.addons`` (mitmproxy glue), ``tlsinspector.lab``
(real peers for experiments) and the shipped scenarios in
``tlsinspector/configs``. In the source tree those are the top-level folders
proxy/, addons/, lab/ and configs/; tlsinspector/ links to them.
"""

__version__ = "0.2.0"

from pathlib import Path

PACKAGE = Path(__file__).parent
#: The shipped scenario files (configs/ in the source tree).
CONFIGS = PACKAGE / "configs"
#: The addon file for ``mitmdump -s`` (``tlsinspector addon-path`` prints it).
ADDON = PACKAGE / "addons" / "inspector.py"
