"""`python -m reference_server ...`: the same as `capplan serve ...`."""

from __future__ import annotations

from capplan.commands.serve import main

if __name__ == "__main__":
    main()
