"""The operator's verdict (adps.serve.feedback): the bounded image store, verdicts filed where
adps update and adps calibrate --fit-fusion read them, bad verdicts refused, and a client's file
name never a path."""

from __future__ import annotations

import io
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from servekit import noise_images, png_bytes, tiny_model, wait_ready

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient

from adps import load
from adps.data.datasets import Folder, find_images
from adps.data.spec import detect_mask_suffix
from adps.serve.app import ServeSettings, create_app
from adps.serve.feedback import ID_PATTERN, Feedback, ImageStore, client_name, new_id

pytestmark = pytest.mark.usefixtures("one_thread")


def _ids(n: int) -> list[str]:
    start = time.time()
    return [new_id(start + i) for i in range(n)]  # one second apart: ids sort by age


# ------------------------------------------------------------------------------ the store


def test_ids_sort_by_age_and_client_names_never_hold_a_path():
    ids = _ids(3)
    assert ids == sorted(ids) and all(ID_PATTERN.match(i) for i in ids)
    assert client_name("../../../etc/passwd") == "passwd"
    assert client_name("..\\..\\windows\\win.ini") == "win.ini"
    assert client_name("part 1.png") == "part 1.png"
    assert client_name("a\x00b\nc.png") == "abc.png"
    for empty in (None, "", "..", "../", "dir/."):
        assert client_name(empty) is None
    assert len(client_name("x" * 1000) or "") == 255


def test_the_store_drops_the_oldest_first_by_count_and_by_bytes(tmp_path):
    image = noise_images(1, 0)[0]
    data = png_bytes(image)
    store = ImageStore(tmp_path, max_images=3, max_bytes=10 * len(data))
    ids = _ids(5)
    for ident in ids:
        assert store.keep(ident, data, image) == tmp_path / f"{ident}.png"
    assert sorted(p.stem for p in tmp_path.iterdir()) == ids[2:]
    assert store.find(ids[0]) is None and store.find(ids[4]) == tmp_path / f"{ids[4]}.png"
    assert store.describe()["dropped"] == 2 and store.bytes == 3 * len(data)

    by_bytes = ImageStore(tmp_path / "b", max_images=100, max_bytes=int(2.5 * len(data)))
    for ident in ids:
        by_bytes.keep(ident, data, image)
    assert sorted(p.stem for p in (tmp_path / "b").iterdir()) == ids[3:]
    too_big = ImageStore(tmp_path / "c", max_images=100, max_bytes=len(data) - 1)
    assert too_big.keep(ids[0], data, image) is None and len(too_big) == 0
    assert not any((tmp_path / "c").iterdir())


def test_a_restarted_store_finds_its_images_in_age_order_and_applies_new_bounds(tmp_path):
    image = noise_images(1, 0)[0]
    data = png_bytes(image)
    ids = _ids(4)
    store = ImageStore(tmp_path, 10, 10**9)
    for ident in reversed(ids):  # written newest first: the age is the id's, not the write's
        store.keep(ident, data, image)
    (tmp_path / f".{ids[0]}.png.abc.tmp").write_bytes(b"half")  # a write a crash cut
    (tmp_path / "notes.txt").write_text("not ours")
    again = ImageStore(tmp_path, 2, 10**9)
    assert list(again.index) == ids[2:]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [f"{i}.png" for i in ids[2:]] + ["notes.txt"]
    )


def test_kept_images_are_the_bytes_received_or_a_png_and_writes_are_atomic(tmp_path, monkeypatch):
    image = noise_images(1, 0)[0]
    store = ImageStore(tmp_path, 10, 10**9)
    ident, other, third = _ids(3)
    jpeg = io.BytesIO()
    Image.fromarray(image).save(jpeg, format="JPEG")
    assert store.keep(ident, jpeg.getvalue(), image) == tmp_path / f"{ident}.jpg"
    assert (tmp_path / f"{ident}.jpg").read_bytes() == jpeg.getvalue()
    gif = io.BytesIO()
    Image.fromarray(image).save(gif, format="GIF")  # adps does not list .gif: kept as a PNG
    path = store.keep(other, gif.getvalue(), image)
    assert path == tmp_path / f"{other}.png"
    assert np.array_equal(np.asarray(Image.open(path)), image)

    def crash(*args):
        raise OSError("disk pulled")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk pulled"):
        store.keep(third, png_bytes(image), image)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([f"{ident}.jpg", f"{other}.png"])


