"""The tiny BERT configuration the model, checkpoint, training, evaluation and example tests build.

One layer, hidden size 32, the bert-base-uncased vocabulary (30522 WordPiece tokens, so the real
MiniLM tokenizer of the ``minilm_dir`` fixture fits it), built empty with random weights: fast on a
CPU and shaped like the real thing. A test that needs another size says which in ``changes``.
"""

from __future__ import annotations

from typing import Any

_TINY_BERT: dict[str, Any] = {"vocab_size": 30522, "hidden_size": 32, "num_hidden_layers": 1,
                              "num_attention_heads": 2, "intermediate_size": 64,
                              "max_position_embeddings": 128}


def tiny_bert(**changes: Any) -> dict[str, Any]:
    """A fresh copy of the tiny BERT config (a ``transformers.BertConfig`` dict) with ``changes``."""
    return {**_TINY_BERT, **changes}
