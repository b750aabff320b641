"""prepare-facescrub throughput against a local HTTP server (loopback only).

    python benchmarks/bench_facescrub.py --rows 2000 --workers 16
"""

from __future__ import annotations

import argparse
import hashlib
import io
import shutil
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from _common import append, median, timed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=2000)
    ap.add_argument("--workers", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    from PIL import Image

    from clip_unlearn.config import PrepareFacescrubConfig
    from clip_unlearn.facescrub import run_prepare

    images = []
    for i in range(64):
        buf = io.BytesIO()
        Image.new("RGB", (250, 250), (i * 3 % 255, i * 7 % 255, i * 11 % 255)).save(buf, format="JPEG", quality=90)
        images.append(buf.getvalue())

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_GET(self):
            body = images[int(self.path.strip("/").split(".")[0]) % len(images)]
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}"
    work = Path(tempfile.mkdtemp(prefix="bench-facescrub-"))
    lines = ["name\timage_id\tface_id\turl\tbbox\tsha256"]
    for i in range(args.rows):
        lines.append(f"Person {i % 100}\t{i}\t{i}\t{url}/{i}.jpg\t20,20,200,200\t{hashlib.sha256(images[i % 64]).hexdigest()}")
    (work / "facescrub_actors.txt").write_text("\n".join(lines) + "\n")
    times, resumes = [], []
    for r in range(args.repeats):
        out = work / f"out{r}"
        cfg = PrepareFacescrubConfig(lists=[work / "facescrub_actors.txt"], out=out, workers=args.workers)
        times.append(timed(lambda c=cfg: run_prepare(c)))
        resumes.append(timed(lambda c=cfg: run_prepare(c)))
    httpd.shutdown()
    shutil.rmtree(work, ignore_errors=True)
    mb = args.rows * sum(map(len, images)) / len(images) / 1e6
    append("prepare-facescrub — local HTTP server", [
        ("rows (250×250 JPEG, verified, cropped)", str(args.rows)),
        ("workers", str(args.workers)),
        ("rows/s (fresh)", f"{args.rows / median(times):.0f}"),
        ("MB/s (fresh)", f"{mb / median(times):.1f}"),
        ("rows/s (re-run, all skipped_existing)", f"{args.rows / median(resumes):.0f}"),
    ], note=f"median of {args.repeats} runs; server and client share the 2 cores")


if __name__ == "__main__":
    main()
