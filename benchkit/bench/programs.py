"""The programs the benchmark starts: ours (the console script next to
this Python), the C msmtpd, the floor (this Python doing nothing), and the
delivery command both servers run; with the checks that keep the floor
honest (the interpreter ours runs on, the bytecode cache)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Optional

C_MSMTPD = "/usr/bin/msmtpd"
PYTHON = sys.executable  # the interpreter itself, never a shim found on PATH
OURS = str(Path(PYTHON).parent / "msmtpd")
FLOOR = "python -c pass"  # the name of the floor's column and samples
DISCARD_C = r"""
#include <unistd.h>
int main(void) { char buf[65536]; while (read(0, buf, sizeof buf) > 0) {} return 0; }
"""


def build_discard(directory: Path) -> str:
    """The delivery command: reads the whole mail and discards it, ignoring
    its arguments.  Compiled, so that it costs both servers the same."""
    source = directory / "discard.c"
    binary = directory / "discard"
    source.write_text(DISCARD_C)
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler and subprocess.run([compiler, "-O2", "-o", str(binary), str(source)]).returncode == 0:
        return str(binary)
    script = directory / "discard.sh"
    script.write_text("#!/bin/sh\nexec cat >/dev/null\n")
    script.chmod(0o755)
    return str(script)


def shebang_interpreter(script: str) -> Optional[str]:
    """The interpreter a console script's #! line names, if it has one."""
    try:
        with open(script, "rb") as file:
            first = file.readline(4096)
    except OSError:
        return None
    if not first.startswith(b"#!"):
        return None
    words = first[2:].decode(errors="replace").split()
    return words[0] if words else None


def check_interpreter(ours: str) -> None:
    """The floor only means something if ours runs on the interpreter that
    the floor times: say so when the console script names another one."""
    named = shebang_interpreter(ours)
    if named is None:
        print(f"note: {ours} has no #! line; the floor is timed with {PYTHON}")
    elif os.path.realpath(named) != os.path.realpath(PYTHON):
        print(f"note: {ours} runs {named}, but the floor is timed with {PYTHON}")


def use_bytecode_cache(directory: Path) -> None:
    """Let every Python this benchmark starts read and write compiled
    bytecode in ``directory``.  An installed package comes byte-compiled,
    but with PYTHONDONTWRITEBYTECODE set (as on this project's machine) a
    source tree never gets a __pycache__, and each start would compile
    msmtpd's modules again (some 20 ms).  Set in our own environment, it is
    inherited by every child; the tree itself is left alone."""
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    os.environ["PYTHONPYCACHEPREFIX"] = str(directory)
