"""``embed``: global vectors of a region store (and a caption store) with a TERN or TERAN model,
written as an embedding directory (:mod:`pipeline.search.embeddings`). ``itmflow embed`` wraps it.

    from pipeline.search.embed import EmbedConfig, embed

    result = embed(EmbedConfig(model="runs/tern", regions="stores/regions",
                               captions="stores/captions", out="emb"))
    print(result.sides["images"]["count"])
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from itmflow.errors import ConfigError, InputFileError

if TYPE_CHECKING:
    from rich.console import Console
    from torch import Tensor
    from torch.utils.data import DataLoader

PathLike = str | os.PathLike[str]


@dataclass
class EmbedConfig:
    """What to embed with which model, and where (defaults: ``itmflow embed``'s)."""

    model: PathLike
    """Run directory of ``itmflow train``, a model directory, or an authors' TERN/TERAN file."""
    regions: PathLike
    """Region store: every image is embedded."""
    out: PathLike
    """Output directory (Parquet + faiss + manifest)."""
    captions: PathLike | None = None
    """Caption store to embed too (enables image → text search)."""
    split: str | None = None
    """Embed only the captions of this split."""
    images: PathLike | None = None
    """Images root the store's ``file`` paths are relative to (for result pictures)."""
    collection: PathLike | None = None
    """Collection table; its images root is used when ``images`` is not given."""
    index: str = "auto"
    """auto (exact up to 100k vectors, else IVF), flat, ivf or hnsw."""
    device: str = "auto"
    batch_size: int = 128
    workers: int = 0
    progress: bool = True
    force: bool = False
    """Replace embeddings already in ``out``."""


@dataclass
class EmbedResult:
    """The embedding directory written and its manifest's per-side entries (count, dim, index)."""

    out: Path
    sides: dict[str, dict[str, Any]]


def _rel(path: PathLike, start: PathLike) -> str:
    """``path`` relative to ``start`` when possible (no absolute paths in the manifest)."""
    try:
        return os.path.relpath(Path(path).resolve(), Path(start).resolve())
    except ValueError:  # another drive (Windows)
        return str(path)


def _without_files(loader: DataLoader, files: list[str]) -> Iterator[dict[str, Tensor]]:
    """The loader's batches; each batch's ``files`` list is moved onto ``files``."""
    for batch in loader:
        files.extend(batch.pop("files"))
        yield batch


def embed(config: EmbedConfig, *, console: Console | None = None) -> EmbedResult:
    """Embed every image of the region store (and the captions) and build the vector indexes."""
    from itmflow.weights import check_checkpoint_source
    from trainers.evaluation.report import run_model_dir

    # --out and the model source are checked before torch is imported
    out = Path(config.out)
    if (out / "manifest.json").is_file() and not config.force:
        raise ConfigError(f"{out} already holds embeddings (manifest.json); pass --force to "
                          "replace them or choose another --out")
    run = Path(config.model)
    source = run_model_dir(run) if run.is_dir() else run
    check_checkpoint_source(source)

    from rich.console import Console
    from torch.utils.data import DataLoader

    from pipeline.search.embeddings import choose_index, global_vectors, write_manifest, write_side
    from trainers.checkpoints import load_model
    from trainers.data import CaptionCollator, CaptionTable, ImageItems, RegionImages, collate_images
    from trainers.models import MODELS, spec_of
    from itmflow.devices import resolve_device

    console = console or Console(stderr=True)
    choose_index(config.index, 0)                      # validate early
    dev = resolve_device(config.device)
    model = load_model(source, device=dev)
    from itmflow.marks import metadata, run_random_init, store_random_init, warn

    store_mark = store_random_init(config.regions)
    warn(console, f"region store {config.regions}", store_mark)
    run_mark = run_random_init(source) if Path(source).is_dir() else None
    warn(console, f"the regions run {run} was trained on", run_mark)
    marks = metadata(store_mark or run_mark)
    if not spec_of(model).global_vectors:
        with_vectors = " or ".join(s.name.upper() for s in MODELS.values() if s.global_vectors)
        raise ConfigError(f"{source}: a {model.kind} model has no global vectors; "
                          f"embed with a {with_vectors} model")
    out.mkdir(parents=True, exist_ok=True)
    (out / "manifest.json").unlink(missing_ok=True)   # incomplete until rewritten at the end

    root: PathLike | None = config.images
    if root is None and config.collection is not None:
        from pipeline.collections import read_collection

        root = read_collection(config.collection).images_root
    store = RegionImages(config.regions, need_geometry=True)

    def collate_with_files(rows: list[dict[str, Any]]) -> dict[str, Any]:
        batch: dict[str, Any] = collate_images(rows)
        batch["files"] = [str(r.get("file") or "") for r in rows]
        return batch

    loader = DataLoader(ImageItems(store, store.ids), batch_size=config.batch_size, shuffle=False,
                        collate_fn=collate_with_files, num_workers=config.workers)
    files: list[str] = []
    img_vec = global_vectors(model, _without_files(loader, files), "images", device=dev,
                             progress=config.progress, console=console, total=len(loader))
    from trainers.evaluation.run import refuse_non_finite

    refuse_non_finite(img_vec, f"the image vectors of region store {config.regions}",
                      "non-finite features or box geometry in the store, or a diverged checkpoint")
    sides = {"images": write_side(out, "images", {"image_id": list(store.ids), "file": files},
                                  img_vec, config.index)}
    tokenizer: dict[str, Any] = {}
    if config.captions is not None:
        table = CaptionTable.read(config.captions)
        split = config.split
        rows = table.rows_of(split) if split else list(range(len(table)))
        rows = [r for r in rows if table.bert.valid[r]]
        if not rows:
            raise InputFileError(f"caption store {config.captions} has no captions with BERT ids"
                                 f"{' in split ' + repr(split) if split else ''}; tokenize with BERT")
        cap_loader = DataLoader([table.caption(r) for r in rows], batch_size=config.batch_size,
                                shuffle=False, collate_fn=CaptionCollator(("bert",)))
        cap_vec = global_vectors(model, cap_loader, "captions", device=dev,
                                 progress=config.progress, console=console)
        refuse_non_finite(cap_vec, f"the caption vectors of caption store {config.captions}",
                          "a diverged checkpoint")
        sides["captions"] = write_side(out, "captions", {
            "caption_id": [table.caption_ids[r] for r in rows],
            "image_id": [table.image_ids[r] for r in rows],
            "split": [table.splits[r] for r in rows],
            "raw": [table.raw[r] or "" for r in rows]}, cap_vec, config.index)
        tokenizer = dict(table.manifest.get("tokenizer") or {})
    write_manifest(out, {
        "model": {"source": _rel(source, out), "kind": model.kind},
        "tokenizer": {**tokenizer, "source": str(getattr(model.config, "bert", ""))},
        "regions": _rel(config.regions, out),
        "captions": _rel(config.captions, out) if config.captions else None,
        "images_root": _rel(root, out) if root is not None else None,
        "metric": "inner product of l2-normalised vectors (cosine)", "sides": sides, **marks})
    return EmbedResult(out=out, sides=sides)


__all__ = ["EmbedConfig", "EmbedResult", "embed"]
