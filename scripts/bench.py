#!/usr/bin/env python3
"""Side-by-side benchmark of this msmtpd and the C msmtpd: the entry point.
The loads, the options and how each row is measured: benchkit/bench/."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.realpath(__file__))))

from benchkit.bench.main import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
