"""`itmflow embed` (TERN / TERAN global vectors → Parquet + faiss) and `itmflow search` (text →
images, image → captions) with a rich table and a PNG of the results.

Options → :class:`pipeline.search.embed.EmbedConfig` / :class:`pipeline.search.query.SearchConfig`
→ :func:`pipeline.search.embed.embed` / :func:`pipeline.search.query.search`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


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
    from rich.table import Table

    from pipeline.search.embed import EmbedConfig, embed

    cfg = EmbedConfig(model=run, regions=regions, out=out, captions=captions, split=split,
                      images=images, collection=collection, index=index, device=device,
                      batch_size=batch_size, workers=workers, progress=progress, force=force)
    result = embed(cfg, console=Console(stderr=True))
    t = Table(title=f"embeddings in {out}")
    for col in ("side", "count", "dim", "index"):
        t.add_column(col)
    for side, entry in result.sides.items():
        t.add_row(side, str(entry["count"]), str(entry["dim"]), entry["index"])
    Console().print(t)


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
    from rich.console import Console
    from rich.table import Table

    from pipeline.search.query import SearchConfig, search

    result = search(SearchConfig(directory=directory, text=text, image=image, target=target,
                                 top=top, images=images, model=model, tokenizer=tokenizer, png=png,
                                 device=device))
    by_image = result.target == "images"
    table = Table(title=result.title)
    table.add_column("#", justify="right")
    table.add_column("score", justify="right")
    table.add_column("image_id" if by_image else "caption_id")
    table.add_column("file" if by_image else "caption")
    for h in result.hits:
        table.add_row(str(h.rank), f"{h.score:.4f}", h.item_id, (h.file if by_image else h.text) or "")
    Console().print(table)
    Console(stderr=True).print(f"wrote {result.png}")


def register(app: typer.Typer) -> None:
    """Add `itmflow embed` and `itmflow search` to `app`."""
    app.command("embed")(embed_command)
    app.command("search")(search_command)
