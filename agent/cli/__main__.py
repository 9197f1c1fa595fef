"""``python -m agent.cli``: the same as the ``edgewatch`` command."""

from . import main

raise SystemExit(main())
