"""The manifest of an embedding directory (``DIR/manifest.json``, :mod:`pipeline.search.embeddings`),
read without torch or faiss, so a command can refuse a directory that is none before loading."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from itmflow.errors import InputFileError

FORMAT = "itmflow.embeddings"
MANIFEST_NAME = "manifest.json"


def read_embedding_manifest(path: str | os.PathLike[str]) -> dict[str, Any]:
    """``DIR/manifest.json`` of the embedding directory ``path``, with its format checked."""
    d = Path(path)
    mpath = d / MANIFEST_NAME
    if not mpath.is_file():
        raise InputFileError(f"{d} is not an embedding directory (no {MANIFEST_NAME}); create "
                             "one with `itmflow embed RUN --regions STORE --out DIR`")
    try:
        manifest = json.loads(mpath.read_text("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputFileError(f"{mpath} cannot be read ({exc}); re-run `itmflow embed`") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else None
        raise InputFileError(f"{mpath}: format is {found!r}, expected {FORMAT!r}")
    return manifest


__all__ = ["FORMAT", "MANIFEST_NAME", "read_embedding_manifest"]
