"""`itmflow embed` (TERN / TERAN global vectors → Parquet + faiss) and `itmflow search` (text →
images, image → captions) with a rich table and a PNG of the results."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Optional

import typer

from itmflow.errors import ConfigError, InputFileError, TokenizerError


class _Tracked:
    """Iterate a DataLoader whose batches carry a ``files`` list; collect the files on the side."""

    def __init__(self, loader: Any, key: str) -> None:
        self.loader, self.key, self.values = loader, key, []

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for batch in self.loader:
            self.values.extend(batch.pop(self.key))
            yield batch


def _rel(path: Path, start: Path) -> str:
    """``path`` relative to ``start`` when possible (no absolute paths in the manifest)."""
    try:
        return os.path.relpath(Path(path).resolve(), Path(start).resolve())
    except ValueError:  # another drive (Windows)
        return str(path)


def embed_command(
    run: Path = typer.Argument(..., help="Run directory of `itmflow train`, a model directory, or "
                               "an authors' TERN/TERAN checkpoint file."),
    regions: Path = typer.Option(..., "--regions", help="Region store to embed (every image)."),
    captions: Optional[Path] = typer.Option(None, "--captions", help="Caption store to embed too "
                                            "(enables image → text search)."),
    split: Optional[str] = typer.Option(None, "--split", help="Embed only captions of this split."),
    out: Path = typer.Option(..., "--out", help="Output directory (Parquet + faiss + manifest)."),
    images: Optional[Path] = typer.Option(None, "--images", help="Images root the store's `file` "
                                          "paths are relative to (for result pictures)."),
    collection: Optional[Path] = typer.Option(None, "--collection", help="Collection table; its "
                                              "images root is used when --images is not given."),
    index: str = typer.Option("auto", "--index", help="auto (exact up to 100k vectors, else IVF), "
                              "flat (exact), ivf or hnsw."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, ..."),
    batch_size: int = typer.Option(128, "--batch-size", help="Encoding batch size."),
    workers: int = typer.Option(0, "--workers", help="DataLoader worker processes."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
    force: bool = typer.Option(False, "--force", help="Replace the embeddings already in --out."),
) -> None:
    """Embed images (and captions) with a TERN or TERAN model and build vector indexes."""
    from rich.console import Console
    from torch.utils.data import DataLoader

    from trainers.checkpoints import load_model
    from trainers.data import CaptionCollator, CaptionTable, ImageItems, RegionImages, collate_images
    from trainers.evaluation.report import run_model_dir
    from trainers.models import MODELS, spec_of
    from pipeline.search.embeddings import choose_index, global_vectors, write_manifest, write_side
    from trainers.train import resolve_device

    console = Console(stderr=True)
    choose_index(index, 0)                      # validate early
    if (out / "manifest.json").is_file() and not force:
        raise ConfigError(f"{out} already holds embeddings (manifest.json); pass --force to "
                          "replace them or choose another --out")
    dev = resolve_device(device)
    source = run_model_dir(run) if run.is_dir() else run
    model = load_model(source, device=dev)
    if not spec_of(model).global_vectors:
        with_vectors = " or ".join(s.name.upper() for s in MODELS.values() if s.global_vectors)
        raise ConfigError(f"{source}: a {model.kind} model has no global vectors; "
                          f"embed with a {with_vectors} model")
    out.mkdir(parents=True, exist_ok=True)
    (out / "manifest.json").unlink(missing_ok=True)   # incomplete until rewritten at the end

    root: Path | None = images
    if root is None and collection is not None:
        from pipeline.collections import read_collection

        root = read_collection(collection).images_root
    store = RegionImages(regions, need_geometry=True)

    def collate_with_files(rows: list[dict[str, Any]]) -> dict[str, Any]:
        batch: dict[str, Any] = collate_images(rows)
        batch["files"] = [str(r.get("file") or "") for r in rows]
        return batch

    loader = _Tracked(DataLoader(ImageItems(store, store.ids), batch_size=batch_size,
                                 shuffle=False, collate_fn=collate_with_files,
                                 num_workers=workers), "files")
    img_vec = global_vectors(model, loader, "images", device=dev, progress=progress, console=console)
    sides = {"images": write_side(out, "images", {"image_id": list(store.ids),
                                                  "file": loader.values}, img_vec, index)}
    tokenizer: dict[str, Any] = {}
    if captions is not None:
        table = CaptionTable.read(captions)
        rows = table.rows_of(split) if split else list(range(len(table)))
        rows = [r for r in rows if table.bert.valid[r]]
        if not rows:
            raise InputFileError(f"caption store {captions} has no captions with BERT ids"
                                 f"{' in split ' + repr(split) if split else ''}; tokenize with BERT")
        cap_loader = DataLoader([table.caption(r) for r in rows], batch_size=batch_size,
                                shuffle=False, collate_fn=CaptionCollator(("bert",)))
        cap_vec = global_vectors(model, cap_loader, "captions", device=dev, progress=progress,
                                 console=console)
        sides["captions"] = write_side(out, "captions", {
            "caption_id": [table.caption_ids[r] for r in rows],
            "image_id": [table.image_ids[r] for r in rows],
            "split": [table.splits[r] for r in rows],
            "raw": [table.raw[r] or "" for r in rows]}, cap_vec, index)
        tokenizer = dict(table.manifest.get("tokenizer") or {})
    write_manifest(out, {
        "model": {"source": _rel(Path(source), out), "kind": model.kind},
        "tokenizer": {**tokenizer, "source": str(getattr(model.config, "bert", ""))},
        "regions": _rel(regions, out), "captions": _rel(captions, out) if captions else None,
        "images_root": _rel(root, out) if root is not None else None,
        "metric": "inner product of l2-normalised vectors (cosine)", "sides": sides})
    from rich.table import Table

    t = Table(title=f"embeddings in {out}")
    for col in ("side", "count", "dim", "index"):
        t.add_column(col)
    for side, entry in sides.items():
        t.add_row(side, str(entry["count"]), str(entry["dim"]), entry["index"])
    Console().print(t)


def _slug(text: str) -> str:
    return re.sub(r"[^a-zA-Z0-9]+", "-", text).strip("-")[:48] or "query"


def search_command(
    directory: Path = typer.Argument(..., help="Embedding directory written by `itmflow embed`."),
    text: Optional[str] = typer.Option(None, "--text", help="Text query: find images."),
    image: Optional[str] = typer.Option(None, "--image", help="Image id query: find captions "
                                        "(or images with --target images)."),
    target: Optional[str] = typer.Option(None, "--target", help="images or captions (default: "
                                         "the other modality)."),
    top: int = typer.Option(5, "--top", help="Number of results."),
    images: Optional[Path] = typer.Option(None, "--images", help="Images root (default: the one "
                                          "recorded by itmflow embed)."),
    model: Optional[Path] = typer.Option(None, "--model", help="Model to encode text queries "
                                         "(default: the one recorded by itmflow embed)."),
    tokenizer: Optional[str] = typer.Option(None, "--tokenizer", help="BERT tokenizer directory or "
                                            "id (default: the model's)."),
    png: Optional[Path] = typer.Option(None, "--png", help="Where to write the picture of the "
                                       "results (default DIR/search-<query>.png)."),
    device: str = typer.Option("cpu", "--device", help="Device for encoding a text query."),
) -> None:
    """Search an embedding directory by text or by image id; prints a table and writes a PNG."""
    import numpy as np
    from rich.console import Console
    from rich.table import Table

    from pipeline.search.embeddings import EmbeddingDir
    from pipeline.search.render import Hit, captions_panel, image_grid

    if (text is None) == (image is None):
        raise ConfigError("give exactly one query: --text \"...\" or --image ID")
    if top < 1:
        raise ConfigError(f"--top must be >= 1, got {top}")
    emb = EmbeddingDir.open(directory)
    recorded = emb.manifest.get("images_root")
    root = images if images is not None else ((directory / recorded) if recorded else None)
    query_file: str | None = None
    if text is not None:
        query_vec = _encode_text(emb, text, model, tokenizer, device)
        tgt = target or "images"
        title = f"text: \"{text}\""
    else:
        img_side = emb.side("images")
        pos = img_side.position("image_id", image)
        query_vec = img_side.vectors[pos][None]
        query_file = img_side.row(pos).get("file")
        tgt = target or ("captions" if "captions" in emb.sides else "images")
        title = f"image: {image}"
    if tgt not in ("images", "captions"):
        raise ConfigError(f"--target must be images or captions, got {tgt!r}")
    side = emb.side(tgt)
    scores, idx = side.search(np.asarray(query_vec, dtype=np.float32), top)
    hits: list[Hit] = []
    for rank, (s, i) in enumerate(zip(scores[0], idx[0]), start=1):
        if i < 0:
            continue
        row = side.row(int(i))
        if tgt == "images":
            hits.append(Hit(rank, float(s), row["image_id"], file=row.get("file")))
        else:
            hits.append(Hit(rank, float(s), row["caption_id"], text=row.get("raw")))
    table = Table(title=title)
    table.add_column("#", justify="right")
    table.add_column("score", justify="right")
    table.add_column("image_id" if tgt == "images" else "caption_id")
    table.add_column("file" if tgt == "images" else "caption")
    for h in hits:
        table.add_row(str(h.rank), f"{h.score:.4f}", h.item_id, (h.file if tgt == "images" else h.text) or "")
    Console().print(table)
    png_path = png or directory / f"search-{_slug(text if text is not None else image or '')}.png"
    if tgt == "images":
        image_grid(hits, root, png_path, title=title)
    else:
        captions_panel(query_file, image or "", hits, root, png_path)
    Console(stderr=True).print(f"wrote {png_path}")


def _encode_text(emb: Any, text: str, model_path: Optional[Path], tokenizer: Optional[str],
                 device: str) -> Any:
    """The l2-normalised global vector of a text query, tokenized like the embedded captions."""
    import torch

    from pipeline.text.bert import encode_captions, load_bert_tokenizer
    from trainers.checkpoints import load_model
    from pipeline.search.embeddings import global_vectors

    if not text.strip():
        raise ConfigError("the --text query is empty")
    source = model_path or (emb.path / emb.manifest["model"]["source"])
    model = load_model(source, device=device)
    tok_info = emb.manifest.get("tokenizer") or {}
    tok_source = tokenizer or tok_info.get("source") or "bert-base-uncased"
    tok = load_bert_tokenizer(tok_source)
    expected = tok_info.get("vocab_sha256")
    if expected and tok.vocab_sha256 != expected:
        raise TokenizerError(f"tokenizer {tok_source!r} has vocabulary sha256 {tok.vocab_sha256[:12]}…, "
                             f"but the captions were tokenized with {expected[:12]}… "
                             f"({tok_info.get('name')}); pass --tokenizer with that tokenizer")
    ids, _ = encode_captions(tok, [text])
    batch = {"bert_ids": torch.tensor(ids, dtype=torch.long),
             "bert_lengths": torch.tensor([len(ids[0])], dtype=torch.long)}
    return global_vectors(model, [batch], "captions", device=device)


def register(app: typer.Typer) -> None:
    """Add `itmflow embed` and `itmflow search` to `app`."""
    app.command("embed")(embed_command)
    app.command("search")(search_command)
