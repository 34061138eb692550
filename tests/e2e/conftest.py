"""Fixtures shared by the end-to-end tests that run real n8n."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.support.n8n import N8nInstall, N8nUnavailable, ensure_n8n
from tests.support.n8n_node import NodePackage, ensure_node_package


@pytest.fixture(scope="session")
def announce(request: pytest.FixtureRequest) -> Callable[[str], None]:
    """Prints past pytest's capture: a first install takes minutes and should say so."""
    capture = request.config.pluginmanager.getplugin("capturemanager")

    def say(message: str) -> None:
        with capture.global_and_fixture_disabled():
            print(f"\n[n8n] {message}", flush=True)

    return say


@pytest.fixture(scope="session")
def n8n_install(announce: Callable[[str], None]) -> N8nInstall:
    try:
        return ensure_n8n(log=announce)
    except N8nUnavailable as exc:
        pytest.skip(f"n8n cannot run here: {exc}")


@pytest.fixture(scope="session")
def flexdb_node_package(n8n_install: N8nInstall, announce: Callable[[str], None]) -> NodePackage:
    """The community node of integrations/n8n, built and packed (skipped where n8n cannot run)."""
    return ensure_node_package(log=announce)
