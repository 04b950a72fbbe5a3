"""The bundled sample collection materialises real photos in the promised modes."""

from __future__ import annotations

import json

from PIL import Image


def test_sample_has_twelve_photos_with_five_captions(photo_dir, photo_paths):
    assert len(photo_paths) == 12
    lines = [json.loads(l) for l in (photo_dir / "captions.jsonl").read_text().splitlines()]
    assert {l["file"] for l in lines} == {p.name for p in photo_paths}
    assert all(len(l["captions"]) == 5 for l in lines)
    modes = {p.name: Image.open(p).mode for p in photo_paths}
    assert modes["camera.png"] == "L"
    assert modes["logo.png"] == "RGBA"
    assert modes["clock.gif"] == "P"
    assert modes["coins.png"].startswith("I")
    assert modes["astronaut.jpg"] == "RGB"
