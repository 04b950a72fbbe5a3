"""Vector indexes, `itmflow embed` and `itmflow search` on tiny real stores and real photos."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from tests._support.eval_fixtures import EvalWorld, eval_world
from itmflow.errors import ConfigError, InputFileError
from pipeline.cli import app
from trainers.checkpoints import from_pretrained
from pipeline.search.embeddings import EmbeddingDir, build_index, choose_index
from pipeline.search.render import TILE, Hit, image_grid


def _unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    v = rng.standard_normal((n, d)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_flat_index_is_exact_and_approximate_ones_recall_well() -> None:
    rng = np.random.default_rng(0)
    # Clustered vectors, like real embeddings (uniform random ones are IVF's worst case).
    centres = _unit(rng, 40, 32)
    base = centres[rng.integers(40, size=3000)] + 0.3 * _unit(rng, 3000, 32)
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    queries = centres[rng.integers(40, size=50)] + 0.3 * _unit(rng, 50, 32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    truth = np.argsort(-(queries @ base.T), axis=1)[:, :10]
    scores, idx = build_index(base, "flat").search(queries, 10)
    np.testing.assert_array_equal(idx, truth)
    np.testing.assert_allclose(scores, np.take_along_axis(queries @ base.T, truth, 1), atol=1e-5)
    for kind in ("ivf", "hnsw"):
        _, got = build_index(base, kind).search(queries, 10)
        recall = np.mean([len(set(g) & set(t)) / 10 for g, t in zip(got, truth)])
        assert recall >= 0.9, (kind, recall)
    assert choose_index("auto", 10) == "flat" and choose_index("auto", 10**6) == "ivf"
    with pytest.raises(ConfigError, match="index kind"):
        choose_index("annoy", 10)


def test_grid_png_shows_real_photos_and_missing_tiles(photo_paths: list[Path], tmp_path: Path) -> None:
    root = photo_paths[0].parent
    hits = [Hit(1, 0.9, "a", file=photo_paths[0].name), Hit(2, 0.5, "b", file="nope.jpg"),
            Hit(3, 0.1, "c", file="../escape.jpg")]
    png = image_grid(hits, root, tmp_path / "g.png", title="t")
    with Image.open(png) as im:
        arr = np.asarray(im.convert("RGB"))
    assert im.width >= 3 * TILE
    first = arr[36:36 + TILE, 8:8 + TILE]
    assert first.std() > 20                      # a real photo, not the flat grey tile
    second = arr[36 + 4:36 + 90, 8 + TILE + 8:8 + 2 * TILE + 8]   # above its label text
    assert second.std() < 1 and second.mean() > 200    # the "unreadable" tile is flat grey


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, minilm_dir: Path) -> EvalWorld:
    return eval_world(tmp_path_factory.mktemp("evalworld"), minilm_dir)


@pytest.fixture(scope="module")
def images_root(world: EvalWorld, photo_paths: list[Path], tmp_path_factory) -> Path:
    """Real photos under the file names the region store records (``<image_id>.jpg``)."""
    from stores import open_region_store

    root = tmp_path_factory.mktemp("images")
    for n, image_id in enumerate(open_region_store(world.regions).ids()):
        shutil.copy(photo_paths[n % len(photo_paths)], root / f"{image_id}.jpg")
    return root


@pytest.fixture(scope="module")
def embedded(world: EvalWorld, images_root: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("emb")
    res = CliRunner().invoke(app, ["embed", str(world.tern_run), "--regions", str(world.regions),
                                   "--captions", str(world.captions), "--out", str(out),
                                   "--images", str(images_root), "--no-progress"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    return out



@pytest.mark.slow
def test_embed_writes_parquet_faiss_and_true_vectors(world: EvalWorld, embedded: Path) -> None:
    manifest = json.loads((embedded / "manifest.json").read_text())
    assert manifest["format"] == "itmflow.embeddings" and manifest["model"]["kind"] == "tern"
    assert not Path(manifest["regions"]).is_absolute()
    n_img = sum(world_split for world_split in (8, 5, 10))
    assert manifest["sides"]["images"]["count"] == n_img
    assert manifest["sides"]["captions"]["count"] == 5 * n_img
    table = pq.read_table(embedded / "images.parquet")
    assert table.column_names == ["image_id", "file", "vector"]
    vecs = np.asarray(table.column("vector").to_pylist(), dtype=np.float32)
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    # The stored vector of an image is the model's own embedding of its store row.
    from trainers.data import RegionImages, collate_images

    model = from_pretrained(world.tern_run / "best")
    images = RegionImages(world.regions, need_geometry=True)
    row = images.get(table.column("image_id")[3].as_py())
    with torch.no_grad():
        ref = model.encode_images(collate_images([row]))[0].numpy()
    np.testing.assert_allclose(vecs[3], ref / np.linalg.norm(ref), atol=1e-5)
    emb = EmbeddingDir.open(embedded)
    assert emb.side("images").index.ntotal == n_img


@pytest.mark.slow
def test_text_search_ranks_like_brute_force_and_draws_png(world: EvalWorld, embedded: Path,
                                                          minilm_dir: Path) -> None:
    png = embedded / "q.png"
    res = CliRunner().invoke(app, ["search", str(embedded), "--text", "a red car and a blue dog",
                                   "--top", "4", "--png", str(png)])
    assert res.exit_code == 0, res.output + repr(res.exception)
    # Brute force: encode the query with the real tokenizer and the model, cosine vs every image.
    from pipeline.text.bert import encode_captions, load_bert_tokenizer

    model = from_pretrained(world.tern_run / "best")
    ids, _ = encode_captions(load_bert_tokenizer(str(minilm_dir)), ["a red car and a blue dog"])
    with torch.no_grad():
        q = model.encode_captions({"bert_ids": torch.tensor(ids),
                                   "bert_lengths": torch.tensor([len(ids[0])])})[0].numpy()
    emb = EmbeddingDir.open(embedded)
    side = emb.side("images")
    q = q / np.linalg.norm(q)
    cos = side.vectors @ q
    order = np.argsort(-cos)[:4]
    rows = [[c.strip() for c in ln.split("│")[1:-1]] for ln in res.output.splitlines() if "│" in ln]
    assert [r[0] for r in rows] == ["1", "2", "3", "4"]
    np.testing.assert_allclose([float(r[1]) for r in rows], cos[order], atol=2e-4)
    assert rows[0][2] == side.row(int(order[0]))["image_id"]
    with Image.open(png) as im:
        assert im.width > 4 * TILE and np.asarray(im.convert("RGB")).std() > 20


@pytest.mark.slow
def test_image_query_returns_captions_and_errors_are_clear(embedded: Path) -> None:
    emb = EmbeddingDir.open(embedded)
    res = CliRunner().invoke(app, ["search", str(embedded), "--image", "test-0002", "--top", "3"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    q = emb.side("images").vectors[emb.side("images").position("image_id", "test-0002")]
    caps = emb.side("captions")
    best = caps.row(int(np.argmax(caps.vectors @ q)))["caption_id"]
    assert best in res.output
    assert (embedded / "search-image-test-0002-captions.png").is_file()
    res = CliRunner().invoke(app, ["search", str(embedded), "--image", "nope"])
    assert isinstance(res.exception, InputFileError) and "nope" in str(res.exception)
    res = CliRunner().invoke(app, ["search", str(embedded)])
    assert isinstance(res.exception, ConfigError)
    res = CliRunner().invoke(app, ["search", str(embedded.parent), "--text", "x"])
    assert isinstance(res.exception, InputFileError) and "itmflow embed" in str(res.exception)


@pytest.mark.slow
def test_several_queries_load_the_model_once_and_print_json(world: EvalWorld, embedded: Path,
                                                           tmp_path: Path, monkeypatch) -> None:
    import trainers.checkpoints as checkpoints

    loads = []
    real = checkpoints.load_model
    monkeypatch.setattr(checkpoints, "load_model", lambda *a, **k: loads.append(a) or real(*a, **k))
    queries = tmp_path / "queries.txt"
    queries.write_text("a red car\n\na blue dog\n")
    res = CliRunner().invoke(app, ["search", str(embedded), "--text", "a cat", "--queries",
                                   str(queries), "--image", "test-0001", "--top", "3", "--json"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    doc = json.loads(res.stdout)
    assert [(q["kind"], q["query"]) for q in doc["queries"]] == [
        ("text", "a cat"), ("text", "a red car"), ("text", "a blue dog"), ("image", "test-0001")]
    assert len(loads) == 1  # one model for the three text queries
    for q in doc["queries"]:
        assert [h["rank"] for h in q["hits"]] == [1, 2, 3] and Path(q["png"]).is_file()
    assert len({q["png"] for q in doc["queries"]}) == 4
    assert doc["queries"][3]["target"] == "captions" and "text" in doc["queries"][3]["hits"][0]
    # the image query towards images writes another picture than towards captions
    res = CliRunner().invoke(app, ["search", str(embedded), "--image", "test-0001", "--target",
                                   "images", "--json"])
    assert json.loads(res.stdout)["queries"][0]["png"] != doc["queries"][3]["png"]


@pytest.mark.slow
def test_embed_json_and_force(world: EvalWorld, tmp_path: Path) -> None:
    out = tmp_path / "e"
    res = CliRunner().invoke(app, ["embed", str(world.tern_run), "--regions", str(world.regions),
                                   "--out", str(out), "--no-progress", "--json"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    doc = json.loads(res.stdout)
    assert doc["out"] == str(out) and doc["sides"]["images"]["count"] == 23


@pytest.mark.slow
def test_embed_keeps_existing_embeddings_without_force(world: EvalWorld, embedded: Path) -> None:
    before = (embedded / "images.parquet").read_bytes()
    res = CliRunner().invoke(app, ["embed", str(world.tern_run), "--regions", str(world.regions),
                                   "--out", str(embedded), "--no-progress"])
    assert isinstance(res.exception, ConfigError) and "--force" in str(res.exception)
    assert (embedded / "images.parquet").read_bytes() == before


@pytest.mark.slow
def test_embed_refuses_sgraf(world: EvalWorld, tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["embed", str(world.sgr_ckpt), "--regions", str(world.regions),
                                   "--out", str(tmp_path / "e"), "--no-progress"])
    assert isinstance(res.exception, ConfigError) and "TERN or TERAN" in str(res.exception)
