"""`itmflow weights`: the catalog, and downloads from a local Range-capable HTTP server (never the
internet): sha256 check, resume of an interrupted transfer, refusal of a wrong hash."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from typer.testing import CliRunner

from itmflow import weights as W
from itmflow.errors import ItmflowError
from pipeline.cli import app

ROOT = Path(__file__).resolve().parents[2]
PAYLOAD = bytes(range(256)) * 4096 + b"tail"  # ~1 MiB, not a multiple of the chunk size
DROP_AT = 300_001


class _Server:
    """Serves PAYLOAD at /ckpt.pth with Range support; records each request's Range header; can
    drop the connection after ``drop_after`` bytes on the first request."""

    def __init__(self, payload: bytes, drop_after: int | None = None):
        self.payload = payload
        self.drop_after = drop_after
        self.ranges: list[str | None] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):
                if self.path != "/ckpt.pth":
                    self.send_error(404)
                    return
                rng = self.headers.get("Range")
                outer.ranges.append(rng)
                data, start = outer.payload, 0
                if rng:
                    start = int(rng.split("=")[1].split("-")[0])
                    if start >= len(data):
                        self.send_response(416)
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(data) - start))
                self.send_header("Accept-Ranges", "bytes")
                self.end_headers()
                body = data[start:]
                if outer.drop_after is not None and len(outer.ranges) == 1:
                    self.wfile.write(body[:outer.drop_after])
                    self.wfile.flush()
                    self.connection.shutdown(2)  # drop mid-body
                    return
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/ckpt.pth"

    def __enter__(self) -> _Server:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "itmflow-cache"
    monkeypatch.setenv("ITMFLOW_CACHE", str(root))
    return root


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


SHA = hashlib.sha256(PAYLOAD).hexdigest()


def test_download_checks_sha256_and_prints_the_path(cache):
    with _Server(PAYLOAD) as server:
        res = CliRunner().invoke(app, ["weights", "download", server.url, "--sha256", SHA,
                                       "--no-progress"])
        assert res.exit_code == 0, res.output
        path = Path(res.output.strip().splitlines()[-1])
        assert path.read_bytes() == PAYLOAD and path.name == "ckpt.pth"
        assert cache in path.parents
        assert server.ranges == [None]
        # a second call finds it in the cache: no request
        again = W.download(server.url, sha256=SHA)
        assert again == path and server.ranges == [None]


def test_download_to_a_directory_with_progress(tmp_path, cache):
    seen = []
    with _Server(PAYLOAD) as server:
        path = W.download(server.url, to=tmp_path / "here", progress=lambda d, t: seen.append((d, t)))
    assert path == tmp_path / "here" / "ckpt.pth" and path.read_bytes() == PAYLOAD
    assert seen[-1] == (len(PAYLOAD), len(PAYLOAD))
    assert _files(cache) == []


def test_interrupted_download_resumes_with_a_range_request(cache):
    with _Server(PAYLOAD, drop_after=DROP_AT) as server:
        path = W.download(server.url, sha256=SHA)
        assert server.ranges == [None, f"bytes={DROP_AT}-"]
    assert path.read_bytes() == PAYLOAD
    assert not path.with_name(path.name + ".part").exists()


def test_interrupted_download_resumes_in_a_later_call(tmp_path):
    dest = tmp_path / "w" / "ckpt.pth"
    with _Server(PAYLOAD, drop_after=DROP_AT) as server:
        with pytest.raises(W.DownloadError, match="run the command again to resume"):
            W.download_url(server.url, dest, retries=0)
        part = dest.with_name("ckpt.pth.part")
        assert part.stat().st_size == DROP_AT and not dest.exists()
        W.download_url(server.url, dest, sha256=SHA)
        assert server.ranges == [None, f"bytes={DROP_AT}-"]
    assert dest.read_bytes() == PAYLOAD and not part.exists()


def test_wrong_sha256_is_refused_in_one_line_and_keeps_nothing(cache):
    wrong = "0" * 64
    with _Server(PAYLOAD) as server:
        env = {**os.environ, "ITMFLOW_CACHE": str(cache), "PYTHONPATH": str(ROOT)}
        proc = subprocess.run([sys.executable, "-m", "pipeline", "weights", "download", server.url,
                               "--sha256", wrong, "--no-progress"], capture_output=True, text=True,
                              env=env, cwd=ROOT, timeout=120)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "sha256 mismatch" in lines[0] and wrong in lines[0], proc.stderr
    assert proc.stdout == ""
    assert _files(cache) == []  # no file, no .part


def test_resumed_download_with_a_wrong_hash_keeps_no_part(cache):
    with _Server(PAYLOAD, drop_after=DROP_AT) as server:
        with pytest.raises(W.DownloadError, match="sha256 mismatch"):
            W.download(server.url, sha256="f" * 64)
    assert _files(cache) == []


def test_bad_sha256_argument_and_http_errors(cache):
    with pytest.raises(ItmflowError, match="64 hexadecimal"):
        W.download("http://127.0.0.1:9/x.pth", sha256="abc")
    with _Server(PAYLOAD) as server:
        with pytest.raises(W.DownloadError, match="HTTP 404"):
            W.download(server.url.replace("ckpt.pth", "missing.pth"))
    assert _files(cache) == []


def test_catalog_lists_the_real_releases_honestly():
    cat = W.CATALOG
    for name in ("frcnn-vg-finetuned", "bua-caffe-frcn-r101-k36", "bua-caffe-frcn-r101-k10-100",
                 "faster-rcnn-from-caffe-attr", "faster-rcnn-from-caffe-attr-original", "tern-coco",
                 "teran-pretrained", "sgraf-coco-sgr", "sgraf-f30k-saf", "bert-base-uncased"):
        assert name in cat
    assert cat["frcnn-vg-finetuned"].hub_repo == "unc-nlp/frcnn-vg-finetuned"
    assert cat["frcnn-vg-finetuned"].downloadable
    # no hash is known for any of them: none may be invented
    assert all(e.sha256 is None for e in cat.values())
    # OneDrive / Google Drive / dead links: not downloadable, and they say where to look
    for name in ("bua-caffe-frcn-r101-k36", "faster-rcnn-from-caffe-attr", "tern-coco",
                 "sgraf-coco-saf", "teran-pretrained"):
        entry = cat[name]
        assert not entry.downloadable and entry.page.startswith("https://github.com/")


def test_weights_list_and_json():
    res = CliRunner().invoke(app, ["weights", "list"])
    assert res.exit_code == 0, res.output
    assert "frcnn-vg-finetuned" in res.output and "unknown" in res.output
    res = CliRunner().invoke(app, ["weights", "list", "--json"])
    rows = json.loads(res.output)
    by = {r["name"]: r for r in rows}
    assert by["frcnn-vg-finetuned"]["size"].startswith("262 MB")
    assert by["tern-coco"]["sha256"] == "unknown" and by["tern-coco"]["downloadable"] is False
    assert "evaluate --checkpoint" in by["sgraf-coco-sgr"]["used_by"]
    assert "detect --weights" in by["bua-caffe-frcn-r101-k36"]["used_by"]


def test_manual_entries_say_where_to_get_them_and_use_a_hand_placed_file(cache):
    with pytest.raises(W.DownloadError) as info:
        W.download("bua-caffe-frcn-r101-k36")
    text = str(info.value)
    assert "cannot be downloaded by itmflow" in text and "github.com/MILVLG" in text
    assert "\n" not in text
    # the same for a weights option: resolve() of the name
    with pytest.raises(W.DownloadError, match="cannot be downloaded"):
        W.resolve("tern-coco")
    placed = cache / "weights" / "tern-coco" / "model_best_ndcg.pth"
    placed.parent.mkdir(parents=True)
    placed.write_bytes(b"x")
    assert W.resolve("tern-coco") == placed
    # archives must be extracted first
    tgz = cache / "weights" / "teran-pretrained" / "TERAN_pretrained_models.tgz"
    tgz.parent.mkdir(parents=True)
    tgz.write_bytes(b"x")
    with pytest.raises(W.DownloadError, match="archive"):
        W.resolve("teran-pretrained")


def test_a_catalog_name_with_a_url_is_downloaded_when_used(cache, monkeypatch):
    from detectors.butd.weights import resolve_weights

    with _Server(PAYLOAD) as server:
        entry = W.WeightsEntry("test-ckpt", "test", "detector", ("ckpt.pth",), "https://example",
                               "detect --weights", url=server.url, sha256=SHA)
        monkeypatch.setitem(W.CATALOG, "test-ckpt", entry)
        path = resolve_weights("test-ckpt")
        assert path == cache / "weights" / "test-ckpt" / "ckpt.pth"
        assert path.read_bytes() == PAYLOAD
        assert resolve_weights("test-ckpt") == path and len(server.ranges) == 1  # cached now


def test_evaluate_checkpoint_accepts_a_catalog_name(cache):
    from trainers.checkpoints import load_model

    with pytest.raises(ItmflowError, match="tern-coco cannot be downloaded"):
        load_model("tern-coco")
    placed = cache / "weights" / "sgraf-f30k-saf" / "model_best.pth.tar"
    placed.parent.mkdir(parents=True)
    placed.write_bytes(b"not a checkpoint")
    # the name resolves to the hand-placed file, which is then read (and refused: not a torch file)
    with pytest.raises(ItmflowError, match=str(placed)):
        load_model("sgraf-f30k-saf")


def test_unknown_weights_keep_their_message(tmp_path):
    from detectors.butd.weights import resolve_weights

    with pytest.raises(ItmflowError, match="not found"):
        resolve_weights(str(tmp_path / "nope.pth"))
