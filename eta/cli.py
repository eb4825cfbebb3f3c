"""Where the `eta` command used to live: kept so that `python -m eta.cli` and `from eta.cli import main` keep
working. The command line is eta/commands/ (the group: eta.commands.main)."""

from __future__ import annotations

from eta.commands.main import main

__all__ = ["main"]

if __name__ == "__main__":
    main()
