"""The process title ``ps`` shows (``msmtpd: worker idle``), through
setproctitle's C module alone.

The package's ``__init__`` imports ``logging`` for a debug message: some
18 ms of the master's start and 1.2 MB of memory in every process of the
pool, for a title.  The C extension is loaded straight from the package's
directory instead, and the package is imported the ordinary way only when
that fails (an unusual installation).
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False  # typing at run time costs every process some 1.6 MB and 3 ms; annotations are strings
if TYPE_CHECKING:
    from typing import Callable, Optional

_setter: Optional[Callable[[str], None]] = None


def _load() -> Callable[[str], None]:
    name = "setproctitle._setproctitle"
    module = sys.modules.get(name)
    if module is None:
        try:
            # importlib.machinery, not importlib.util: util imports contextlib
            # and more, some 170 KB in the master that every worker shares.
            from importlib.machinery import EXTENSION_SUFFIXES, ExtensionFileLoader, ModuleSpec, PathFinder

            package = PathFinder.find_spec("setproctitle")  # finds it without running __init__
            for directory in (package.submodule_search_locations or []) if package else []:
                for suffix in EXTENSION_SUFFIXES:
                    path = os.path.join(directory, "_setproctitle" + suffix)
                    if os.path.exists(path):
                        loader = ExtensionFileLoader(name, path)
                        module = loader.create_module(ModuleSpec(name, loader, origin=path))
                        loader.exec_module(module)
                        sys.modules[name] = module
                        break
                if module is not None:
                    break
        except (ImportError, OSError, ValueError):
            module = None
    if module is None:
        from setproctitle import setproctitle

        return setproctitle
    setter: Callable[[str], None] = module.setproctitle
    return setter


def set_title(text: str) -> None:
    """``msmtpd: <text>`` as the process title."""
    global _setter
    if _setter is None:
        _setter = _load()
    _setter(f"msmtpd: {text}")
