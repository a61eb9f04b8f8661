"""``python -m tlsinspector``: the same as the ``tlsinspector`` command."""

from tlsinspector.cli import main

raise SystemExit(main())
