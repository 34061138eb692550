from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from pathlib import Path

from shared.core.settings import ENV_PREFIX, Settings

REPO = Path(__file__).resolve().parents[2]


class RecordingEnv(Mapping[str, str]):
    """An empty environment that remembers every variable the settings asked for."""

    def __init__(self) -> None:
        self.asked: set[str] = set()

    def __getitem__(self, key: str) -> str:
        self.asked.add(key)
        raise KeyError(key)

    def get(self, key, default=None):  # type: ignore[override]
        self.asked.add(key)
        return default

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


def test_every_setting_is_documented_in_env_example() -> None:
    env = RecordingEnv()
    Settings.from_env(env)
    documented = set(re.findall(r"^(FLEXDB_[A-Z0-9_]+)=", (REPO / ".env.example").read_text(), re.M))
    read = {name for name in env.asked if name.startswith(ENV_PREFIX)} | {"FLEXDB_ENV_FILE"}
    assert read - documented == set(), "add these to .env.example"
    assert len(read) > 20
