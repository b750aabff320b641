"""prepare-facescrub: download, verify, crop and lay out FaceScrub from its official list files.

Layout (what the paper's loaders and ``attack`` read, docs/method.md §3):
``<out>/<group>/images/<First_Last>/<First_Last>_<image_id>.<ext>`` (the verified original) and
``<out>/<group>/faces/<First_Last>/<First_Last>_<image_id>_<face_id>.<ext>`` (the bbox crop).
Every file is written under a hidden temporary name, verified, then renamed, so an interrupted
run never leaves a partial or unverified image; a re-run skips what is already there.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import threading
import time
import unicodedata
import warnings
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional
from urllib.parse import urljoin, urlparse

from clip_unlearn.config import PrepareFacescrubConfig, to_dict
from clip_unlearn.errors import ClipUnlearnError
from clip_unlearn.folders import FACESCRUB_NAME_FIXES, eight_bit
from clip_unlearn.names import key, normalise, read_names
from clip_unlearn.outputs import csv_text, write_bytes, write_json, write_text
from clip_unlearn.progress import Progress

log = logging.getLogger(__name__)
USER_AGENT = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36"
FORMATS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif", "BMP": "bmp", "TIFF": "tif"}
CROP_FORMATS = {"jpg": "JPEG", "png": "PNG", "webp": "WEBP"}  # others are cropped to PNG (attack reads these)
# The modes each crop format stores; any other crop is converted first (CMYK cannot be a PNG, LA or P a JPEG).
CROP_MODES = {"JPEG": ("L", "RGB"), "PNG": ("L", "LA", "P", "RGB", "RGBA"), "WEBP": ("RGB", "RGBA")}
MANIFEST_COLUMNS = ("group", "name", "image_id", "face_id", "url", "status", "bytes", "image_path", "face_path")


@dataclass(frozen=True)
class Row:
    group: str
    name: str
    image_id: str
    face_id: str
    url: str
    bbox: Optional[tuple[int, int, int, int]]
    sha256: str
    line: int


def default_out() -> Path:
    import platformdirs

    return Path(platformdirs.user_data_dir("clip-unlearn")) / "facescrub"


def safe_folder(name: str) -> str:
    """A folder name that cannot leave the output root: no separators, no '..', no control characters."""
    name = unicodedata.normalize("NFC", name)
    name = "".join(c for c in name if c.isprintable() and c not in "/\\\x00")
    name = "_".join(name.split()).replace("..", "_").strip("._ ")
    return name or "_"


def parse_list(path: Path, group: Optional[str]) -> tuple[list[Row], list[str]]:
    """Rows of one list file and messages for malformed rows (reported with their line number, skipped)."""
    path = Path(path)
    if not path.is_file():
        raise ClipUnlearnError(f"list file {path} does not exist; pass the FaceScrub list files with --lists")
    group = group or ("actresses" if "actress" in path.name.lower() else "actors")
    rows, bad = [], []
    with path.open(encoding="utf-8-sig", newline="") as f:
        for i, fields in enumerate(csv.reader(f, delimiter="\t"), start=1):
            if i == 1 and fields and fields[0].strip().lower() == "name":
                continue
            if not fields or not any(x.strip() for x in fields):
                continue
            if len(fields) < 4:
                bad.append(f"{path.name}:{i}: expected name, image_id, face_id, url, bbox, sha256")
                continue
            name, image_id, face_id, url = (x.strip() for x in fields[:4])
            bbox = None
            if len(fields) > 4 and fields[4].strip():
                try:
                    x1, y1, x2, y2 = (int(round(float(v))) for v in fields[4].split(","))
                    bbox = (x1, y1, x2, y2)
                except ValueError:
                    bad.append(f"{path.name}:{i}: bbox {fields[4]!r} is not x1,y1,x2,y2")
                    continue
            sha = fields[5].strip().lower() if len(fields) > 5 else ""
            if not name or not image_id.isdigit() or not face_id.isdigit() or urlparse(url).scheme not in ("http", "https"):
                bad.append(f"{path.name}:{i}: needs a name, numeric image_id and face_id, and an http(s) URL")
                continue
            name = normalise(name)
            rows.append(Row(group, FACESCRUB_NAME_FIXES.get(name, name), image_id, face_id, url, bbox, sha, i))
    return rows, bad


class Fetcher:
    """HTTP with pooling, a browser-like User-Agent, http(s)-only redirects, timeouts, a size cap,
    and bounded retries with exponential backoff for timeouts, 429 and 5xx only."""

    def __init__(self, cfg: PrepareFacescrubConfig) -> None:
        import httpx

        self.httpx = httpx
        self.cfg = cfg
        self.client = httpx.Client(headers={"User-Agent": USER_AGENT}, timeout=cfg.timeout, follow_redirects=False,
                                   limits=httpx.Limits(max_connections=cfg.workers, max_keepalive_connections=cfg.workers))

    def close(self) -> None:
        self.client.close()

    def get(self, url: str) -> tuple[str, Optional[bytes]]:
        """→ (status, body): status is ok, http_error:<code>, timeout, too_large, bad_redirect or network_error."""
        status = "network_error"
        for attempt in range(self.cfg.retries + 1):
            if attempt:
                time.sleep(min(8.0, 0.25 * 2 ** (attempt - 1)))
            status, body = self._once(url)
            if status == "ok" or not (status == "timeout" or status in ("http_error:429",) or status.startswith("http_error:5")):
                return status, body
        return status, None

    def _once(self, url: str) -> tuple[str, Optional[bytes]]:
        httpx = self.httpx
        try:
            for _ in range(6):
                with self.client.stream("GET", url) as r:
                    if r.status_code in (301, 302, 303, 307, 308):
                        url = urljoin(url, r.headers.get("location", ""))
                        if urlparse(url).scheme not in ("http", "https"):
                            return "bad_redirect", None
                        continue
                    if r.status_code != 200:
                        return f"http_error:{r.status_code}", None
                    if int(r.headers.get("content-length") or 0) > self.cfg.max_bytes:
                        return "too_large", None
                    buf = bytearray()
                    for chunk in r.iter_bytes():
                        buf += chunk
                        if len(buf) > self.cfg.max_bytes:
                            return "too_large", None
                    return "ok", bytes(buf)
            return "bad_redirect", None
        except httpx.TimeoutException:
            return "timeout", None
        except (httpx.HTTPError, OSError):
            return "network_error", None


def _decode(data: bytes) -> Optional[Any]:
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
            fmt = im.format
            im.load()
        im.format_hint = fmt  # type: ignore[attr-defined]
        return im
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError, Image.DecompressionBombWarning):
        return None


def storable(im: Any, fmt: str) -> Any:
    """``im`` in a mode that Pillow can write as ``fmt`` (JPEG, PNG or WEBP), keeping transparency where ``fmt`` can."""
    im = eight_bit(im)
    if im.mode in CROP_MODES[fmt]:
        return im
    alpha = im.mode in ("LA", "La", "PA", "RGBa") or "transparency" in im.info
    if alpha and "RGBA" in CROP_MODES[fmt]:
        return im.convert("RGBA")
    grey = im.mode in ("1", "LA", "La")
    return im.convert("L" if grey and "L" in CROP_MODES[fmt] else "RGB")


def _existing(folder: Path, stem: str) -> Optional[Path]:
    if not folder.is_dir():
        return None
    return next((p for p in folder.glob(f"{stem}.*") if not p.name.startswith(".")), None)


def process(row: Row, out: Path, cfg: PrepareFacescrubConfig, fetch: Fetcher) -> dict[str, Any]:
    folder = safe_folder(row.name)
    img_dir, face_dir = out / row.group / "images" / folder, out / row.group / "faces" / folder
    img_stem, face_stem = f"{folder}_{row.image_id}", f"{folder}_{row.image_id}_{row.face_id}"
    rec = {"group": row.group, "name": row.name, "image_id": row.image_id, "face_id": row.face_id, "url": row.url,
           "status": "", "bytes": 0, "image_path": "", "face_path": ""}
    have_img, have_face = _existing(img_dir, img_stem), _existing(face_dir, face_stem)
    img_ok = have_img is not None and (not cfg.verify or not row.sha256 or
                                       hashlib.sha256(have_img.read_bytes()).hexdigest() == row.sha256)
    if (img_ok or not cfg.images) and (have_face is not None or not cfg.faces) and (have_img or have_face):
        rec.update(status="skipped_existing", image_path=str(have_img.relative_to(out)) if have_img else "",
                   face_path=str(have_face.relative_to(out)) if have_face else "")
        return rec
    status, data = fetch.get(row.url)
    if status != "ok":
        return {**rec, "status": status}
    rec["bytes"] = len(data)
    im = _decode(data)
    if im is None:
        return {**rec, "status": "not_an_image"}
    if cfg.verify and row.sha256 and hashlib.sha256(data).hexdigest() != row.sha256:
        return {**rec, "status": "sha256_mismatch"}
    ext = FORMATS.get(getattr(im, "format_hint", None) or "", "img")
    if cfg.images:
        path = img_dir / f"{img_stem}.{ext}"
        write_bytes(path, data)
        rec["image_path"] = str(path.relative_to(out))
    if cfg.faces:
        if row.bbox is None:
            return {**rec, "status": "bad_bbox"}
        x1, y1, x2, y2 = row.bbox
        x1, x2 = max(0, min(x1, im.width)), max(0, min(x2, im.width))
        y1, y2 = max(0, min(y1, im.height)), max(0, min(y2, im.height))
        if x2 <= x1 or y2 <= y1:
            return {**rec, "status": "bad_bbox"}
        crop_ext = ext if ext in CROP_FORMATS else "png"
        buf = io.BytesIO()
        try:
            crop = storable(im.crop((x1, y1, x2, y2)), CROP_FORMATS[crop_ext])
            crop.save(buf, format=CROP_FORMATS[crop_ext], **({"quality": 95} if crop_ext == "jpg" else {}))
        except (OSError, ValueError) as e:
            # one odd image must not end a download of 100k rows; the row says what happened
            log.debug("crop of %s cannot be saved as %s: %s", row.url, crop_ext, e)
            return {**rec, "status": "unsavable"}
        path = face_dir / f"{face_stem}.{crop_ext}"
        write_bytes(path, buf.getvalue())
        rec["face_path"] = str(path.relative_to(out))
    return {**rec, "status": "ok"}


def _clean_stale_temps(out: Path) -> int:
    stale = [p for p in out.rglob(".*.tmp") if p.is_file()] if out.is_dir() else []
    for p in stale:
        p.unlink(missing_ok=True)
    return len(stale)


def run_prepare(cfg: PrepareFacescrubConfig, progress: Progress = None) -> dict[str, Any]:
    """Download and lay out every row of the lists; returns the summary and the manifest rows."""

    t0 = time.perf_counter()
    out = Path(cfg.out) if cfg.out is not None else default_out()
    rows, bad = _wanted_rows(cfg)
    if not rows:
        raise ClipUnlearnError("the lists contain no usable rows; check --lists and --identities")
    out.mkdir(parents=True, exist_ok=True)
    _clean_stale_temps(out)
    records, downloaded = _download(rows, out, cfg, progress, t0)
    order = {(r.group, r.name, r.image_id, r.face_id): i for i, r in enumerate(rows)}
    records.sort(key=lambda d: order[(d["group"], d["name"], d["image_id"], d["face_id"])])
    statuses: dict[str, int] = {}
    for rec in records:
        statuses[rec["status"]] = statuses.get(rec["status"], 0) + 1
    usable: dict[str, int] = {}
    for rec in records:
        if rec["face_path"] or rec["image_path"]:
            usable[rec["name"]] = usable.get(rec["name"], 0) + 1
    summary = {
        "rows": len(rows), "malformed_rows": len(bad), "statuses": dict(sorted(statuses.items())),
        "identities": len({r.name for r in rows}), "identities_with_20_usable": sum(v >= 20 for v in usable.values()),
        "bytes": downloaded, "wall_time_s": round(time.perf_counter() - t0, 2), "out": str(out),
    }
    write_text(out / "manifest.csv", csv_text(records, MANIFEST_COLUMNS))
    write_json(out / "prepare_facescrub.json", {"config": to_dict(cfg), "summary": summary})
    return {"summary": summary, "manifest": records}


def _wanted_rows(cfg: PrepareFacescrubConfig) -> tuple[list[Row], list[str]]:
    """The rows of every list that ``--identities`` and ``--max-per-identity`` keep, and the malformed rows' messages."""
    rows, bad = [], []
    for path in cfg.lists or []:
        r, b = parse_list(path, cfg.group)
        rows += r
        bad += b
    for msg in bad[:20]:
        log.warning("malformed row skipped: %s", msg)
    if cfg.identities is not None:
        wanted = {key(n) for n in read_names(cfg.identities, "identities file")}
        rows = [r for r in rows if key(r.name) in wanted]
    if cfg.max_per_identity is not None:
        seen: dict[str, int] = {}
        kept = []
        for r in rows:
            seen[key(r.name)] = seen.get(key(r.name), 0) + 1
            if seen[key(r.name)] <= cfg.max_per_identity:
                kept.append(r)
        rows = kept
    return rows, bad


def _download(rows: list[Row], out: Path, cfg: PrepareFacescrubConfig, progress: Progress,
              t0: float) -> tuple[list[dict[str, Any]], int]:
    """(a manifest record per row, in completion order; the bytes downloaded), ``cfg.workers`` rows at a time."""
    fetch = Fetcher(cfg)
    records: list[dict[str, Any]] = []
    lock = threading.Lock()
    counts = {"ok": 0, "failed": 0, "bytes": 0}
    try:
        with ThreadPoolExecutor(max_workers=cfg.workers) as pool:
            futures = [pool.submit(process, r, out, cfg, fetch) for r in rows]
            for fut in as_completed(futures):
                rec = fut.result()
                with lock:
                    records.append(rec)
                    ok = rec["status"] in ("ok", "skipped_existing")
                    counts["ok" if ok else "failed"] += 1
                    counts["bytes"] += rec["bytes"]
                    if progress:
                        mbs = counts["bytes"] / 1e6 / max(1e-9, time.perf_counter() - t0)
                        progress("downloading", len(records), len(rows), f"ok {counts['ok']}  failed {counts['failed']}  {mbs:.1f} MB/s")
    finally:
        fetch.close()
    return records, counts["bytes"]
