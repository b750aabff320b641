"""prepare-facescrub against a real HTTP server on 127.0.0.1 serving generated images."""

from __future__ import annotations

import csv
import hashlib
import io
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from clip_unlearn.cli import app
from clip_unlearn.facescrub import safe_folder
from conftest import runner


def jpeg(seed: int, size=(80, 60)) -> bytes:
    im = Image.new("RGB", size, ((seed * 37) % 255, (seed * 91) % 255, (seed * 13) % 255))
    buf = io.BytesIO()
    im.save(buf, format="JPEG")
    return buf.getvalue()


def png(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (50, 50), (seed % 255, 10, 10)).save(buf, format="PNG")
    return buf.getvalue()


def _encoded(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _palette_with_transparency() -> Image.Image:
    im = Image.new("RGB", (40, 40), (200, 30, 30)).convert("P")
    im.info["transparency"] = im.getpixel((0, 0))
    return im


def _grey16() -> Image.Image:
    im = Image.new("I;16", (40, 40))
    im.frombytes(b"\x00\x80" * 1600)  # 32768: mid grey, which a clipping conversion turns white
    return im


# Images whose modes the crop formats cannot all store (served at /mode/<name>): the decoded
# format picks the crop format, so CMYK TIFF and 32-bit grey TIFF crops go to PNG, which takes neither.
MODE_IMAGES = {
    "cmyk.jpg": _encoded(Image.new("CMYK", (40, 40), (0, 200, 200, 30)), "JPEG"),
    "cmyk.tif": _encoded(Image.new("CMYK", (40, 40), (0, 200, 200, 30)), "TIFF"),
    "la.png": _encoded(Image.new("LA", (40, 40), (120, 200)), "PNG"),
    "p.png": _encoded(_palette_with_transparency(), "PNG"),
    "i16.png": _encoded(_grey16(), "PNG"),
    "i32.tif": _encoded(_grey16().convert("I"), "TIFF"),
}


class Server:
    """Routes: /img/N.jpg, /png/N, /404, /flaky/N (500 once, then an image), /slow, /big, /html, /trunc,
    /ftp (redirect to ftp://), /redir/N (redirect to /img/N.jpg), /delay/N (an image after 0.3 s)."""

    def __init__(self) -> None:
        self.hits: dict[str, int] = {}
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def send(self, code, body=b"", ctype="image/jpeg", headers=()):
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                for k, v in headers:
                    self.send_header(k, v)
                self.end_headers()
                try:
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def do_GET(self):
                p = self.path
                outer.hits[p] = outer.hits.get(p, 0) + 1
                n = int(p.rsplit("/", 1)[-1].split(".")[0]) if p.rsplit("/", 1)[-1].split(".")[0].isdigit() else 0
                if p.startswith("/img/"):
                    return self.send(200, jpeg(n))
                if p.startswith("/png/"):
                    return self.send(200, png(n), "image/png")
                if p.startswith("/flaky/"):
                    return self.send(500, b"oops", "text/plain") if outer.hits[p] == 1 else self.send(200, jpeg(n))
                if p == "/slow":
                    time.sleep(2.0)
                    return self.send(200, jpeg(1))
                if p == "/big":
                    return self.send(200, b"\xff" * 200_000)
                if p == "/html":
                    return self.send(200, b"<html><body>gone</body></html>", "text/html")
                if p == "/trunc":
                    return self.send(200, jpeg(5)[:200])
                if p == "/ftp":
                    return self.send(302, b"", "text/plain", [("Location", "ftp://127.0.0.1/x.jpg")])
                if p.startswith("/redir/"):
                    return self.send(302, b"", "text/plain", [("Location", f"/img/{n}.jpg")])
                if p.startswith("/mode/") and p[len("/mode/"):] in MODE_IMAGES:
                    return self.send(200, MODE_IMAGES[p[len("/mode/"):]], "application/octet-stream")
                if p.startswith("/delay/"):
                    time.sleep(0.3)
                    return self.send(200, jpeg(n))
                return self.send(404, b"not found", "text/plain")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()


@pytest.fixture()
def server():
    s = Server()
    yield s
    s.close()


def write_list(path: Path, rows: list[tuple]) -> Path:
    lines = ["name\timage_id\tface_id\turl\tbbox\tsha256"]
    lines += ["\t".join(str(x) for x in r) for r in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def manifest(out: Path) -> dict[tuple[str, str], dict]:
    with open(out / "manifest.csv", newline="", encoding="utf-8") as f:
        return {(r["name"], r["face_id"]): r for r in csv.DictReader(f)}


@pytest.mark.parametrize(
    "name, folder",
    [("../../etc/passwd", "etcpasswd"), ("../../evil", "evil"), ("a/../b", "a_b"), ("....//....//x", "x"),
     ("..", "_"), ("...", "_"), (". . .", "_"), ("", "_"), ("/", "_"), (".hidden", "hidden"), ("x..y", "x_y"),
     ("a\x00b/c\\d", "abcd"), ("  Ada   Lovelace ", "Ada_Lovelace"), ("Adrianne León", "Adrianne_León"),
     ("Adrianne Le\u0301on", "Adrianne_Léon"),  # NFC: the decomposed é becomes the one code point
     ("李 小龙", "李_小龙"), ("\u202eevil", "evil")],
)
def test_safe_folder_names(name, folder):
    assert safe_folder(name) == folder


def test_every_outcome_and_resume(server, tmp_path, micro_model_dir):
    u = server.url
    rows = [
        ("Ada Test", 1, 1, f"{u}/img/1.jpg", "10,10,50,40", sha(jpeg(1))),
        ("Ada Test", 2, 2, f"{u}/png/2", "0,0,30,30", sha(png(2))),
        ("Ada Test", 3, 3, f"{u}/404", "0,0,10,10", ""),
        ("Ada Test", 4, 4, f"{u}/flaky/4", "0,0,10,10", sha(jpeg(4))),
        ("Ada Test", 5, 5, f"{u}/slow", "0,0,10,10", ""),
        ("Ada Test", 6, 6, f"{u}/big", "0,0,10,10", ""),
        ("Ada Test", 7, 7, f"{u}/html", "0,0,10,10", ""),
        ("Ada Test", 8, 8, f"{u}/trunc", "0,0,10,10", ""),
        ("Ada Test", 9, 9, f"{u}/img/9.jpg", "0,0,10,10", "0" * 64),
        ("Ada Test", 10, 10, f"{u}/img/10.jpg", "500,500,600,600", sha(jpeg(10))),
        ("Ada Test", 11, 11, f"{u}/ftp", "0,0,10,10", ""),
        ("Ada Test", 12, 12, f"{u}/redir/12", "-5,-5,20,20", sha(jpeg(12))),
        ("../../evil", 13, 13, f"{u}/img/13.jpg", "0,0,10,10", sha(jpeg(13))),
        ("Adrianne León", 14, 14, f"{u}/img/14.jpg", "0,0,10,10", sha(jpeg(14))),
        ("Leslie Neilsen", 15, 15, f"{u}/img/15.jpg", "0,0,10,10", sha(jpeg(15))),
        ("broken row without enough fields",),
    ]
    lst = write_list(tmp_path / "facescrub_actresses.txt", rows)
    out = tmp_path / "fs"
    args = ["-q", "prepare-facescrub", "--lists", str(lst), "--out", str(out), "--timeout", "0.5", "--retries", "1",
            "--max-bytes", "100000", "--workers", "4"]
    result = runner.invoke(app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    m = manifest(out)
    status = {fid: m[(name, fid)]["status"] for (name, fid) in m}
    assert status["1"] == "ok" and status["2"] == "ok" and status["4"] == "ok" and status["12"] == "ok"
    assert status["3"] == "http_error:404" and status["5"] == "timeout" and status["6"] == "too_large"
    assert status["7"] == "not_an_image" and status["8"] == "not_an_image" and status["9"] == "sha256_mismatch"
    assert status["10"] == "bad_bbox" and status["11"] == "bad_redirect"
    assert status["13"] == "ok" and status["14"] == "ok" and status["15"] == "ok"
    assert server.hits["/flaky/4"] == 2  # 500, retried, ok
    root = out / "actresses"
    assert (root / "images" / "Ada_Test" / "Ada_Test_1.jpg").read_bytes() == jpeg(1)
    assert (root / "images" / "Ada_Test" / "Ada_Test_2.png").exists()  # extension from the decoded format
    assert Image.open(root / "faces" / "Ada_Test" / "Ada_Test_1_1.jpg").size == (40, 30)
    assert Image.open(root / "faces" / "Ada_Test" / "Ada_Test_12_12.jpg").size == (20, 20)  # clamped to the image
    assert (root / "faces" / "Adrianne_León" / "Adrianne_León_14_14.jpg").exists()
    assert (root / "faces" / "Leslie_Nielsen").is_dir() and not (root / "faces" / "Leslie_Neilsen").exists()
    for p in out.rglob("*"):
        assert out.resolve() in p.resolve().parents
    assert not list(out.rglob(".*.tmp"))
    text = " ".join(result.output.split())
    assert "ok" in text and "rows" in text

    # resume: verified files are skipped, failures retried
    again = runner.invoke(app, args, env={"COLUMNS": "200"})
    assert again.exit_code == 0, again.output
    m2 = manifest(out)
    assert m2[("Ada Test", "1")]["status"] == "skipped_existing" and m2[("Ada Test", "3")]["status"] == "http_error:404"

    import json
    summary = json.loads((out / "prepare_facescrub.json").read_text())["summary"]
    assert summary["rows"] == 15 and summary["malformed_rows"] == 1 and summary["statuses"]["skipped_existing"] == 7

    # the attack reads the layout
    res = runner.invoke(app, ["-q", "attack", "--model", str(micro_model_dir), "--data", str(out), "--min-images", "1",
                              "--images-per-identity", "1", "--num-candidates", "10", "--output", str(tmp_path / "a.json")])
    assert res.exit_code == 0, res.output
    attacked = {r["name"] for r in json.loads((tmp_path / "a.json").read_text())["identities"]}
    assert {"Ada Test", "Adrianne León", "Leslie Nielsen"} <= attacked


def test_interrupted_run_leaves_only_verified_files_and_resumes(server, tmp_path):
    u = server.url
    rows = [(f"Person {chr(65 + i % 3)}", i, i, f"{u}/delay/{i}", "0,0,20,20", sha(jpeg(i))) for i in range(1, 31)]
    lst = write_list(tmp_path / "facescrub_actors.txt", rows)
    out = tmp_path / "fs"
    cmd = [sys.executable, "-m", "clip_unlearn", "-q", "prepare-facescrub", "--lists", str(lst), "--out", str(out), "--workers", "2"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline and len(list(out.rglob("*.jpg"))) < 6:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = [p for p in out.rglob("*.jpg")]
    assert partial, "the run was killed before it wrote anything"
    for p in (out / "actors" / "images").rglob("*.jpg"):
        image_id = int(p.stem.rsplit("_", 1)[1])
        assert p.read_bytes() == jpeg(image_id)  # complete and verified
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    m = manifest(out)
    assert all(r["status"] in ("ok", "skipped_existing") for r in m.values())
    assert any(r["status"] == "skipped_existing" for r in m.values())
    assert len(list((out / "actors" / "faces").rglob("*.jpg"))) == 30
    assert not list(out.rglob(".*.tmp"))


def test_bad_inputs(tmp_path):
    r = runner.invoke(app, ["prepare-facescrub", "--lists", str(tmp_path / "missing.txt"), "--out", str(tmp_path / "o")])
    assert r.exit_code == 1 and "does not exist" in r.output
    r = runner.invoke(app, ["prepare-facescrub", "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "--lists is required" in r.output
    empty = write_list(tmp_path / "l.txt", [])
    r = runner.invoke(app, ["prepare-facescrub", "--lists", str(empty), "--out", str(tmp_path / "o")])
    assert r.exit_code == 1 and "no usable rows" in r.output


def test_any_image_mode_is_cropped_to_a_file_the_attack_reads(server, tmp_path):
    from clip_unlearn.folders import read_image

    rows = [("Mode Test", i, i, f"{server.url}/mode/{name}", "5,5,35,35", sha(data))
            for i, (name, data) in enumerate(MODE_IMAGES.items(), start=1)]
    out = tmp_path / "fs"
    lst = write_list(tmp_path / "facescrub_actors.txt", rows)
    result = runner.invoke(app, ["-q", "prepare-facescrub", "--lists", str(lst), "--out", str(out), "--workers", "2"])
    assert result.exit_code == 0, result.output
    m = manifest(out)
    assert {fid: r["status"] for (_, fid), r in m.items()} == {str(i): "ok" for i in range(1, len(MODE_IMAGES) + 1)}
    for (_, fid), r in m.items():
        crop = Image.open(out / r["face_path"])
        crop.load()
        assert crop.size == (30, 30)
        rgb = read_image((out / r["face_path"]).read_bytes())
        assert rgb is not None and rgb.mode == "RGB"
        if fid in ("5", "6"):  # 16- and 32-bit grey: scaled to mid grey, not clipped to white
            assert abs(rgb.getpixel((10, 10))[0] - 128) <= 1, r["face_path"]


def test_a_crop_that_still_cannot_be_saved_is_a_row_status(server, tmp_path, monkeypatch):
    import clip_unlearn.facescrub as facescrub

    monkeypatch.setattr(facescrub, "storable", lambda im, fmt: im)  # as if a mode had no conversion
    rows = [("Mode Test", 1, 1, f"{server.url}/mode/cmyk.tif", "5,5,35,35", ""),
            ("Mode Test", 2, 2, f"{server.url}/img/2.jpg", "0,0,20,20", "")]
    out = tmp_path / "fs"
    lst = write_list(tmp_path / "facescrub_actors.txt", rows)
    result = runner.invoke(app, ["-q", "prepare-facescrub", "--lists", str(lst), "--out", str(out), "--workers", "1"])
    assert result.exit_code == 0, result.output
    m = manifest(out)
    assert m[("Mode Test", "1")]["status"] == "unsavable" and m[("Mode Test", "1")]["face_path"] == ""
    assert m[("Mode Test", "1")]["image_path"]  # the verified original is kept
    assert m[("Mode Test", "2")]["status"] == "ok"