# ----------------------------------------------------------------------- through the app


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> Path:
    return tiny_model(tmp_path_factory.mktemp("feedback") / "model.pt", calibrate=0)


def _client(model_path: Path, **settings) -> TestClient:
    predictor = load(model_path, "cpu", backend="torch")
    client = TestClient(
        create_app(predictor, model_path, ServeSettings(**settings)), raise_server_exceptions=False
    )
    return client


def _predict(client: TestClient, image: np.ndarray, name: str = "part.png", **headers) -> dict:
    r = client.post(
        "/v1/predict", files=[("file", (name, png_bytes(image), "image/png"))], headers=headers
    )
    assert r.status_code == 200, r.text
    return r.json()


@pytest.mark.integration
def test_verdicts_land_where_update_and_calibrate_fit_fusion_read_them(model_path, tmp_path):
    keep = tmp_path / "keep"
    images = noise_images(4, 7)
    with _client(model_path, keep_dir=keep) as c:
        wait_ready(c)
        answers = [_predict(c, image) for image in images]
        assert all(a["kept"] and ID_PATTERN.match(a["id"]) for a in answers)
        ids = [a["id"] for a in answers]
        mask = np.zeros((64, 64), np.uint8)
        mask[10:20, 30:40] = 7  # any non-zero pixel is defect
        normal = c.post("/v1/feedback", json={"id": ids[0], "verdict": "normal"})
        assert normal.status_code == 200 and normal.json()["files"] == [
            f"feedback/normal/{ids[0]}.png"
        ]
        form = c.post("/v1/feedback", data={"id": ids[1], "verdict": "Normal "})  # a plain form
        assert form.status_code == 200, form.text
        defect = c.post(
            "/v1/feedback",
            data={"id": ids[2], "verdict": "defect"},
            files={"mask": ("../../mask.png", png_bytes(mask), "image/png")},
        ).json()
        assert defect["mask"] and defect["files"] == [
            f"feedback/defect/test/defect/{ids[2]}.png",
            f"feedback/defect/ground_truth/defect/{ids[2]}_mask.png",
        ]
        unmasked = c.post("/v1/feedback", json={"id": ids[3], "verdict": "defect"}).json()
        assert unmasked["files"] == [f"feedback/defect_unmasked/{ids[3]}.png"]
        info = c.get("/v1/model").json()["keep_images"]
        assert info["verdicts"] == {"normal": 2, "defect_with_mask": 1, "defect_unmasked": 1}
    folder = keep / "feedback"
    # adps update --normal-dir takes the folder as it is
    assert [p.name for p in find_images(folder / "normal", recursive=True)] == sorted(
        f"{i}.png" for i in ids[:2]
    )
    assert (folder / "normal" / f"{ids[0]}.png").read_bytes() == png_bytes(images[0])
    # adps calibrate --fit-fusion --defect-dir ... --mask-dir ...: its own loader
    defect_dir, mask_dir = folder / "defect/test/defect", folder / "defect/ground_truth/defect"
    defects = Folder(
        abnormal_test_dir=defect_dir,
        mask_dir=mask_dir,
        mask_suffix=detect_mask_suffix(mask_dir),
        split="test",
        recursive=True,
        size=None,
    )
    assert len(defects) == 1 and defects.labels == [1]
    assert np.array_equal(defects.decode(0).original_mask.numpy() > 0, mask > 0)
    lines = [json.loads(x) for x in (folder / "verdicts.jsonl").read_text().splitlines()]
    assert [x["verdict"] for x in lines] == ["normal", "normal", "defect", "defect"]


