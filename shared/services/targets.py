"""Named targets from settings, and connection checks through their engines."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from shared.core.errors import ConfigurationError, TargetNotFound, ValidationFailed
from shared.core.redaction import register_secret
from shared.core.settings import Settings, Target
from shared.domain.engine import ServerInfo
from shared.engines import engine_for, engine_names, unavailable_reason


@dataclass(frozen=True)
class TargetView:
    """A target as people may see it: masked URI, engine availability."""

    name: str
    engine: str
    uri: str
    engine_available: bool
    engine_unavailable_reason: str | None


class TargetService:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings

    def all(self) -> list[Target]:
        return [self._settings.targets[name] for name in sorted(self._settings.targets)]

    def get(self, name: str) -> Target:
        try:
            return self._settings.targets[name]
        except KeyError:
            known = ", ".join(sorted(self._settings.targets)) or "none are configured (set FLEXDB_TARGETS)"
            raise TargetNotFound(f"No target named {name!r}. Known targets: {known}.") from None

    def view(self, target: Target) -> TargetView:
        reason = unavailable_reason(target.engine)
        return TargetView(target.name, target.engine, target.masked_uri, reason is None, reason)

    def check(self, name: str) -> ServerInfo:
        target = self.get(name)
        return engine_for(target.engine, self._settings).probe(target)

    def check_connection(self, engine: str, uri: str) -> ServerInfo:
        """Try an ad-hoc connection (not a configured target)."""
        if engine not in engine_names():
            raise ValidationFailed(
                f"Unknown engine {engine!r}.",
                errors=[{"pointer": "/engine", "detail": f"must be one of {', '.join(engine_names())}"}],
            )
        # The password may appear in driver messages: mask it from here on.
        register_secret(urlsplit(uri).password)
        try:
            return engine_for(engine, self._settings).probe(Target("adhoc", engine, uri))
        except ConfigurationError as exc:
            # An unusable URI is a configuration error for a configured target; here it is
            # the caller's own input.
            raise ValidationFailed(exc.message, errors=[{"pointer": "/uri", "detail": exc.message}]) from None
