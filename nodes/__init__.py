"""ComfyUI nodes: thin adapters over joygen_core, one module per stage.

Every module in this package (except the ComfyUI adapter ``comfy``) may define
``NODE_CLASS_MAPPINGS`` / ``NODE_DISPLAY_NAME_MAPPINGS``; they are collected here. A module that
fails to import is logged once and does not take the other nodes down.
"""

from __future__ import annotations

import importlib
import logging
import pkgutil

log = logging.getLogger(__name__)

NODE_CLASS_MAPPINGS: dict[str, type] = {}
NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {}
IMPORT_ERRORS: dict[str, str] = {}

for _info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if _info.name.startswith("_") or _info.name == "comfy":
        continue
    try:
        _mod = importlib.import_module(f"{__name__}.{_info.name}")
    except Exception as exc:  # one broken module must not hide the others
        IMPORT_ERRORS[_info.name] = repr(exc)
        log.exception("JoyGen: node module %s failed to import; its nodes are unavailable", _info.name)
        continue
    NODE_CLASS_MAPPINGS.update(getattr(_mod, "NODE_CLASS_MAPPINGS", {}))
    NODE_DISPLAY_NAME_MAPPINGS.update(getattr(_mod, "NODE_DISPLAY_NAME_MAPPINGS", {}))
