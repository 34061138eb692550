"""The n8n community node of ``integrations/n8n``, built and packed for the end-to-end tests.

:func:`ensure_node_package` builds the package the way its publisher would: ``npm ci`` (the
pinned TypeScript and ``n8n-workflow`` from the package's lock file), ``npm run build``
(``tsc``), then ``npm pack``. The tarball is unpacked into an extensions folder, so n8n loads
exactly what a user installs (``dist/`` and ``package.json``, no ``node_modules``: n8n lends the
node its own ``n8n-workflow``). Everything lives in the same cache as the n8n install
(:func:`tests.support.n8n.cache_root`), in a folder named after a fingerprint of the package's
sources, lock file and the Node major version: nothing is rebuilt until one of them changes.
The build's ``node_modules`` is removed once packed; npm's own cache keeps a rebuild offline
and fast. A file lock serialises concurrent sessions; a build is staged and renamed into place.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.n8n import N8nUnavailable, _node_version, _npm_env, cache_root, run_npm
from tests.support.processes import REPO

PACKAGE_DIR = REPO / "integrations" / "n8n"
NAME = "n8n-nodes-flexdb"
STAMP = ".flexdb-node.json"
BUILD_TIMEOUT = 600.0
# What the build reads: the manifest, the lock, the compiler settings, the sources and icons.
SOURCE_PATTERNS = (
    "package.json",
    "package-lock.json",
    ".npmrc",
    "tsconfig.json",
    "copy-icons.js",
    "README.md",
    "credentials/**/*.ts",
    "nodes/**/*.ts",
    "nodes/**/*.json",
    "icons/*.svg",
)


@dataclass(frozen=True)
class NodePackage:
    root: Path
    build_seconds: float | None  # how long this process spent building; None when cached

    @property
    def tarball(self) -> Path:
        return self.root / "pack" / f"{NAME}-{self.manifest['version']}.tgz"

    @property
    def extensions_dir(self) -> Path:
        """The folder for ``N8N_CUSTOM_EXTENSIONS``: it holds the unpacked package."""
        return self.root / "extensions"

    @property
    def manifest(self) -> dict[str, Any]:
        return json.loads((self.root / "extensions" / NAME / "package.json").read_text())


def source_files() -> list[Path]:
    files = {path for pattern in SOURCE_PATTERNS for path in PACKAGE_DIR.glob(pattern) if path.is_file()}
    return sorted(files)


def _fingerprint(node_major: int) -> str:
    digest = hashlib.sha256(f"node{node_major}".encode())
    for path in source_files():
        digest.update(str(path.relative_to(PACKAGE_DIR)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def _built(root: Path, fingerprint: str) -> bool:
    try:
        stamp = json.loads((root / STAMP).read_text())
    except (OSError, ValueError):
        return False
    return stamp.get("fingerprint") == fingerprint


def ensure_node_package(log: Any = None) -> NodePackage:
    """The node package built, packed and unpacked into the cache (seconds the first time)."""
    npm = shutil.which("npm")
    if npm is None:
        raise N8nUnavailable("`npm` is not on PATH")
    fingerprint = _fingerprint(_node_version()[0])
    parent = cache_root()
    root = parent / f"{NAME}-{fingerprint[:16]}"
    if _built(root, fingerprint):
        return NodePackage(root, None)
    parent.mkdir(parents=True, exist_ok=True)
    with open(parent / f"{NAME}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _built(root, fingerprint):
            return NodePackage(root, None)
        # Builds of older sources, and stagings an interrupted build left.
        for stale in [*parent.glob(f"{NAME}-*"), *parent.glob(f".{NAME}-*")]:
            if stale.is_dir() and stale != root:
                shutil.rmtree(stale, ignore_errors=True)
        staging = parent / f".{NAME}-{os.getpid()}.staging"
        build = staging / "build"
        for path in source_files():
            target = build / path.relative_to(PACKAGE_DIR)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
        if log:
            log(f"building {NAME} into {root} (npm ci, tsc, npm pack)")
        started = time.monotonic()
        npm_log = staging / "build.log"
        quiet = ["--no-audit", "--no-fund", "--no-progress", "--loglevel=warn"]
        run_npm([npm, "ci", "--prefer-offline", "--ignore-scripts", *quiet], build, npm_log, _npm_env(None), BUILD_TIMEOUT)
        run_npm([npm, "run", "build"], build, npm_log, _npm_env(None), BUILD_TIMEOUT)
        (staging / "pack").mkdir()
        run_npm([npm, "pack", "--pack-destination", str(staging / "pack"), *quiet], build, npm_log, _npm_env(None), BUILD_TIMEOUT)
        (tarball,) = (staging / "pack").glob("*.tgz")
        with tarfile.open(tarball) as packed:
            packed.extractall(staging / "unpacked", filter="data")
        (staging / "extensions").mkdir()
        (staging / "unpacked" / "package").rename(staging / "extensions" / NAME)
        shutil.rmtree(build)  # node_modules: not needed once packed
        shutil.rmtree(staging / "unpacked")
        seconds = round(time.monotonic() - started, 1)
        (staging / STAMP).write_text(
            json.dumps({"fingerprint": fingerprint, "build_seconds": seconds}, indent=2) + "\n"
        )
        if root.exists():
            shutil.rmtree(root)
        staging.rename(root)
        if log:
            log(f"built {NAME} in {seconds} s")
        return NodePackage(root, seconds)
