"""`itmflow tokenize`: collection table → caption store (BERT WordPiece ids and/or SCAN word ids)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from itmflow.errors import ConfigError


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

    from pipeline.collections.table import read_collection
    from pipeline.text.bert import load_bert_tokenizer
    from pipeline.text.tokenize import tokenize_collection, vocab_captions
    from pipeline.text.vocab import WordVocab
    from stores.captions import write_caption_store

    if vocab is not None and build_vocab:
        raise ConfigError("give either --vocab JSON or --build-vocab, not both")
    if no_bert and vocab is None and not build_vocab:
        raise ConfigError("--no-bert without --vocab/--build-vocab leaves nothing to store; add a vocabulary")
    console = Console()
    coll = read_collection(collection)
    bert = None if no_bert else load_bert_tokenizer(tokenizer)
    words = None
    vocab_meta: dict | None = None
    if vocab is not None:
        words = WordVocab.load(vocab)
        vocab_meta = {"name": vocab.name, "source": "file", "size": len(words), "sha256": words.sha256,
                      "file_sha256": words.source_sha256}
    elif build_vocab:
        texts, which = vocab_captions(coll)
        with console.status(f"building the word vocabulary from {len(texts)} {which}"):
            words = WordVocab.build(texts, threshold=threshold)
        vocab_meta = {"name": "vocab.json", "source": f"built from {which}", "threshold": threshold,
                      "size": len(words), "sha256": words.sha256}
    with console.status(f"tokenizing {len(coll.captions)} captions"):
        table, stats = tokenize_collection(coll, bert=bert, vocab=words, max_length=max_length)
    meta = {
        "tokenizer": None if bert is None else {"name": bert.name, "vocab_sha256": bert.vocab_sha256,
                                                "vocab_size": bert.vocab_size, "max_length": max_length},
        "vocab": vocab_meta,
        "collection": {"name": collection.name, "source_format": coll.source_format,
                       "images": len(coll.images)},
        # the store adds its own "counts" and "provenance"; these are what tokenization saw
        "tokenization": stats.to_dict(),
    }
    write_caption_store(out, table, meta)
    if build_vocab and words is not None:
        words.save(out / "vocab.json")
    summary = Table(title=f"caption store {out}", show_header=False)
    summary.add_column("what")
    summary.add_column("value")
    summary.add_row("captions", str(stats.captions))
    if bert is not None:
        summary.add_row("BERT tokenizer", f"{bert.name} ({bert.vocab_size} word pieces)")
        summary.add_row("BERT length mean / max", f"{stats.bert_length_mean:.1f} / {stats.bert_length_max}")
        cut = f"{stats.bert_truncated} (to {max_length})" if max_length else "0 (no --max-length)"
        summary.add_row("truncated", f"[red]{cut}[/red]" if stats.bert_truncated else cut)
    if words is not None:
        summary.add_row("word vocabulary", f"{vocab_meta['name']} ({len(words)} words)")
        rate = stats.word_unknown / max(stats.word_tokens, 1)
        summary.add_row("unknown words", f"{stats.word_unknown} of {stats.word_tokens} ({rate:.2%})")
    console.print(summary)


def register(app: typer.Typer) -> None:
    """Add `itmflow tokenize` to ``app``."""
    app.command("tokenize")(tokenize)
