"""Allow ``python -m msmtpd``."""

from msmtpd.cli import main

raise SystemExit(main())
