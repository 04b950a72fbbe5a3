"""`itmflow evaluate` end to end on tiny real stores: our runs, authors' SGRAF checkpoints, ensembles."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from tests._support.eval_fixtures import EvalWorld, eval_world
from itmflow.errors import ConfigError, InputFileError
from pipeline.cli import app
from trainers.evaluation.ndcg import create_relevance, finish_relevance, ndcg_protocol, open_relevance
from trainers.evaluation.recall import evaluate_folds, evaluate_sims

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, minilm_dir: Path) -> EvalWorld:
    return eval_world(tmp_path_factory.mktemp("evalworld"), minilm_dir)


def _invoke(args: list[str]):
    return CliRunner().invoke(app, ["evaluate", *args, "--no-progress"])


def test_run_with_folds_rouge_and_saved_sims(world: EvalWorld, tmp_path: Path) -> None:
    out = tmp_path / "eval"
    sims_file = tmp_path / "sims.npy"
    res = _invoke([str(world.teran_run), "--regions", str(world.regions), "--captions",
                   str(world.captions), "--split", "test", "--folds", "2", "--compute-rouge",
                   "--save-sims", str(sims_file), "--out", str(out), "--max-memory-gb", "0.00001"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    assert "text→image" in res.output and "rsum" in res.output
    sims = np.load(sims_file)
    assert sims.shape == (10, 50)
    doc = json.loads((out / "metrics.json").read_text())
    expected = evaluate_folds(sims, n_folds=2)
    assert doc["recall"]["t2i"]["r1"] == pytest.approx(expected.metrics.t2i.r1)
    assert doc["recall"]["i2t"]["medr"] == pytest.approx(expected.metrics.i2t.medr)
    assert doc["recall"]["rsum"] == pytest.approx(expected.metrics.rsum)
    assert len(doc["recall"]["folds"]) == 2 and doc["n_images"] == 10
    ranks = np.load(out / "ranks.npz")
    np.testing.assert_array_equal(ranks["t2i_ranks"], expected.t2i_ranks)
    assert list(ranks["image_ids"][:2]) == ["test-0000", "test-0001"]
    assert ranks["caption_ids"][5] == "test-0001#0"
    # ROUGE-L relevance was computed in the authors' layout and used for NDCG.
    rel_path = Path(doc["relevance_files"]["rougeL"])
    assert rel_path.stat().st_size == 50 * 10 * 4
    rel = open_relevance(rel_path, 50, 10)
    want = ndcg_protocol(sims, rel, n_folds=2)
    assert doc["ndcg"]["rougeL"]["t2i"] == pytest.approx(want.t2i)
    assert doc["ndcg"]["rougeL"]["i2t"] == pytest.approx(want.i2t)
    md = (out / "metrics.md").read_text()
    assert "| fold |" in md and "NDCG@25 rougeL" in md
    # With folds, the same matrix as one pool of all images (COCO 1K → 5K) comes along.
    pool = evaluate_sims(sims)
    assert doc["all_images"]["recall"]["rsum"] == pytest.approx(pool.metrics.rsum)
    np.testing.assert_array_equal(ranks["i2t_ranks_all"], pool.i2t_ranks)
    assert doc["all_images"]["ndcg"]["rougeL"]["t2i"] == pytest.approx(ndcg_protocol(sims, rel).t2i)
    assert "all 10" in md and "all 10" in res.output
    # --json: metrics.json (and the files written) as the only thing on stdout
    res = _invoke(["--sims", str(sims_file), "--regions", str(world.regions), "--captions",
                   str(world.captions), "--folds", "2", "--out", str(tmp_path / "eval2"), "--json"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    printed = json.loads(res.stdout)
    assert printed["recall"]["rsum"] == pytest.approx(expected.metrics.rsum)
    assert Path(printed["files"]["json"]) == tmp_path / "eval2" / "metrics.json"


def test_authors_sgraf_checkpoints_and_ensemble(world: EvalWorld, tmp_path: Path) -> None:
    common = ["--regions", str(world.regions), "--captions", str(world.captions), "--split", "test"]
    parts = []
    for name, ck in (("sgr", world.sgr_ckpt), ("saf", world.saf_ckpt)):
        f = tmp_path / f"{name}.npy"
        res = _invoke(["--checkpoint", str(ck), *common, "--save-sims", str(f),
                       "--out", str(tmp_path / name)])
        assert res.exit_code == 0, res.output + repr(res.exception)
        parts.append(np.load(f))
        assert ((parts[-1] > 0) & (parts[-1] < 1)).all()           # sigmoid scores
    ens_file = tmp_path / "ens.npy"
    res = _invoke(["--checkpoint", str(world.sgr_ckpt), "--checkpoint", str(world.saf_ckpt),
                   *common, "--save-sims", str(ens_file), "--out", str(tmp_path / "ens")])
    assert res.exit_code == 0, res.output + repr(res.exception)
    ens = np.load(ens_file)
    np.testing.assert_allclose(ens, (parts[0].astype(np.float64) + parts[1]) / 2, atol=1e-6)
    doc = json.loads((tmp_path / "ens" / "metrics.json").read_text())
    assert doc["recall"]["rsum"] == pytest.approx(evaluate_sims(ens).metrics.rsum)
    assert len(doc["sources"]) == 2
    # The same ensemble from the saved matrices.
    res = _invoke(["--sims", str(tmp_path / "sgr.npy"), "--sims", str(tmp_path / "saf.npy"),
                   *common, "--out", str(tmp_path / "ens2")])
    assert res.exit_code == 0, res.output + repr(res.exception)
    doc2 = json.loads((tmp_path / "ens2" / "metrics.json").read_text())
    assert doc2["recall"] == doc["recall"]


def test_relevance_dir_in_wrong_order_is_refused(world: EvalWorld, tmp_path: Path) -> None:
    rel_dir = tmp_path / "rel"
    mm = create_relevance(rel_dir / "coco-test-rougeL.npy", 50, 10)
    mm[:] = np.random.default_rng(0).random((50, 10)).astype(np.float32)   # not our caption order
    finish_relevance(mm, rel_dir / "coco-test-rougeL.npy")
    sims = tmp_path / "s.npy"
    np.save(sims, np.random.default_rng(1).random((10, 50)).astype(np.float32))
    res = _invoke(["--sims", str(sims), "--regions", str(world.regions), "--captions",
                   str(world.captions), "--relevance", str(rel_dir), "--out", str(tmp_path / "o")])
    assert isinstance(res.exception, InputFileError)
    assert "own image" in str(res.exception)


def test_bad_invocations_name_the_problem(world: EvalWorld, tmp_path: Path) -> None:
    base = ["--regions", str(world.regions), "--captions", str(world.captions)]
    res = _invoke(base)
    assert isinstance(res.exception, ConfigError) and "exactly one source" in str(res.exception)
    res = _invoke([str(world.teran_run), *base, "--folds", "3", "--out", str(tmp_path / "x")])
    assert isinstance(res.exception, ConfigError) and "folds" in str(res.exception)
    res = _invoke([str(tmp_path), *base])
    assert isinstance(res.exception, InputFileError) and "run directory" in str(res.exception)
    bad = tmp_path / "wrong.npy"
    np.save(bad, np.zeros((3, 15), dtype=np.float32))
    res = _invoke([str(world.teran_run), *base, "--split", "testall"])
    assert isinstance(res.exception, ConfigError) and "test (50 captions)" in str(res.exception)
    res = _invoke(["--sims", str(bad), *base, "--out", str(tmp_path / "y")])
    assert isinstance(res.exception, InputFileError) and "(10, 50)" in str(res.exception)


def test_relevance_dir_with_rouge_and_spice_in_authors_layout(world: EvalWorld, tmp_path: Path) -> None:
    from trainers.data import MatchingData
    from trainers.evaluation.rouge import write_rouge_relevance

    data = MatchingData(world.regions, world.captions, model="sgraf-sgr")
    evalset = data.eval_set("test")
    raw = [data.captions.raw[r] for r in evalset.caption_rows]
    rel_dir = tmp_path / "relevances"
    write_rouge_relevance(raw, rel_dir / "coco-test-rougeL.npy")
    spice = np.random.default_rng(2).random((50, 10)).astype(np.float32)
    spice[spice < 0.5] = 0
    spice[4, 1] = np.nan                                     # SPICE's "unparsable" marker
    spice.tofile(rel_dir / "coco-test-spice.npy")            # raw float32, no header
    sims_path = tmp_path / "s.npy"
    sims = np.random.default_rng(3).random((10, 50)).astype(np.float32)
    np.save(sims_path, sims)
    out = tmp_path / "o"
    res = _invoke(["--sims", str(sims_path), "--regions", str(world.regions), "--captions",
                   str(world.captions), "--relevance", str(rel_dir), "--ndcg-i2t-nonzero",
                   "--folds", "2", "--out", str(out)])
    assert res.exit_code == 0, res.output + repr(res.exception)
    doc = json.loads((out / "metrics.json").read_text())
    assert set(doc["ndcg"]) == {"rougeL", "spice"} and doc["ndcg_i2t_exclude_zeros"] is True
    assert doc["ndcg"]["spice"]["nan_relevance_entries"] == 1
    for method in ("rougeL", "spice"):
        rel = open_relevance(rel_dir / f"coco-test-{method}.npy", 50, 10)
        want = ndcg_protocol(sims, rel, n_folds=2, i2t_exclude_zeros=True)
        assert doc["ndcg"][method]["t2i"] == pytest.approx(want.t2i)
        assert doc["ndcg"][method]["i2t"] == pytest.approx(want.i2t)
    ranks = np.load(out / "ranks.npz")
    assert ranks["t2i_ndcg_spice"].shape == (50,) and ranks["i2t_ndcg_rougeL"].shape == (10,)
