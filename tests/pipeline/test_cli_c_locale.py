"""The CLI under the C locale on a collection whose image id and captions are not ASCII: ingest,
tokenize, extract with the tiny random detector, every export format and an import back. Every text
file is read and written as UTF-8 whatever the locale (a BUTD TSV export crashed on ``café.jpg``)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests._support.extract_support import TINY_CLI

pytestmark = [pytest.mark.ray, pytest.mark.slow]

CAPTIONS = ["Un café crème sur une table", "Crème brûlée à côté d'un café", "Ein Café in Köln",
            "Café con leche, señor", "Кофе и круассан"]


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONUTF8", "PYTHONIOENCODING", "LANGUAGE")}
    env.update(LC_ALL="C", LANG="C", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "pipeline", *args], env=env, cwd=cwd, capture_output=True,
                          timeout=600)
    assert proc.returncode == 0, (args, proc.stdout.decode(errors="replace")[-3000:],
                                  proc.stderr.decode(errors="replace")[-3000:])
    return proc


def test_cli_under_c_locale_with_non_ascii_ids(tmp_path, photo_dir):
    repo = Path(__file__).resolve().parents[2]
    root = tmp_path / "photos"
    root.mkdir()
    shutil.copy(photo_dir / "astronaut.jpg", root / "café.jpg")
    shutil.copy(photo_dir / "camera.png", root / "camera.png")
    lines = [json.dumps({"file": "café.jpg", "captions": CAPTIONS, "split": "train"}, ensure_ascii=False),
             json.dumps({"file": "camera.png", "captions": [c + " 2" for c in CAPTIONS], "split": "train"},
                        ensure_ascii=False)]
    (root / "captions.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    coll = tmp_path / "coll.parquet"
    _cli("ingest", str(root), "--format", "folder", "--out", str(coll), cwd=repo)
    caps = tmp_path / "caps"
    _cli("tokenize", str(coll), "--out", str(caps), "--no-bert", "--build-vocab", "--vocab-threshold", "1", cwd=repo)
    store = tmp_path / "store"
    cli = [a if a != "10-100" else "36" for a in TINY_CLI]  # 4 proposals: rows padded to 36 (stores.schema)
    _cli("extract", str(coll), "--out", str(store), *cli, "--batch-size", "2", "--num-cpus", "2",
         "--summary", str(tmp_path / "summary.json"), cwd=repo)
    summary = json.loads((tmp_path / "summary.json").read_text(encoding="utf-8"))
    assert summary["processed"] == 2 and summary["failed"] == 0 and summary["padded"] == 2
    inspect = _cli("store", "inspect", str(store), cwd=repo)
    assert inspect.returncode == 0
    for fmt in ("butd-tsv", "tern", "milvlg-npz", "scan-precomp"):
        extra = ["--captions", str(caps)] if fmt == "scan-precomp" else []
        _cli("store", "export", str(store), "--format", fmt, "--out", str(tmp_path / fmt), *extra, cwd=repo)
    tsv = (tmp_path / "butd-tsv" / "train.tsv").read_text(encoding="utf-8")
    assert tsv.startswith("café.jpg\t") or "\ncafé.jpg\t" in tsv
    assert (tmp_path / "tern" / "bu_att" / "café.jpg.npz").is_file()
    assert (tmp_path / "milvlg-npz" / "café.jpg.npz").is_file()
    ids = (tmp_path / "scan-precomp" / "train_ids.txt").read_text(encoding="utf-8").split("\n")
    assert "café.jpg" in ids
    assert "Crème brûlée à côté d'un café" in (tmp_path / "scan-precomp" / "train_caps.txt").read_text(encoding="utf-8")
    assert np.load(tmp_path / "scan-precomp" / "train_ims.npy").shape[1] == 36
    back = tmp_path / "back"
    _cli("store", "import", str(tmp_path / "butd-tsv" / "train.tsv"), "--format", "butd-tsv", "--out", str(back),
         cwd=repo)
    from stores import open_region_store

    with open_region_store(back) as reader:
        assert "café.jpg" in reader.ids()
