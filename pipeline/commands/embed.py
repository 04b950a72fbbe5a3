"""`itmflow embed` (TERN / TERAN global vectors → Parquet + faiss) and `itmflow search` (text →
images, image → captions) with a rich table and a PNG of the results.

Options → :class:`pipeline.search.embed.EmbedConfig` / :class:`pipeline.search.query.SearchConfig`
→ :func:`pipeline.search.embed.embed` / :func:`pipeline.search.query.search`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

import typer


def embed_command(
    run: Path = typer.Argument(..., metavar="RUN", help="Run directory of `itmflow train`, a model "
                               "directory, or an authors' TERN/TERAN checkpoint file."),
    regions: Path = typer.Option(..., "--regions", metavar="DIR", help="Region store to embed (every image)."),
    captions: Optional[Path] = typer.Option(None, "--captions", metavar="DIR", help="Caption store to "
                                            "embed too (enables image → text search)."),
    split: Optional[str] = typer.Option(None, "--split", metavar="SPLIT",
                                        help="Embed only captions of this split."),
    out: Path = typer.Option(..., "--out", metavar="DIR", help="Output directory (Parquet + faiss + manifest)."),
    images: Optional[Path] = typer.Option(None, "--images", metavar="DIR", help="Images root the "
                                          "store's `file` paths are relative to (for result pictures)."),
    collection: Optional[Path] = typer.Option(None, "--collection", metavar="FILE", help="Collection "
                                              "table; its images root is used when --images is not given."),
    index: Literal["auto", "flat", "ivf", "hnsw"] = typer.Option(
        "auto", "--index", help="auto (exact up to 100k vectors, else IVF), flat (exact), ivf or hnsw."),
    device: str = typer.Option("auto", "--device", metavar="DEVICE", help="auto, cpu, cuda, cuda:1, ..."),
    batch_size: int = typer.Option(128, "--batch-size", metavar="N", help="Encoding batch size."),
    loader_workers: int = typer.Option(0, "--loader-workers", metavar="N",
                                       help="DataLoader worker processes."),
    workers_old: Optional[int] = typer.Option(None, "--workers", hidden=True,
                                              help="Deprecated spelling of --loader-workers."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
    force: bool = typer.Option(False, "--force", help="Replace the embeddings already in --out."),
    as_json: bool = typer.Option(False, "--json", help="Print what was written as one JSON "
                                 "document on stdout (the table goes to stderr)."),
) -> None:
    """Embed images (and captions) with a TERN or TERAN model and build vector indexes."""
    from pipeline.commands._common import (check_splits, check_store_dir, people_console, pick,
                                           print_json)

    if workers_old is not None:
        loader_workers = pick(None, workers_old, "--workers", "--loader-workers")
    check_store_dir(regions, "--regions", "region store", "run `itmflow extract` first")
    if captions is not None:
        check_store_dir(captions, "--captions", "caption store", "run `itmflow tokenize` first")
        if split is not None:
            check_splits(captions, [split])
    from rich.console import Console
    from rich.table import Table

    from pipeline.search.embed import EmbedConfig, embed

    cfg = EmbedConfig(model=run, regions=regions, out=out, captions=captions, split=split,
                      images=images, collection=collection, index=index, device=device,
                      batch_size=batch_size, workers=loader_workers, progress=progress, force=force)
    result = embed(cfg, console=Console(stderr=True))
    t = Table(title=f"embeddings in {out}")
    for col in ("side", "count", "dim", "index"):
        t.add_column(col)
    for side, entry in result.sides.items():
        t.add_row(side, str(entry["count"]), str(entry["dim"]), entry["index"])
    people_console(as_json).print(t)
    if as_json:
        print_json({"out": str(out), "sides": {side: dict(entry) for side, entry in result.sides.items()}})


def _read_queries(path: Path) -> list[str]:
    from itmflow.errors import InputFileError

    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise InputFileError(f"--queries {path}: cannot read it ({exc.strerror})") from None
    queries = [line.strip() for line in lines if line.strip()]
    if not queries:
        raise InputFileError(f"--queries {path} holds no query (one text query per line)")
    return queries


def search_command(
    directory: Path = typer.Argument(..., metavar="DIR", help="Embedding directory written by `itmflow embed`."),
    text: list[str] = typer.Option([], "--text", metavar="TEXT", help="Text query: find images "
                                   "(repeatable: the model is loaded once for all queries)."),
    queries: Optional[Path] = typer.Option(None, "--queries", metavar="FILE", help="Text queries, "
                                           "one per line (answered together with any --text)."),
    image: list[str] = typer.Option([], "--image", metavar="IMAGE_ID", help="Image id query: find "
                                    "captions (or images with --target images); repeatable."),
    target: Optional[Literal["images", "captions"]] = typer.Option(
        None, "--target", help="What to find (default: the other modality)."),
    top: int = typer.Option(5, "--top", metavar="N", help="Number of results per query."),
    images: Optional[Path] = typer.Option(None, "--images", metavar="DIR", help="Images root "
                                          "(default: the one recorded by itmflow embed)."),
    model: Optional[Path] = typer.Option(None, "--model", metavar="PATH", help="Model to encode text "
                                         "queries (default: the one recorded by itmflow embed)."),
    tokenizer: Optional[str] = typer.Option(None, "--tokenizer", metavar="DIR|HUB_ID", help="BERT "
                                            "tokenizer directory or id (default: the model's)."),
    png: Optional[Path] = typer.Option(None, "--png", metavar="FILE", help="Where to write the "
                                       "picture of a single query's results (default: "
                                       "DIR/search-text-QUERY.png, DIR/search-image-ID-TARGET.png)."),
    no_png: bool = typer.Option(False, "--no-png", help="Write no pictures."),
    device: str = typer.Option("auto", "--device", metavar="DEVICE",
                               help="Device for encoding text queries: auto, cpu, cuda, ..."),
    as_json: bool = typer.Option(False, "--json", help="Print the results of every query as one "
                                 "JSON document on stdout (tables go to stderr)."),
) -> None:
    """Search an embedding directory by text or by image id; prints a table and writes a PNG per query."""
    from pipeline.commands._common import people_console, print_json
    from pipeline.search.manifest import read_embedding_manifest
    from pipeline.search.query import SearchConfig, search_all

    texts = list(text) + (_read_queries(queries) if queries is not None else [])
    cfg = SearchConfig(directory=directory, texts=texts, image_ids=list(image), target=target,
                       top=top, images=images, model=model, tokenizer=tokenizer, png=png,
                       device=device, draw=not no_png).validate()
    read_embedding_manifest(directory)  # not an embedding directory: said before torch and faiss load
    from rich.table import Table

    results = search_all(cfg)  # a random-weights warning goes to stderr
    console = people_console(as_json)
    for result in results:
        by_image = result.target == "images"
        table = Table(title=result.title)
        table.add_column("#", justify="right")
        table.add_column("score", justify="right")
        table.add_column("image_id" if by_image else "caption_id")
        table.add_column("file" if by_image else "caption")
        for h in result.hits:
            table.add_row(str(h.rank), f"{h.score:.4f}", h.item_id, (h.file if by_image else h.text) or "")
        console.print(table)
        if result.png is not None:
            typer.echo(f"wrote {result.png}", err=True)
    if as_json:
        print_json({"directory": str(directory), "top": top,
                    "queries": [r.to_dict() for r in results]})


def register(app: typer.Typer) -> None:
    """Add `itmflow embed` and `itmflow search` to `app`."""
    app.command("embed")(embed_command)
    app.command("search")(search_command)
