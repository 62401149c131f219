"""``python -m rope_behavior.cli``."""

from rope_behavior.cli.app import main

if __name__ == "__main__":
    raise SystemExit(main())
