"""Objects named in the config by import path ('package.module:name'): reward functions, environments, tools."""

from __future__ import annotations

import importlib
import os
import sys
from types import ModuleType


def import_module_of(path: str, key: str, kind: str) -> tuple[ModuleType, str]:
    """(module, attribute name) of ``path``; errors name the config ``key``, the path and what is wrong
    (``kind`` is what the name should be: 'function', 'name'). Modules are found from the working
    directory too, as `python -m` finds them (the `rlhf-ray` script's own sys.path starts at its bin/
    folder instead)."""
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise ValueError(f"{key}={path!r} must look like 'package.module:{kind}'")
    if os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())
    try:
        return importlib.import_module(module_name), attr
    except ImportError as e:
        raise ValueError(f"{key}={path!r}: cannot import module {module_name!r} ({e})") from None
