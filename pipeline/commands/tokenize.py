"""`itmflow tokenize`: collection table → caption store (BERT WordPiece ids and/or SCAN word ids).

Options → :class:`pipeline.text.tokenize.TokenizeConfig` → :func:`pipeline.text.tokenize.tokenize`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def tokenize(
    collection: Path = typer.Argument(..., help="Collection table written by `itmflow ingest` (.parquet)."),
    out: Path = typer.Option(..., "--out", help="Caption store directory to write."),
    tokenizer: str = typer.Option("bert-base-uncased", "--tokenizer", help="Hugging Face tokenizer: local "
                                  "directory or hub id (a hub id downloads unless cached)."),
    no_bert: bool = typer.Option(False, "--no-bert", help="Skip BERT ids (e.g. SGRAF only needs word ids)."),
    vocab: Optional[Path] = typer.Option(None, "--vocab", help="SCAN/SGRAF vocabulary JSON, or a shipped "
                                         "one by name (coco_precomp, f30k_precomp: the published "
                                         "checkpoints' ids)."),
    build_vocab: bool = typer.Option(False, "--build-vocab", help="Build a word vocabulary the SCAN way from "
                                     "train+restval+val captions; saved as OUT/vocab.json."),
    threshold: int = typer.Option(4, "--vocab-threshold", help="--build-vocab: keep words seen this often."),
    max_length: Optional[int] = typer.Option(None, "--max-length", help="Truncate BERT ids to this many "
                                             "tokens (keeping [SEP]); the count is reported."),
) -> None:
    """Tokenize every caption of a collection into a caption store."""
    from rich.console import Console
    from rich.table import Table

    from pipeline.text.tokenize import TokenizeConfig, tokenize

    cfg = TokenizeConfig(collection=collection, out=out, tokenizer=None if no_bert else tokenizer,
                         vocab=vocab, build_vocab=build_vocab, vocab_threshold=threshold,
                         max_length=max_length).validate()
    console = Console()
    result = tokenize(cfg, console=console)
    stats, bert, words = result.stats, result.bert, result.words
    summary = Table(title=f"caption store {out}", show_header=False)
    summary.add_column("what")
    summary.add_column("value")
    summary.add_row("captions", str(stats.captions))
    if bert is not None:
        summary.add_row("BERT tokenizer", f"{bert.name} ({bert.vocab_size} word pieces)")
        summary.add_row("BERT length mean / max", f"{stats.bert_length_mean:.1f} / {stats.bert_length_max}")
        cut = f"{stats.bert_truncated} (to {max_length})" if max_length else "0 (no --max-length)"
        summary.add_row("truncated", f"[red]{cut}[/red]" if stats.bert_truncated else cut)
    if words is not None and result.vocab_meta is not None:
        summary.add_row("word vocabulary", f"{result.vocab_meta['name']} ({len(words)} words)")
        rate = stats.word_unknown / max(stats.word_tokens, 1)
        summary.add_row("unknown words", f"{stats.word_unknown} of {stats.word_tokens} ({rate:.2%})")
    console.print(summary)


def register(app: typer.Typer) -> None:
    """Add `itmflow tokenize` to ``app``."""
    app.command("tokenize")(tokenize)
