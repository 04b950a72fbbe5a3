"""`itmflow serve`: keep a model and an embedding directory loaded and answer queries over HTTP
(JSON API + web page).

Options → :class:`pipeline.search.serve.ServeConfig` → :func:`pipeline.search.serve.serve`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def serve_command(
    embeddings: Path = typer.Argument(..., help="Embedding directory written by `itmflow embed`."),
    regions: Optional[Path] = typer.Option(None, "--regions", help="Region store for boxes and "
                                           "labels (default: the one recorded by itmflow embed)."),
    images: Optional[Path] = typer.Option(None, "--images", help="Images root the store's file "
                                          "paths are relative to (default: the one recorded by "
                                          "itmflow embed)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on; anything but "
                             "loopback exposes the collection to the network (no authentication)."),
    port: int = typer.Option(8000, "--port", help="TCP port."),
    model: Optional[Path] = typer.Option(None, "--model", help="Model that encodes text queries "
                                         "(default: the one recorded by itmflow embed)."),
    tokenizer: Optional[str] = typer.Option(None, "--tokenizer", help="BERT tokenizer directory "
                                            "or id (default: the model's)."),
    device: str = typer.Option("auto", "--device", help="Device for encoding text queries (auto: CUDA when torch sees one)."),
    threads: int = typer.Option(1, "--threads", help="torch threads per text query (queries "
                                "running at once are encoded in parallel)."),
) -> None:
    """Serve an embedding directory: JSON API (/api, /openapi.json) and a web page (/)."""
    from pipeline.search.manifest import read_embedding_manifest

    if not 0 <= port <= 65535:
        raise typer.BadParameter(f"--port must be 0..65535, got {port}")
    read_embedding_manifest(embeddings)  # not an embedding directory: said before torch loads
    from rich.console import Console

    from pipeline.search.serve import ServeConfig, serve

    serve(ServeConfig(embeddings=embeddings, regions=regions, images=images, host=host, port=port,
                      model=model, tokenizer=tokenizer, device=device, threads=threads),
          console=Console(stderr=True))


def register(app: typer.Typer) -> None:
    """Add `itmflow serve` to `app`."""
    app.command("serve")(serve_command)
