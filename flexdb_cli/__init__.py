"""The ``flexdb`` command line: the service's HTTP API from a shell, on any machine.

Layers, imports pointing down only: ``main`` (click commands) -> ``watch`` and ``output``
(following a job, printing) -> ``client`` (one method per API route) -> requests. Nothing here
imports the service's own packages: the command needs the API's URL, not its code.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("flexdb")
except PackageNotFoundError:  # run from a checkout that was never installed
    __version__ = "unknown"