@pytest.mark.integration
def test_a_changed_verdict_moves_the_files_and_bad_verdicts_are_refused(model_path, tmp_path):
    keep = tmp_path / "keep"
    with _client(model_path, keep_dir=keep, token="s3cret") as c:
        wait_ready(c)
        auth = {"Authorization": "Bearer s3cret"}
        ident = _predict(c, noise_images(1, 3)[0], **auth)["id"]
        assert c.post("/v1/feedback", json={"id": ident, "verdict": "normal"}).status_code == 401
        c.post("/v1/feedback", json={"id": ident, "verdict": "normal"}, headers=auth)
        moved = c.post("/v1/feedback", json={"id": ident, "verdict": "defect"}, headers=auth)
        assert moved.json()["replaced"] == "normal"
        assert not (keep / f"feedback/normal/{ident}.png").exists()
        assert (keep / f"feedback/defect_unmasked/{ident}.png").exists()

        def refused(status: int, words: str, **request) -> None:
            r = c.post("/v1/feedback", headers=auth, **request)
            assert r.status_code == status, r.text
            assert words in r.json()["error"], r.json()

        maybe = {"id": ident, "verdict": "maybe"}
        refused(422, "verdict must be 'normal' or 'defect', got 'maybe'", json=maybe)
        refused(422, "give a 'verdict'", json={"id": ident})
        refused(422, "give the image's 'id'", json={"verdict": "normal"})
        refused(404, "unknown image id", json={"id": "../../etc/passwd", "verdict": "normal"})
        unknown = new_id()
        refused(404, f"no image kept under id {unknown}", json={"id": unknown, "verdict": "normal"})
        mask = png_bytes(np.zeros((32, 64), np.uint8))
        defect, normal = {"id": ident, "verdict": "defect"}, {"id": ident, "verdict": "normal"}
        refused(
            422,
            "the mask is 64 x 32 pixels, the image 64 x 64",
            data=defect,
            files={"mask": ("m.png", mask)},
        )
        jpeg = io.BytesIO()
        Image.fromarray(np.zeros((64, 64), np.uint8)).save(jpeg, format="JPEG")
        refused(
            422, "the mask must be a PNG", data=defect, files={"mask": ("m.png", jpeg.getvalue())}
        )
        refused(422, "not a readable PNG", data=defect, files={"mask": ("m.png", b"\x89PNGxx")})
        refused(
            422, "a mask goes with a 'defect' verdict", data=normal, files={"mask": ("m.png", mask)}
        )
        plain = c.post(
            "/v1/feedback", content=b"id=1", headers={**auth, "Content-Type": "text/plain"}
        )
        assert plain.status_code == 415 and "unsupported content type" in plain.json()["error"]
    with _client(model_path) as c:  # no --keep-images
        wait_ready(c)
        r = c.post("/v1/feedback", json={"id": ident, "verdict": "normal"})
        assert r.status_code == 404 and "--keep-images" in r.json()["error"]
        assert "kept" not in _predict(c, noise_images(1, 3)[0])


@pytest.mark.integration
def test_a_client_file_name_is_never_echoed_raw_nor_a_path(model_path, tmp_path):
    keep = tmp_path / "inside" / "keep"
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    with _client(model_path, keep_dir=keep) as c:
        wait_ready(c)
        image = noise_images(1, 4)[0]
        answers = c.post(
            "/v1/predict",
            files=[
                ("file", ("../../../etc/passwd", png_bytes(image), "image/png")),
                ("file", ("..\\..\\boot.ini", png_bytes(image), "image/png")),
            ],
        ).json()
        assert [a["filename"] for a in answers] == ["passwd", "boot.ini"]
        bad = c.post(
            "/v1/predict", files=[("file", ("../../../etc/passwd", b"not an image", "image/png"))]
        )
        assert bad.status_code == 400 and "../" not in bad.json()["error"]
        assert "passwd" in bad.json()["error"]
    after = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    new = [p for p in after if p not in before]
    assert all(p.parts[:2] == ("inside", "keep") for p in new if p != Path("inside"))
    files = [p for p in keep.rglob("*") if p.is_file()]
    assert sorted(p.stem for p in files) == sorted(a["id"] for a in answers)
    assert all(ID_PATTERN.match(p.stem) and p.parent == keep / "images" for p in files)


def test_feedback_store_reports_an_image_dropped_from_the_store(tmp_path):
    feedback = Feedback(tmp_path, max_images=1, max_bytes=10**9)
    image = noise_images(1, 0)[0]
    first, second = _ids(2)
    feedback.keep(first, png_bytes(image), image)
    feedback.record(first, "normal")
    feedback.keep(second, png_bytes(image), image)  # drops the first from the store
    assert feedback.images.find(first) is None
    # its verdict's copy still serves a changed verdict
    assert feedback.record(first, "defect")["files"] == [f"feedback/defect_unmasked/{first}.png"]
    assert not (tmp_path / f"feedback/normal/{first}.png").exists()
