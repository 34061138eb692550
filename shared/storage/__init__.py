"""Where archives live: one catalog (:mod:`shared.storage.catalog`) over a blob store chosen
by the URL in ``FLEXDB_STORAGE_URL``."""

from shared.storage.catalog import BlobCatalog
from shared.storage.local import LocalBlobStore, LocalStorage
from shared.storage.memory import MemoryBlobStore

__all__ = ["BlobCatalog", "LocalBlobStore", "LocalStorage", "MemoryBlobStore"]
