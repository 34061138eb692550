"""The engine registry (Factory): engine modules register their class under its name.

An engine whose driver or tool is missing stays registered but reports itself unavailable, so
one missing dependency disables one engine instead of breaking start-up.
"""

from __future__ import annotations

from shared.core.errors import EngineUnavailable
from shared.core.settings import Settings
from shared.domain.engine import BackupEngine

_engines: dict[str, type[BackupEngine]] = {}
_broken: dict[str, str] = {}


def register(engine_cls: type[BackupEngine]) -> type[BackupEngine]:
    """Class decorator: make ``engine_cls`` answer to its ``name``."""
    _engines[engine_cls.name] = engine_cls
    return engine_cls


def register_broken(name: str, reason: str) -> None:
    """Record an engine whose module could not even be imported."""
    _broken[name] = reason


def engine_names() -> list[str]:
    return sorted({*_engines, *_broken})


def unavailable_reason(name: str) -> str | None:
    if name in _engines:
        return _engines[name].unavailable_reason()
    if name in _broken:
        return _broken[name]
    return f"unknown engine {name!r}; known engines: {', '.join(engine_names()) or 'none'}"


def engine_class(name: str) -> type[BackupEngine]:
    """The registered class, even when it cannot run here (for option checks at submit)."""
    if name not in _engines:
        raise EngineUnavailable(f"Engine {name!r} cannot run here: {unavailable_reason(name)}")
    return _engines[name]


def engine_for(name: str, settings: Settings) -> BackupEngine:
    reason = unavailable_reason(name)
    if reason is not None:
        raise EngineUnavailable(f"Engine {name!r} cannot run here: {reason}")
    return _engines[name](settings)
