#!/usr/bin/env python3
"""Load msmtpd and check that every acknowledged mail arrived exactly once:
the entry point, and the tool's own delivery command (``--store``), run
once per mail, so it imports nothing but os, sys and benchkit/load/store.py
on that path.  The options and the check: benchkit/load/."""

import os
import sys

# The repository's root, where benchkit is (the delivery command runs with -I).
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.realpath(__file__))))

if __name__ == "__main__" and sys.argv[1:2] == ["--store"]:
    from benchkit.load.store import store_main

    sys.exit(store_main(sys.argv[2:]))

from benchkit.load.main import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
