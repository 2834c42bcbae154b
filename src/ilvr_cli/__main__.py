"""``python -m ilvr_cli`` is the same as the ``ilvr`` console script."""

from ilvr_cli.cli.app import main

if __name__ == "__main__":
    main()
