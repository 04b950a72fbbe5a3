"""`itmflow detect`: run the BUTD detector on a few images, print a summary, save regions / PNGs."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

RANDOM_INIT_WARNING = (
    "WARNING: --random-init: the detector has SEEDED RANDOM WEIGHTS. Boxes, labels and features "
    "are meaningless; use this only to try the pipeline. Pass --weights for real regions."
)


def register(app: typer.Typer) -> None:
    """Add ``detect`` to ``app``."""
    app.command("detect")(detect)


def detect(
    images: list[Path] = typer.Argument(..., help="Image files to run the detector on."),
    weights: Optional[str] = typer.Option(
        None, "--weights", help="BUTD checkpoint: MILVLG .pth, airsplay .pkl, HF directory "
                                "(pytorch_model.bin + config.yaml), a URL or a hub id."),
    random_init: bool = typer.Option(False, "--random-init",
                                     help="Seeded random weights instead of a checkpoint (smoke runs)."),
    seed: int = typer.Option(0, "--seed", help="Seed for --random-init."),
    vocab: Optional[Path] = typer.Option(
        None, "--vocab", help="Directory with objects_vocab.txt and attributes_vocab.txt "
                              "(default: next to the weights, else the shipped VG lists)."),
    regions: str = typer.Option("36", "--regions", help="Fixed K (36) or adaptive MIN-MAX (10-100)."),
    selection: str = typer.Option("caffe", "--selection",
                                  help="caffe (generate_tsv.py, proposal boxes) or maxnms "
                                       "(airsplay/HF, regressed boxes)."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda."),
    precision: str = typer.Option("fp32", "--precision", help="fp32, bf16 or fp16 (autocast)."),
    min_size: int = typer.Option(600, "--min-size", help="Short side after resizing."),
    max_size: int = typer.Option(1000, "--max-size", help="Longest side after resizing."),
    post_nms_topk: int = typer.Option(300, "--proposals", help="RPN proposals kept after NMS."),
    out: Optional[Path] = typer.Option(None, "--out",
                                       help="Write {image stem}.npz per image (store field names)."),
    visualize: Optional[Path] = typer.Option(None, "--visualize",
                                             help="Write {image stem}.png with boxes and labels."),
) -> None:
    """Run the bottom-up-attention detector on IMAGES and summarise each image's regions."""
    import io

    import numpy as np
    from rich.console import Console
    from rich.table import Table

    from detectors.butd import build_detector
    from detectors.butd.preprocess import load_image, prepare
    from detectors.visualize import save_regions_png
    from itmflow.errors import ConfigError, ImageDecodeError, ItmflowError
    from itmflow.files import atomic_write_bytes

    console = Console()
    err = Console(stderr=True)
    stems: dict[str, Path] = {}
    for path in images:
        if path.stem in stems and (out or visualize):
            raise ConfigError(f"{path} and {stems[path.stem]} have the same stem {path.stem!r}; "
                              "their output files would collide: rename one or run them separately")
        stems[path.stem] = path
    if random_init:
        err.print(f"[bold red]{RANDOM_INIT_WARNING}[/bold red]")
    detector = build_detector(weights, random_init=random_init, seed=seed, device=device,
                              regions=regions, min_size=min_size, max_size=max_size,
                              precision=precision, vocab_dir=vocab, selection=selection,
                              post_nms_topk=post_nms_topk, pre_nms_topk=max(6000, post_nms_topk))
    source = "RANDOM WEIGHTS (seed %d)" % seed if random_init else \
        f"{detector.weights_file} ({detector.weights_layout}, sha256 {detector.weights_sha256[:12]}…)"
    table = Table(title=f"itmflow detect — {source}")
    for col in ("image", "size", "regions", "top objects", "mean conf"):
        table.add_column(col, overflow="fold")
    failures = []
    for path in images:
        try:
            rgb = load_image(path)
        except ImageDecodeError as exc:
            failures.append(str(exc))
            table.add_row(path.name, "-", "failed", str(exc), "-")
            continue
        region = detector.detect([prepare(rgb, min_size=min_size, max_size=max_size)])[0]
        counts: dict[str, int] = {}
        for oid, aid in zip(region["object_ids"], region["attr_ids"]):
            name = detector.label(int(oid), int(aid))
            counts[name] = counts.get(name, 0) + 1
        top = ", ".join(f"{n}×{c}" for n, c in sorted(counts.items(), key=lambda kv: -kv[1])[:3])
        conf = float(np.mean(region["object_conf"])) if region["num_regions"] else 0.0
        table.add_row(path.name, f"{region['width']}×{region['height']}", str(region["num_regions"]),
                      top, f"{conf:.3f}")
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            buf = io.BytesIO()
            np.savez(buf, **{k: np.asarray(v) for k, v in region.items()})
            atomic_write_bytes(out / f"{path.stem}.npz", buf.getvalue())
        if visualize is not None:
            save_regions_png(rgb, region, visualize / f"{path.stem}.png", detector.label)
    console.print(table)
    if random_init:
        err.print(f"[bold red]{RANDOM_INIT_WARNING}[/bold red]")
    if failures:
        raise ItmflowError(f"{len(failures)} of {len(images)} image(s) failed: " + "; ".join(failures))
