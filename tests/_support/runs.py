"""Reading a training run directory in tests."""

from __future__ import annotations

import json
from pathlib import Path


def losses(run: Path) -> dict[int, float]:
    """The training losses a run logged (``log.jsonl``), by step."""
    out = {}
    for line in (run / "log.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if rec["kind"] == "train":
            out[rec["step"]] = rec["loss"]
    return out
