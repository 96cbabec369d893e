"""The exit statuses of msmtpd and msmtpd-maildir, one name for each.

Init scripts, systemd, inetd and mail programs read these numbers, so each
has one meaning everywhere: 3 is LSB's "program is not running" (a usage or
start-up error, and a worker or queue runner that could not start, on which
the master halts); 64 and 75 are sysexits.h's, which mail programs know.
"""

EXIT_OK = 0
# An --inetd session that did not end with QUIT, a failed --check, a queue
# runner that stopped on an error.
EXIT_FAILURE = 1
EXIT_NOT_RUNNING = 3  # LSB: program is not running
EXIT_USAGE = 64  # EX_USAGE: msmtpd-maildir's command line is wrong
EXIT_TEMPFAIL = 75  # EX_TEMPFAIL: try again later (mails remain queued; the disk said no)
