"""Named targets from settings, and connection checks through their engines."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from urllib.parse import urlsplit

from shared.core.errors import ConfigurationError, FlexDBError, HostNotAllowed, TargetNotFound, ValidationFailed
from shared.core.hosts import HostAllowList, never_contacted, parse_address
from shared.core.logs import get_logger
from shared.core.redaction import register_secret, uri_secrets
from shared.core.settings import Settings, Target
from shared.domain.engine import ConnectionAddress, ServerInfo
from shared.engines import engine_class, engine_for, engine_names, unavailable_reason

log = get_logger(__name__)
ALLOWED_HOSTS_SETTING = "FLEXDB_CHECK_ALLOWED_HOSTS"


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

    def backup_options(self, target: Target, options: Mapping[str, object] | None) -> dict[str, object]:
        """A backup's options checked and normalised at submit, with the limits the settings set."""
        return engine_class(target.engine).validate_options("backup", options or {}, self._settings)

    def view(self, target: Target) -> TargetView:
        reason = unavailable_reason(target.engine)
        return TargetView(target.name, target.engine, target.masked_uri, reason is None, reason)

    def check(self, name: str) -> ServerInfo:
        target = self.get(name)
        return engine_for(target.engine, self._settings).probe(target)

    def check_connection(self, engine: str, uri: str) -> ServerInfo:
        """Try an ad-hoc connection (not a configured target): only to an allowed host, and only
        with URI options that cannot send the driver elsewhere or make it read local files."""
        if engine not in engine_names():
            raise ValidationFailed(
                f"Unknown engine {engine!r}.",
                errors=[{"pointer": "/engine", "detail": f"must be one of {', '.join(engine_names())}"}],
            )
        # The password may appear in driver messages: mask it from here on.
        for secret in uri_secrets(uri):
            register_secret(secret)
        engine_cls = engine_class(engine)
        address = engine_cls.connection_address(uri)
        _refuse_options_not_accepted(address, engine_cls.adhoc_uri_options)
        if address.sockets or not address.hosts:
            detail = "give a network host (local sockets are not checked ad hoc)"
            raise ValidationFailed(f"The URI names no network host: {detail}.", errors=[{"pointer": "/uri", "detail": detail}])
        self._refuse_hosts_not_allowed(address)
        try:
            return engine_for(engine, self._settings).probe(Target("adhoc", engine, uri))
        except ConfigurationError as exc:
            # An unusable URI is a configuration error for a configured target; here it is
            # the caller's own input.
            raise ValidationFailed(exc.message, errors=[{"pointer": "/uri", "detail": exc.message}]) from None

    # ------------------------------------------------------------------ the host allow-list

    @cached_property
    def allowed_check_hosts(self) -> HostAllowList:
        """FLEXDB_CHECK_ALLOWED_HOSTS, or when it is empty the hosts of the configured targets."""
        if not self._settings.check_allowed_hosts.empty:
            return self._settings.check_allowed_hosts
        names: set[str] = set()
        networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for target in self.all():
            for host in _target_hosts(target):
                address = parse_address(host)
                if address is None:
                    names.add(host.lower().rstrip("."))
                else:
                    networks.append(ipaddress.ip_network(address))
        return HostAllowList(frozenset(names), tuple(networks))

    def _refuse_hosts_not_allowed(self, address: ConnectionAddress) -> None:
        allowed = self.allowed_check_hosts
        for host in address.hosts:
            if not _host_admitted(allowed, host):
                # ascii(): the host is the caller's text, which may hold anything (lone surrogates)
                log.warning("connection_check.host_refused", host=ascii(host))
                literal = parse_address(host)
                if literal is not None and never_contacted(literal):
                    raise HostNotAllowed(
                        f"{host!r} is a link-local or cloud-metadata address, which connection checks never go to."
                    )
                raise HostNotAllowed(
                    f"Connection checks may only go to the hosts in {ALLOWED_HOSTS_SETTING} (when it is empty: "
                    f"the hosts of the configured targets); {host!r} is not one of them. Add it to "
                    f"{ALLOWED_HOSTS_SETTING} (comma-separated host names and CIDR networks) to check it."
                )


def _refuse_options_not_accepted(address: ConnectionAddress, accepted: Mapping[str, frozenset[str] | None]) -> None:
    problems = []
    for name in sorted(address.options):
        values = accepted.get(name)
        if name not in accepted:
            problems.append(f"{name} is not accepted")
        elif values is not None and address.options[name] not in values:
            problems.append(f"{name} may only be {', '.join(sorted(values))}")
    if problems:
        detail = "; ".join(problems) + f" (options accepted here: {', '.join(sorted(accepted)) or 'none'})"
        raise ValidationFailed(
            f"The URI sets options that may change where or how the driver connects: {detail}. Declare the "
            "connection as a target in FLEXDB_TARGETS to use them.",
            errors=[{"pointer": "/uri", "detail": detail}],
        )


def _target_hosts(target: Target) -> tuple[str, ...]:
    try:
        return engine_class(target.engine).connection_address(target.uri).hosts
    except FlexDBError:  # a URI ad-hoc checks would refuse (e.g. mongodb+srv): its written host
        host = urlsplit(target.uri).hostname
        return (host,) if host else ()


def _host_admitted(allowed: HostAllowList, host: str) -> bool:
    """A name is admitted by name, or when every address it resolves to is in an allowed
    network; an address when it is in one. Link-local and cloud-metadata addresses never are."""
    address = parse_address(host)
    if address is not None:
        return not never_contacted(address) and allowed.admits_address(address)
    if allowed.admits_name(host):
        return True
    if not allowed.networks:
        return False  # no need to ask DNS
    try:
        found = {parse_address(info[4][0]) for info in socket.getaddrinfo(host, None, 0, socket.SOCK_STREAM)}
    except (OSError, UnicodeError):
        return False
    return bool(found) and all(a is not None and not never_contacted(a) and allowed.admits_address(a) for a in found)
