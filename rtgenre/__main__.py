"""``python -m rtgenre``: the same entry point as the ``rtgenre`` console script."""

from rtgenre.cli import main

if __name__ == "__main__":  # not when a --processes worker imports it
    raise SystemExit(main())
