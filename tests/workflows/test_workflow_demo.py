"""`make demo` smoke test: the sample workflow end to end at a tiny scale, and its PNG."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from pipeline.cli import app
from pipeline.commands.run import app_commands
from workflows.demo import main as demo_main


def main(argv: list[str]) -> int:
    return demo_main(argv, commands=app_commands(app))

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def test_demo_runs_the_sample_workflow_and_draws_detections(tmp_path, ray_local, capsys):
    out = tmp_path / "demo-output"
    # tiny detector settings; training is covered by the trainers' own tests
    status = main(["--out", str(out), "--no-train", "--set", "min_size=128", "--set",
                   "max_size=256", "--set", "proposals=4", "--set", "batch_size=4"])
    assert status == 0
    printed = capsys.readouterr().out
    assert "MEANINGLESS" in printed and "detections PNG" in printed
    manifest = json.loads((out / "regions" / "manifest.json").read_text())
    assert sum(p["rows"] for p in manifest["parts"]) == 12
    assert manifest["detector"]["settings"]["random_init"] is True
    assert (out / "captions" / "manifest.json").is_file()
    with Image.open(out / "detections.png") as png:
        # the 2x2 grid below the red "random weights" banner (itmflow.marks.stamp_image)
        assert png.format == "PNG" and png.size == (960, 960 + 960 // 18)
    # a second run finds every stage done
    assert main(["--out", str(out), "--no-train", "--set", "min_size=128", "--set",
                 "max_size=256", "--set", "proposals=4", "--set", "batch_size=4"]) == 0
    assert "extract: skipped" in capsys.readouterr().out
