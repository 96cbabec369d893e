"""Allow ``python -m msmtpd``."""

from msmtpd.commands.cli import main

raise SystemExit(main())
