"""`itmflow serve`: the JSON API against a real uvicorn server on 127.0.0.1 (httpx), and the web
page in a real headless Chromium (Selenium), on the sample photos.

The world (built once per session): the 12 sample photos ingested as a folder collection and
tokenized with the real MiniLM WordPiece tokenizer (`itmflow ingest` / `itmflow tokenize`), a
region store written through the public writer with each photo's real size, 10 boxes inside it,
VG object / attribute ids and confidences, and a detector block that says random weights; a tiny
TERN model (random weights) saved as a run; `embed` over both stores. One photo in the images root
is then replaced by a symlink that points outside the root.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import httpx
import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from itmflow.errors import ConfigError
from pipeline.cli import app
from pipeline.search.serve import MAX_QUERY_CHARS, SearchService, ServeConfig, build_app, running

K_REGIONS = 10
ESCAPING = "clock.gif"          # its file in the images root is a symlink to outside the root
TINY_BERT = {"vocab_size": 30522, "hidden_size": 32, "num_hidden_layers": 1,
             "num_attention_heads": 2, "intermediate_size": 64, "max_position_embeddings": 128}


@dataclass
class ServeWorld:
    root: Path
    images: Path
    regions: Path
    captions: Path
    run: Path
    emb: Path
    minilm: Path


def _cli(*args: str) -> None:
    res = CliRunner().invoke(app, list(args))
    assert res.exit_code == 0, res.output + repr(res.exception)


def _write_regions(path: Path, images: Path, ids_files: list[tuple[str, str]], *, seed: int,
                   random_init: bool = True) -> None:
    from stores import RegionStoreWriter
    from stores.schema import geometry_from_boxes

    rng = np.random.default_rng(seed)
    detector = {"name": "butd", "weights_file": None, "weights_sha256": None,
                "settings": {"random_init": random_init, "seed": seed}}
    with RegionStoreWriter(path, storage="parquet", feature_dim=32, feature_dtype="float32",
                           region_policy={"kind": "fixed", "k": K_REGIONS}, detector=detector,
                           rows_per_part=8) as writer:
        for image_id, file in ids_files:
            src = images / file
            with Image.open(src.resolve() if src.exists() else src) as im:
                w, h = im.size
            x1 = rng.uniform(0, 0.6 * w, K_REGIONS)
            y1 = rng.uniform(0, 0.6 * h, K_REGIONS)
            boxes = np.stack([x1, y1, np.minimum(x1 + rng.uniform(10, 0.4 * w, K_REGIONS), w),
                              np.minimum(y1 + rng.uniform(10, 0.4 * h, K_REGIONS), h)], 1)
            boxes = boxes.astype(np.float32)
            writer.add({
                "image_id": image_id, "file": file, "width": w, "height": h,
                "num_regions": K_REGIONS, "boxes": boxes,
                "geometry": geometry_from_boxes(boxes, w, h),
                "features": np.abs(rng.standard_normal((K_REGIONS, 32))).astype(np.float32),
                "object_ids": rng.integers(0, 1600, K_REGIONS).astype(np.int16),
                "object_conf": np.sort(rng.uniform(0.05, 1.0, K_REGIONS))[::-1].astype(np.float32),
                "attr_ids": rng.integers(0, 400, K_REGIONS).astype(np.int16),
                "attr_conf": rng.uniform(0.05, 1.0, K_REGIONS).astype(np.float32)})


def build_world(tmp: Path, photo_dir: Path, minilm: Path) -> ServeWorld:
    from pipeline.collections import read_collection
    from pipeline.search.embed import EmbedConfig, embed
    from trainers.checkpoints import save_pretrained
    from trainers.models import build_model

    images = tmp / "images"
    shutil.copytree(photo_dir, images)
    coll = tmp / "collection.parquet"
    _cli("ingest", str(images), "--format", "folder", "--out", str(coll))
    captions = tmp / "captions"
    _cli("tokenize", str(coll), "--out", str(captions), "--tokenizer", str(minilm))
    collection = read_collection(coll)
    regions = tmp / "regions"
    _write_regions(regions, images, [(im.image_id, im.file) for im in collection.images], seed=0)
    torch.manual_seed(1)
    model = build_model("tern", {"bert": str(minilm), "bert_config": dict(TINY_BERT),
                                 "bert_layers": 1, "feature_dim": 32, "visual_layers": 1,
                                 "embed_size": 16, "layers": 1, "ff_dim": 32})
    run = tmp / "tern-run"
    save_pretrained(model, run / "best")
    emb = tmp / "emb"
    embed(EmbedConfig(model=run, regions=regions, captions=captions, out=emb, images=images,
                      progress=False))
    # Afterwards one photo of the root becomes a symlink to a file outside it (ingest would have
    # dropped it): the server must refuse to follow it.
    outside = tmp / "outside"
    outside.mkdir()
    shutil.move(images / ESCAPING, outside / "secret.gif")
    os.symlink(outside / "secret.gif", images / ESCAPING)
    return ServeWorld(tmp, images, regions, captions, run, emb, minilm)


@pytest.fixture(scope="session")
def world(tmp_path_factory: pytest.TempPathFactory, photo_dir: Path, minilm_dir: Path) -> ServeWorld:
    return build_world(tmp_path_factory.mktemp("serve"), photo_dir, minilm_dir)


@pytest.fixture(scope="session")
def service(world: ServeWorld) -> SearchService:
    return SearchService.load(ServeConfig(embeddings=world.emb))


@pytest.fixture(scope="session")
def base_url(world: ServeWorld, service: SearchService):
    """A real uvicorn server on 127.0.0.1 and a free port, in a thread, for the whole session."""
    with running(build_app(ServeConfig(embeddings=world.emb), service=service)) as url:
        yield url


@pytest.fixture(scope="session")
def client(base_url: str):
    with httpx.Client(base_url=base_url, timeout=60) as c:
        yield c


def _brute(service: SearchService, q: np.ndarray, side: str) -> tuple[np.ndarray, np.ndarray]:
    vecs = service.emb.side(side).vectors
    cos = vecs @ q.reshape(-1)
    order = np.argsort(-cos, kind="stable")
    return order, cos[order]


def _text_vector(world: ServeWorld, text: str) -> np.ndarray:
    """The query vector computed outside the service: the saved model and the real tokenizer."""
    from pipeline.text.bert import encode_captions, load_bert_tokenizer
    from trainers.checkpoints import from_pretrained

    model = from_pretrained(world.run / "best")
    ids, _ = encode_captions(load_bert_tokenizer(str(world.minilm)), [text])
    with torch.no_grad():
        q = model.encode_captions({"bert_ids": torch.tensor(ids),
                                   "bert_lengths": torch.tensor([len(ids[0])])})[0].numpy()
    return q / np.linalg.norm(q)


# ------------------------------------------------------------------------------------- API

def test_binds_loopback_by_default_and_serves_openapi(client: httpx.Client, base_url: str) -> None:
    assert ServeConfig(embeddings="x").host == "127.0.0.1"
    assert base_url.startswith("http://127.0.0.1:")
    spec = client.get("/openapi.json").json()
    for path in ("/api/search", "/api/images/{image_id}", "/api/images/{image_id}/file",
                 "/api/captions/{caption_id}", "/api/info"):
        assert path in spec["paths"], path
    assert set(spec["paths"]["/api/search"]) == {"get", "post"}
    info = client.get("/api/info").json()
    assert info["images"] == 12 and info["captions"] == 60 and info["model"] == "tern"
    assert info["random_weights"] is True and info["regions"] and info["pictures"]


def test_text_to_images_ranks_like_brute_force_and_pages(client: httpx.Client, world: ServeWorld,
                                                         service: SearchService) -> None:
    text = "a cat looks to the side"
    full = client.post("/api/search", json={"text": text, "k": 12, "limit": 12}).json()
    assert full["target"] == "images" and full["total"] == 12
    order, cos = _brute(service, _text_vector(world, text), "images")
    assert [r["image_id"] for r in full["results"]] == [service.image_ids[i] for i in order]
    np.testing.assert_allclose([r["score"] for r in full["results"]], cos, atol=1e-4)
    assert [r["rank"] for r in full["results"]] == list(range(1, 13))
    # Pages of 5 (POST and GET alike) are slices of the full ranking.
    pages = []
    for offset in (0, 5, 10):
        page = client.get("/api/search", params={"text": text, "k": 12, "offset": offset,
                                                 "limit": 5}).json()
        assert page["offset"] == offset and page["total"] == 12
        pages += page["results"]
    assert [p["image_id"] for p in pages] == [r["image_id"] for r in full["results"]]
    top3 = client.post("/api/search", json={"text": text, "k": 3}).json()
    assert top3["total"] == 3 and len(top3["results"]) == 3
    # Each image hit names its caption closest to the query (the page highlights it).
    first = full["results"][0]
    caps = service.captions_of[first["image_id"]]
    best = caps[int(np.argmax(service.cap.vectors[caps] @ _text_vector(world, text)))]
    assert first["match"]["caption_id"] == service.caption_ids[best]


def test_image_to_captions_images_and_caption_to_images(client: httpx.Client,
                                                        service: SearchService) -> None:
    image_id = "chelsea.jpg"
    q = service.emb.side("images").vectors[service.image_pos[image_id]]
    res = client.get("/api/search", params={"image_id": image_id, "limit": 10}).json()
    assert res["target"] == "captions" and res["total"] == 60
    order, cos = _brute(service, q, "captions")
    assert [r["caption_id"] for r in res["results"]] == [service.caption_ids[i] for i in order[:10]]
    np.testing.assert_allclose([r["score"] for r in res["results"]], cos[:10], atol=1e-4)
    for r in res["results"]:
        assert r["of_query_image"] == (r["image_id"] == image_id) and r["text"]
    res = client.post("/api/search", json={"image_id": image_id, "target": "images"}).json()
    assert res["results"][0]["image_id"] == image_id
    assert res["results"][0]["score"] == pytest.approx(1.0, abs=1e-4)
    cap_id = service.caption_ids[7]
    res = client.post("/api/search", json={"caption_id": cap_id, "limit": 12}).json()
    assert res["target"] == "images" and res["query"]["text"] == service.caption_texts[7]
    order, _ = _brute(service, service.cap.vectors[7], "images")
    assert [r["image_id"] for r in res["results"]] == [service.image_ids[i] for i in order]


def test_image_regions_captions_and_file(client: httpx.Client, world: ServeWorld) -> None:
    from detectors.base import VGVocab
    from stores import open_region_store

    image_id = "astronaut.jpg"
    d = client.get(f"/api/images/{image_id}").json()
    row = open_region_store(world.regions).get(image_id)
    vocab = VGVocab.shipped()
    assert (d["width"], d["height"]) == (int(row["width"]), int(row["height"])) == (512, 512)
    assert len(d["regions"]) == K_REGIONS and d["random_weights"] is True
    for r, box, oid, oc, aid in zip(d["regions"], row["boxes"], row["object_ids"],
                                    row["object_conf"], row["attr_ids"]):
        np.testing.assert_allclose(r["box"], box, atol=0.01)
        assert r["object"] == vocab.objects[int(oid)].split(",")[0]
        assert r["attribute"] == vocab.attributes[int(aid)].split(",")[0]
        assert r["object_conf"] == pytest.approx(float(oc), abs=1e-4)
    lines = [json.loads(l) for l in (world.images / "captions.jsonl").read_text().splitlines()]
    want = next(l["captions"] for l in lines if l["file"] == image_id)
    assert [c["text"] for c in d["captions"]] == want
    f = client.get(f"/api/images/{image_id}/file")
    assert f.status_code == 200 and f.headers["content-type"] == "image/jpeg"
    assert f.content == (world.images / image_id).read_bytes()
    assert "sandbox" in f.headers["content-security-policy"]
    cap_id = d["captions"][0]["caption_id"]
    assert "#" in cap_id                     # ids are percent-encoded in URLs
    cap = client.get(f"/api/captions/{quote(cap_id, safe='')}").json()
    assert cap["caption_id"] == cap_id
    assert cap["image_id"] == image_id and cap["text"] == want[0]


def _err(resp: httpx.Response, status: int, field: str | None) -> dict:
    assert resp.status_code == status, (resp.status_code, resp.text)
    body = resp.json()
    assert body["status"] == status and body["field"] == field and body["error"], body
    return body


def test_bad_input_gets_4xx_json_naming_the_field(client: httpx.Client) -> None:
    _err(client.post("/api/search", json={"text": "x" * (MAX_QUERY_CHARS + 1)}), 422, "text")
    _err(client.post("/api/search", json={"text": "   "}), 422, "text")
    _err(client.post("/api/search", json={}), 422, "text")
    _err(client.post("/api/search", json={"text": "a", "image_id": "chelsea.jpg"}), 422, "image_id")
    _err(client.post("/api/search", json={"text": "a", "k": 0}), 422, "k")
    _err(client.get("/api/search", params={"text": "a", "k": "many"}), 422, "k")
    _err(client.post("/api/search", json={"text": "a", "k": 10**6}), 422, "k")
    _err(client.post("/api/search", json={"text": "a", "limit": 0}), 422, "limit")
    _err(client.post("/api/search", json={"text": "a", "offset": -1}), 422, "offset")
    _err(client.post("/api/search", json={"text": "a", "target": "videos"}), 422, "target")
    _err(client.post("/api/search", json={"text": "a", "colour": "red"}), 422, "colour")
    _err(client.post("/api/search", json=["text"]), 422, "body")
    body = _err(client.post("/api/search", content=b'{"text": "a cat",',
                            headers={"content-type": "application/json"}), 400, "body")
    assert "malformed JSON" in body["error"]
    _err(client.post("/api/search", content=b"x" * (65 * 1024),
                     headers={"content-type": "application/json"}), 413, "body")
    _err(client.post("/api/search", json={"image_id": "nope.jpg"}), 404, "image_id")
    _err(client.post("/api/search", json={"caption_id": "nope#9"}), 404, "caption_id")
    _err(client.get("/api/images/nope.jpg"), 404, "image_id")
    _err(client.get("/api/captions/nope"), 404, "caption_id")
    # Past the end: an empty page, not an error.
    page = client.post("/api/search", json={"text": "a", "k": 5, "offset": 50}).json()
    assert page["results"] == [] and page["total"] == 5


def test_paths_stay_inside_the_root(client: httpx.Client, service: SearchService) -> None:
    for bad in ("..%2F..%2Fetc%2Fpasswd", "%2Fetc%2Fpasswd", "%2E%2E%2Fimages%2Fchelsea.jpg"):
        _err(client.get(f"/api/images/{bad}/file"), 404, "image_id")     # not an image id
    r = client.get("/api/images/../../etc/passwd/file")      # the client folds the dots itself
    assert r.status_code == 404 and "root:" not in r.text
    body = _err(client.get(f"/api/images/{ESCAPING}/file"), 403, "image_id")
    assert "outside" in body["error"]
    assert str(service.root) not in body["error"]          # no server paths in answers
    # The static folder serves its three files and nothing else: no listing, no way up.
    assert client.get("/static/app.js").status_code == 200
    for path in ("/static/", "/static", "/static/../serve.py", "/static/%2e%2e/serve.py",
                 "/api/images/", "/etc/passwd"):
        r = client.get(path)
        assert r.status_code == 404, (path, r.status_code)
        assert r.headers["content-type"].startswith("application/json"), path
    assert client.get("/api/health").json()["ok"] is True      # still serving


def test_sixteen_concurrent_clients_get_the_same_answers(client: httpx.Client, base_url: str) -> None:
    texts = ["a cat", "an astronaut in a suit", "coffee on a table", "a rocket", "a red flower"]
    want = {t: client.post("/api/search", json={"text": t, "limit": 5}).json()["results"]
            for t in texts}
    errors: list[str] = []

    def worker(n: int) -> None:
        with httpx.Client(base_url=base_url, timeout=60) as c:
            for i in range(4):
                t = texts[(n + i) % len(texts)]
                r = c.post("/api/search", json={"text": t, "limit": 5})
                if r.status_code != 200 or r.json()["results"] != want[t]:
                    errors.append(f"{t}: {r.status_code}")

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


# ------------------------------------------------------------------------------- start-up

def test_start_refuses_a_store_that_does_not_hold_the_embedded_images(world: ServeWorld,
                                                                       tmp_path: Path) -> None:
    other = tmp_path / "other-regions"
    _write_regions(other, world.images, [("astronaut.jpg", "astronaut.jpg"),
                                         ("someone-else.jpg", "chelsea.jpg")], seed=1)
    with pytest.raises(ConfigError, match=r"11 of 12 image ids .* not in the region store"):
        SearchService.load(ServeConfig(embeddings=world.emb, regions=other))
    empty = tmp_path / "empty-root"
    empty.mkdir()
    with pytest.raises(ConfigError, match="none of 12 image files checked"):
        SearchService.load(ServeConfig(embeddings=world.emb, images=empty))
    # Through the console script: one line on stderr, exit status 1, no traceback.
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "serve", str(world.emb),
                           "--regions", str(other), "--port", "0"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 1, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: 11 of 12 image ids"), proc.stderr


def test_lazy_app_loads_at_startup(world: ServeWorld) -> None:
    """build_app(config) alone (the Ray Serve form) loads the service in its lifespan."""
    app_ = build_app({"embeddings": str(world.emb)})
    with running(app_) as url:
        r = httpx.get(f"{url}/api/search", params={"text": "a cat", "limit": 2}, timeout=60)
        assert r.status_code == 200 and len(r.json()["results"]) == 2
    with pytest.raises(ConfigError, match="unknown serve option"):
        build_app({"embeddings": "x", "prot": 1})


# -------------------------------------------------------------------------------- browser

def _driver():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_bin = shutil.which("chromedriver")
    assert chromium and driver_bin, ("headless Chromium and chromedriver are needed: `make browser` "
                                     "(apt-get install chromium chromium-driver)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1400,1000", "--disable-extensions", "--no-first-run"):
        opts.add_argument(arg)
    return webdriver.Chrome(service=Service(executable_path=driver_bin), options=opts)


def test_page_in_headless_chromium(base_url: str, client: httpx.Client, tmp_path: Path) -> None:
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import Select, WebDriverWait

    text = "a ginger cat with green eyes"
    api = client.post("/api/search", json={"text": text, "k": 100, "limit": 8}).json()
    driver = _driver()
    try:
        # the page replaces the grid's elements on every answer: a found element may go stale
        wait = WebDriverWait(driver, 60, ignored_exceptions=(StaleElementReferenceException,))
        driver.get(base_url + "/")
        wait.until(lambda d: d.execute_script("return document.body.dataset.ready === '1'"))
        assert driver.find_element(By.ID, "banner").is_displayed()          # random weights
        limit = driver.find_element(By.ID, "limit")
        limit.clear()
        limit.send_keys("8")
        box = driver.find_element(By.ID, "query")
        box.send_keys(text)
        driver.find_element(By.ID, "go").click()
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#results .result")) == 8)
        cards = driver.find_elements(By.CSS_SELECTOR, "#results .result")
        assert [c.get_attribute("data-id") for c in cards] == [r["image_id"] for r in api["results"]]
        assert [float(c.get_attribute("data-score")) for c in cards] == \
            pytest.approx([r["score"] for r in api["results"]])
        # Wait until every thumbnail decoded (the escaping symlink's tile may fail: that is fine).
        wait.until(lambda d: d.execute_script(
            "return [...document.querySelectorAll('#results img')].every(i => i.complete)"))
        driver.find_element(By.ID, "next").click()
        wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#results .result")
                   .get_attribute("data-rank") == "9")
        driver.find_element(By.ID, "prev").click()
        wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#results .result")
                   .get_attribute("data-rank") == "1")
        first = api["results"][0]
        detail = client.get(f"/api/images/{first['image_id']}").json()
        driver.find_element(By.CSS_SELECTOR, "#results .result").click()
        wait.until(EC.visibility_of_element_located((By.ID, "detail")))
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#overlay rect.region"))
                   == len(detail["regions"]))
        items = driver.find_elements(By.CSS_SELECTOR, "#captions li")
        assert [i.text for i in items] == [c["text"] for c in detail["captions"]]
        marked = driver.find_elements(By.CSS_SELECTOR, "#captions li.match")
        assert [m.get_attribute("data-id") for m in marked] == [first["match"]["caption_id"]]
        # Labels toggle, and the confidence slider hides the weaker regions.
        driver.find_element(By.ID, "show-labels").click()
        labels = driver.find_elements(By.CSS_SELECTOR, "#overlay text")
        assert labels[0].is_displayed() and labels[0].text
        driver.execute_script("const s = document.getElementById('conf'); s.value = '0.5';"
                              "s.dispatchEvent(new Event('input'));")
        strong = sum(1 for r in detail["regions"] if r["object_conf"] >= 0.5)
        assert 0 < strong < len(detail["regions"])
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#overlay rect.region")) == strong)
        shot = tmp_path / "serve-page.png"
        driver.save_screenshot(str(shot))
        if os.environ.get("ITMFLOW_SCREENSHOTS"):
            Path(os.environ["ITMFLOW_SCREENSHOTS"]).mkdir(parents=True, exist_ok=True)
            shutil.copy(shot, Path(os.environ["ITMFLOW_SCREENSHOTS"]) / shot.name)
        with Image.open(shot) as im:
            assert im.width >= 1000 and np.asarray(im.convert("RGB")).std() > 20
        # Image → captions from the detail view: the ranked captions of the API.
        driver.find_element(By.ID, "find-captions").click()
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#caption-results li")) == 8)
        want = client.post("/api/search", json={"image_id": first["image_id"], "limit": 8}).json()
        got = [li.get_attribute("data-id")
               for li in driver.find_elements(By.CSS_SELECTOR, "#caption-results li")]
        assert got == [r["caption_id"] for r in want["results"]]
        assert Select(driver.find_element(By.ID, "mode")).first_selected_option.text == \
            "image id → captions"
        # A bad query shows the API's error on the page.
        box = driver.find_element(By.ID, "query")
        box.clear()
        box.send_keys("nope.jpg")
        driver.find_element(By.ID, "go").click()
        wait.until(EC.visibility_of_element_located((By.ID, "error")))
        assert "unknown image id" in driver.find_element(By.ID, "error").text
    finally:
        driver.quit()
