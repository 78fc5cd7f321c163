"""``python -m rtgenre``: the same entry point as the ``rtgenre`` console script."""

from rtgenre.cli import main

raise SystemExit(main())
