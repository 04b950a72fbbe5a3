"""The region store manifest: the only truth readers trust (what is committed, with which settings)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from itmflow.errors import SchemaVersionError, StoreCorruptError, StoreError
from itmflow.files import atomic_write_json
from itmflow.provenance import provenance
from stores.schema import DATA_DIR, FORMAT, MANIFEST_NAME, SCHEMA_VERSION, StoreSettings


def manifest_path(store: str | os.PathLike[str]) -> Path:
    """``<store>/manifest.json``."""
    return Path(store) / MANIFEST_NAME


def new_manifest(settings: StoreSettings, extra: dict[str, Any] | None = None,
                 version: int = SCHEMA_VERSION) -> dict[str, Any]:
    """A manifest for an empty store with ``settings`` (schema ``version``: 2 unless a test asks for 1)."""
    return {"format": FORMAT, "schema_version": version, **settings.to_manifest(),
            "extra": dict(extra or {}), "provenance": provenance(), "parts": [], "num_rows": 0,
            "num_regions": 0}


def check_manifest(doc: Any, where: Path) -> dict[str, Any]:
    """Check format and schema version; raise a clear error otherwise."""
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise StoreError(f"{where} is not a region store manifest (format is not {FORMAT!r})")
    version = doc.get("schema_version")
    if not isinstance(version, int):
        raise StoreCorruptError(f"{where}: schema_version is missing or not an integer")
    if version > SCHEMA_VERSION:
        raise SchemaVersionError(f"{where} has schema_version {version}, newer than this itmflow reads "
                                 f"({SCHEMA_VERSION}); upgrade itmflow to read it")
    if version < 1:
        raise SchemaVersionError(f"{where} has unknown schema_version {version}")
    for key in ("storage", "feature_dim", "feature_dtype", "region_policy", "parts"):
        if key not in doc:
            raise StoreCorruptError(f"{where}: required key {key!r} is missing; the manifest was edited "
                                    "or truncated")
    for i, part in enumerate(doc["parts"]):
        if not isinstance(part, dict) or not {"file", "rows", "sha256", "bytes"} <= set(part):
            raise StoreCorruptError(f"{where}: parts[{i}] lacks file/rows/sha256/bytes")
        name = part["file"]
        if version >= 2 and isinstance(name, str) and name.startswith(f"{DATA_DIR}/"):
            name = name[len(DATA_DIR) + 1:]  # v2: parts live in data/
        if not isinstance(name, str) or "/" in name or "\\" in name or name.startswith("."):
            raise StoreCorruptError(f"{where}: parts[{i}] names {part['file']!r}, which is not a part file "
                                    "inside the store")
    return doc


def read_manifest_json(store: str | os.PathLike[str], *, kind: str, create_hint: str, fix_hint: str) -> Any:
    """Parse ``<store>/manifest.json`` of a ``kind`` store ("region", "caption") with clear errors."""
    path = manifest_path(store)
    if not path.is_file():
        raise StoreError(f"{Path(store)} is not a {kind} store: {MANIFEST_NAME} is missing ({create_hint})")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StoreCorruptError(f"{path} cannot be parsed ({exc}); {fix_hint}") from exc


def load_manifest(store: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and check ``<store>/manifest.json``."""
    doc = read_manifest_json(store, kind="region",
                             create_hint="create one with `itmflow extract` or `itmflow store import`",
                             fix_hint="restore it from a backup")
    return check_manifest(doc, manifest_path(store))


def save_manifest(store: str | os.PathLike[str], doc: dict[str, Any]) -> None:
    """Rewrite the manifest atomically (temporary file + fsync + rename)."""
    doc["num_rows"] = sum(int(p["rows"]) for p in doc["parts"])
    doc["num_regions"] = sum(int(p.get("regions", 0)) for p in doc["parts"])
    atomic_write_json(manifest_path(store), doc)


#: Differences :func:`settings_mismatch` lists one per line before summarising the rest.
MAX_LISTED_DIFFS = 6


def _leaf_diffs(path: str, a: Any, b: Any, out: list[str]) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b), key=str):
            _leaf_diffs(f"{path}.{key}" if path else str(key), a.get(key, _MISSING), b.get(key, _MISSING), out)
    elif a != b:
        out.append(f"{path}: {_show(a)} -> {_show(b)}")


class _Missing:
    def __repr__(self) -> str:
        return "(absent)"


_MISSING = _Missing()


def _show(value: Any) -> str:
    return "(absent)" if value is _MISSING else json.dumps(value, sort_keys=True, ensure_ascii=False)


def settings_mismatch(recorded: StoreSettings, wanted: StoreSettings) -> list[str]:
    """Human-readable differences leaf by leaf, store value -> this run's value
    (``detector.settings.min_size: 600 -> 300``); at most :data:`MAX_LISTED_DIFFS` lines, the rest
    summarised in one more. Empty when the settings agree."""
    out: list[str] = []
    _leaf_diffs("", recorded.to_manifest(), wanted.to_manifest(), out)
    if len(out) > MAX_LISTED_DIFFS:
        out = out[:MAX_LISTED_DIFFS] + [f"... and {len(out) - MAX_LISTED_DIFFS} more"]
    return out
