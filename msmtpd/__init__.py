"""msmtpd: a small local SMTP server that pipes each mail to a command."""

__version__ = "0.1.0"
