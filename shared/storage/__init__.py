"""Where archives live."""

from shared.storage.local import LocalStorage

__all__ = ["LocalStorage"]
