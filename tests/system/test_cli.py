"""The command line as the installed program sees it: usage errors are one
line and exit 3, --help and --version; the parsing itself is in tests/unit."""

from __future__ import annotations

import subprocess
from typing import List, Sequence

import pytest

from msmtpd import __version__
from msmtpd.commands.cli import HELP_TEXT
from tests.helpers import program


@pytest.mark.parametrize("args", [["--timeout=1e10"], ["--command-timeout=1e10"],
                                  ["--max-sessions=100000000"], ["--max-size=" + "9" * 400],
                                  ["--port=99999999999999999999"]])
@pytest.mark.parametrize("mode", [[], ["--inetd"]])
def test_huge_values_are_one_line_and_exit_3_from_the_program(args: List[str], mode: List[str]) -> None:
    result = run_msmtpd([*mode, *args])
    assert result.returncode == 3
    assert result.stdout == ""
    assert result.stderr.startswith("msmtpd: invalid ") and len(result.stderr.splitlines()) == 1
    assert len(result.stderr) < 200


def run_msmtpd(args: Sequence[str]) -> subprocess.CompletedProcess[str]:
    """Run the installed console script (never the pyenv shim nor the C original)."""
    return subprocess.run([program("msmtpd"), *args], stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=30)


@pytest.mark.parametrize(
    "argv",
    [
        ["--bogus"], ["surplus"], ["--in"], ["--port="], ["--port=0"], ["--port=65536"], ["--port=abc"],
        ["--interface=not-an-ip"], ["--timeout=abc"], ["--timeout=0"], ["--command="],
    ],
)
def test_usage_errors_from_the_installed_program(argv: List[str]) -> None:
    """The real program: exit 3, exactly one ``msmtpd: `` line on stderr, nothing on stdout, no traceback."""
    result = run_msmtpd(argv)
    assert result.returncode == 3
    assert result.stdout == ""
    assert result.stderr.startswith("msmtpd: ")
    assert len(result.stderr.splitlines()) == 1
    assert "Traceback" not in result.stderr


OPTIONS = ["--version", "--help", "--inetd", "--interface", "--port", "--log", "--command", "--auth",
           "--timeout", "--command-timeout", "--max-size", "--max-sessions", "--daemon", "--pidfile",
           "--user", "--spool-dir", "--shell-safe-addresses", "--tls-cert", "--tls-key", "--tls-implicit",
           "--tls-required", "--idle-exit", "--spare-workers", "--auth-file", "--allow", "--check"]


def test_help_lists_every_option_and_its_default() -> None:
    """--help exits 0 and lists each option with its default."""
    result = run_msmtpd(["--help"])
    assert result.returncode == 0
    assert result.stderr == ""
    text = result.stdout
    assert text == HELP_TEXT
    for option in OPTIONS:
        assert option in text, option
    for default in ("(default 127.0.0.1)", "(default 25)", "(default 'msmtp -f %F --')", "(default 300)",
                    "(default 0)", "(default 16)", "no logging (default)"):
        assert default in text, default
    assert text.count("(default 300)") == 2


def test_version() -> None:
    """--version prints ``msmtpd version X`` and a licence line, and exits 0."""
    result = run_msmtpd(["--version"])
    assert result.returncode == 0
    assert result.stderr == ""
    first, *rest = result.stdout.splitlines()
    assert first == f"msmtpd version {__version__}"
    assert any(line.startswith("License ") or "licence" in line.lower() for line in rest)


def test_python_m_msmtpd_version() -> None:
    """``python -m msmtpd --version`` works like the console script."""
    import sys

    result = subprocess.run([sys.executable, "-m", "msmtpd", "--version"], capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 0
    assert result.stdout.startswith(f"msmtpd version {__version__}\n")
