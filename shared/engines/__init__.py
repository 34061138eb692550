"""Engines, one module per database kind. Importing this package fills the registry."""

from __future__ import annotations

import importlib

from shared.engines.registry import engine_class, engine_for, engine_names, register_broken, unavailable_reason

# engine name -> module; a module that fails to import disables only its engine.
_ENGINE_MODULES = {"postgresql": "shared.engines.postgresql", "mongodb": "shared.engines.mongodb"}

for _name, _module in _ENGINE_MODULES.items():
    try:
        importlib.import_module(_module)
    except ImportError as _exc:  # a driver is not installed in this image
        register_broken(_name, f"driver not installed ({_exc.name or _exc})")

__all__ = ["engine_class", "engine_for", "engine_names", "unavailable_reason"]
