"""`itmflow tokenize`: collection table → caption store (BERT WordPiece ids and/or SCAN word ids).

Options → :class:`pipeline.text.tokenize.TokenizeConfig` → :func:`pipeline.text.tokenize.tokenize`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def tokenize(
    collection: Path = typer.Argument(..., metavar="COLLECTION",
                                      help="Collection table written by `itmflow ingest` (.parquet)."),
    out: Path = typer.Option(..., "--out", metavar="DIR", help="Caption store directory to write."),
    tokenizer: str = typer.Option("bert-base-uncased", "--tokenizer", metavar="DIR|HUB_ID",
                                  help="Hugging Face tokenizer: local directory or hub id (a hub id "
                                  "downloads unless cached)."),
    no_bert: bool = typer.Option(False, "--no-bert", help="Skip BERT ids (e.g. SGRAF only needs word ids)."),
    word_vocab: Optional[str] = typer.Option(
        None, "--word-vocab", metavar="JSON|coco_precomp|f30k_precomp",
        help="SCAN/SGRAF word-vocabulary JSON, or a shipped one by name (coco_precomp, "
        "f30k_precomp: the published checkpoints' ids)."),
    vocab_old: Optional[str] = typer.Option(None, "--vocab", hidden=True,
                                            help="Deprecated spelling of --word-vocab."),
    build_vocab: bool = typer.Option(False, "--build-vocab", help="Build a word vocabulary the SCAN way from "
                                     "train+restval+val captions; saved as OUT/vocab.json."),
    threshold: int = typer.Option(4, "--vocab-threshold", metavar="N",
                                  help="--build-vocab: keep words seen this often."),
    max_length: Optional[int] = typer.Option(None, "--max-length", metavar="N",
                                             help="Truncate BERT ids to this many tokens (keeping "
                                             "[SEP]); the count is reported."),
    force: bool = typer.Option(False, "--force", help="Replace the caption store already in --out."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as one JSON document on "
                                 "stdout (the table goes to stderr)."),
) -> None:
    """Tokenize every caption of a collection into a caption store."""
    from rich.table import Table

    from pipeline.commands._common import people_console, pick, print_json, refuse_existing
    from pipeline.text.tokenize import TokenizeConfig, tokenize

    word_vocab = pick(word_vocab, vocab_old, "--vocab", "--word-vocab")
    cfg = TokenizeConfig(collection=collection, out=out, tokenizer=None if no_bert else tokenizer,
                         vocab=word_vocab, build_vocab=build_vocab, vocab_threshold=threshold,
                         max_length=max_length).validate()
    refuse_existing(out, force, what="a caption store")
    console = people_console(as_json)
    result = tokenize(cfg, console=console)
    stats, bert, words = result.stats, result.bert, result.words
    if as_json:
        print_json({
            "store": str(result.out), "collection": str(collection), **stats.to_dict(),
            "bert": None if bert is None else {"name": bert.name, "vocab_size": bert.vocab_size},
            "word_vocab": None if words is None or result.vocab_meta is None else
            {"name": result.vocab_meta.get("name"), "size": len(words)},
        })
        return
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
