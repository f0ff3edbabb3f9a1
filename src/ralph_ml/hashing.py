"""SHA-256 of frozen files, shared by the workspace (before a trial) and executors (after it).

A frozen file is one the agent must not change (``prepare.py``, the evaluation code). The
workspace hashes them before a trial; the executor hashes them again after ``train_cmd``
and refuses to run ``eval_cmd`` when any hash differs.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Iterable, Mapping

MISSING = "missing"  # the hash recorded for a file that does not exist (or is not a regular file)
_CHUNK_BYTES = 1 << 20  # files are hashed in 1 MiB reads: a large frozen file never sits in memory


def hash_file(path: Path) -> str:
    """Hex SHA-256 of ``path``, or ``"missing"`` when it is absent or not a regular file."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            while chunk := fh.read(_CHUNK_BYTES):
                digest.update(chunk)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return MISSING
    return digest.hexdigest()


def hash_files(root: Path, names: Iterable[str]) -> dict[str, str]:
    """Map each relative name to the hex SHA-256 of ``root / name`` (``"missing"`` if absent)."""
    root = Path(root)
    return {name: hash_file(root / name) for name in names}


def changed_files(root: Path, expected: Mapping[str, str]) -> list[str]:
    """Names in ``expected`` whose current hash under ``root`` differs, in sorted order."""
    current = hash_files(root, expected)
    return sorted(name for name, digest in expected.items() if current[name] != digest)
