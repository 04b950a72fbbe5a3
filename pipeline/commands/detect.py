"""`itmflow detect`: run the BUTD detector on a few images, print a summary, save regions / PNGs.

Options → :class:`pipeline.detect.DetectConfig` → :func:`pipeline.detect.detect`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

import typer

RANDOM_INIT_WARNING = (
    "WARNING: --random-init: the detector has SEEDED RANDOM WEIGHTS. Boxes, labels and features "
    "are meaningless; use this only to try the pipeline. Pass --weights for real regions."
)


def register(app: typer.Typer) -> None:
    """Add ``detect`` to ``app``."""
    app.command("detect")(detect)


def detect(
    images: list[Path] = typer.Argument(..., metavar="IMAGE...", help="Image files to run the detector on."),
    weights: Optional[str] = typer.Option(
        None, "--weights", metavar="FILE|NAME", help="BUTD checkpoint: MILVLG .pth, airsplay .pkl, HF directory "
                                "(pytorch_model.bin + config.yaml), a name from `itmflow weights "
                                "list`, a URL or a hub id."),
    random_init: bool = typer.Option(False, "--random-init",
                                     help="Seeded random weights instead of a checkpoint (smoke runs)."),
    seed: int = typer.Option(0, "--seed", help="Seed for --random-init."),
    labels: Optional[Path] = typer.Option(
        None, "--labels", metavar="DIR", help="Visual Genome label folder: objects_vocab.txt and "
        "attributes_vocab.txt (default: next to the weights, else the shipped VG lists)."),
    vocab_old: Optional[Path] = typer.Option(None, "--vocab", hidden=True,
                                             help="Deprecated spelling of --labels."),
    regions: str = typer.Option("36", "--regions", metavar="K|MIN-MAX", help="Fixed K (36) or adaptive MIN-MAX (10-100)."),
    selection: Literal["caffe", "maxnms"] = typer.Option("caffe", "--selection",
                                  help="caffe (generate_tsv.py, proposal boxes) or maxnms "
                                       "(airsplay/HF, regressed boxes)."),
    device: str = typer.Option("auto", "--device", metavar="DEVICE",
                               help="auto (CUDA when available, else CPU), cpu, cuda, cuda:1, ..."),
    precision: Literal["fp32", "tf32", "bf16", "fp16"] = typer.Option(
        "fp32", "--precision", help="fp32 (TF32 off on CUDA), tf32, or bf16 / fp16 autocast."),
    min_size: int = typer.Option(600, "--min-size", help="Short side after resizing."),
    max_size: int = typer.Option(1000, "--max-size", help="Longest side after resizing."),
    post_nms_topk: int = typer.Option(300, "--proposals", help="RPN proposals kept after NMS."),
    out: Optional[Path] = typer.Option(None, "--out", metavar="DIR",
                                       help="Directory: write STEM.npz per image (store field names)."),
    visualize: Optional[Path] = typer.Option(None, "--visualize", metavar="DIR",
                                             help="Directory: write STEM.png with boxes and labels."),
    force: bool = typer.Option(False, "--force", help="Replace STEM.npz / STEM.png files already "
                               "in --out / --visualize."),
) -> None:
    """Run the bottom-up-attention detector on IMAGES and summarise each image's regions."""
    import numpy as np
    from rich.console import Console
    from rich.table import Table

    from detectors.butd.settings import BUTDSettings
    from itmflow.errors import ItmflowError
    from pipeline.commands._common import pick
    from pipeline.detect import DetectConfig, detect

    labels = pick(labels, vocab_old, "--vocab", "--labels")
    for option, folder, suffix in (("--out", out, ".npz"), ("--visualize", visualize, ".png")):
        clash = [folder / (Path(i).stem + suffix) for i in images] if folder is not None else []
        clash = [c for c in clash if c.exists()]
        if clash and not force:
            raise ItmflowError(f"{option} {folder} already holds {clash[0].name}"
                               f"{f' and {len(clash) - 1} more' if len(clash) > 1 else ''}; "
                               "pass --force to replace them")

    settings = BUTDSettings(min_size=min_size, max_size=max_size, regions=regions, selection=selection,
                            pre_nms_topk=max(6000, post_nms_topk), post_nms_topk=post_nms_topk,
                            precision=precision)
    cfg = DetectConfig(images=list(images), weights=weights, random_init=random_init, seed=seed,
                       vocab=labels, detector=settings, device=device, out=out,
                       visualize=visualize).validate()
    err = Console(stderr=True)
    if random_init:
        err.print(f"[bold red]{RANDOM_INIT_WARNING}[/bold red]")
    result = detect(cfg)
    table = Table(title=f"itmflow detect — {result.source}")
    for col in ("image", "size", "regions", "top objects", "mean conf"):
        table.add_column(col, overflow="fold")
    for image in result.images:
        region = image.regions
        if region is None:
            table.add_row(image.path.name, "-", "failed", image.error or "", "-")
            continue
        counts: dict[str, int] = {}
        for oid, aid in zip(region["object_ids"], region["attr_ids"]):
            name = result.detector.label(int(oid), int(aid))
            counts[name] = counts.get(name, 0) + 1
        top = ", ".join(f"{n}×{c}" for n, c in sorted(counts.items(), key=lambda kv: -kv[1])[:3])
        conf = float(np.mean(region["object_conf"])) if region["num_regions"] else 0.0
        table.add_row(image.path.name, f"{region['width']}×{region['height']}",
                      str(region["num_regions"]), top, f"{conf:.3f}")
    Console().print(table)
    if random_init:
        err.print(f"[bold red]{RANDOM_INIT_WARNING}[/bold red]")
    failures = result.failures
    if failures:
        raise ItmflowError(f"{len(failures)} of {len(images)} image(s) failed: " + "; ".join(failures))
