"""The programs the benchmark starts: ours (the console script next to
this Python), the C msmtpd, aiosmtpd (the Python peer, a script beside
this module), the floor (this Python doing nothing), and the delivery
commands every server runs: a /bin/sh script (the default, as users'
commands are scripts and real programs) and a compiled sink (the lightest
case, which older figures used); with the checks that keep the floor
honest (the interpreter ours runs on, its .pth files, the bytecode cache)."""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
from pathlib import Path
from typing import List, Optional

C_MSMTPD = "/usr/bin/msmtpd"
PYTHON = sys.executable  # the interpreter itself, never a shim found on PATH
OURS = str(Path(PYTHON).parent / "msmtpd")
AIOSMTPD = "aiosmtpd"  # the Python peer's name in the tables
AIOSMTPD_SERVER = str(Path(__file__).with_name("aiosmtpd_server.py"))
FLOOR = "python -c pass"  # the name of the floor's column and samples
SETUPTOOLS_PTH = "distutils-precedence.pth"  # a .pth with an import line that every venv has
SCRIPT_COMMAND = "#!/bin/sh\nexec cat >/dev/null\n"  # the default delivery command, as issue 22 gives it
DISCARD_C = r"""
#include <unistd.h>
int main(void) { char buf[65536]; while (read(0, buf, sizeof buf) > 0) {} return 0; }
"""


def write_script_command(directory: Path) -> str:
    """The default delivery command: a /bin/sh script that reads the whole
    mail and discards it, ignoring its arguments (the kernel runs /bin/sh,
    which execs cat)."""
    script = directory / "deliver.sh"
    script.write_text(SCRIPT_COMMAND)
    script.chmod(0o755)
    return str(script)


def build_discard(directory: Path) -> str:
    """The compiled sink (--command-kind=sink, and the row of its own):
    reads the whole mail and discards it, ignoring its arguments; the
    lightest command there is.  The script when no C compiler is found."""
    source = directory / "discard.c"
    binary = directory / "discard"
    source.write_text(DISCARD_C)
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler and subprocess.run([compiler, "-O2", "-o", str(binary), str(source)]).returncode == 0:
        return str(binary)
    return write_script_command(directory)


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


def interpreter_notes() -> List[str]:
    """What makes this interpreter's floor (and every Python start) heavier
    than a clean virtualenv's: not being a virtualenv (a base interpreter
    may carry packages and hooks of the machine's), and .pth files in its
    site-packages with an ``import`` line, which run at every start."""
    notes = []
    if sys.prefix == sys.base_prefix:
        notes.append(f"note: {PYTHON} is not a virtualenv's interpreter: measure with one "
                     "(python3 -m venv /tmp/venv && /tmp/venv/bin/pip install -e '.[test]' && "
                     "/tmp/venv/bin/python scripts/bench.py); rows 4 and 7 depend on it")
    directories = list(site.getsitepackages())
    if site.ENABLE_USER_SITE:
        directories.append(site.getusersitepackages())
    for directory in directories:
        for pth in sorted(Path(directory).glob("*.pth")):
            try:
                lines = pth.read_text(errors="replace").splitlines()
            except OSError:
                continue
            imports = [line for line in lines if line.startswith(("import ", "import\t"))]
            if pth.name == SETUPTOOLS_PTH:
                notes.append(f"note: {pth} (setuptools' own, in most virtualenvs) imports the small "
                             "_distutils_hack at every start")
            elif imports:
                notes.append(f"note: {pth} has an import line: it runs at every start of this "
                             "interpreter, which raises the floor of rows 4 and 7")
    return notes
