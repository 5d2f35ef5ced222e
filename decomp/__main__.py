"""``python -m decomp``: the same as the ``decomp`` console command."""

from decomp.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
