"""Reading image folders (docs/design.md §3): face folders for attack/inject, class folders for zero-shot.

Face folders are either a FaceScrub root (``actors/`` and/or ``actresses/``, each with
``images/`` and/or ``faces/``) or a plain folder of identity folders ``<First_Last>/*.jpg``.
The train/test split is by image id and hashed with a fixed seed, so the uncropped and the
cropped view of one photo always land on the same side (docs/method.md §3, fixed).
"""

from __future__ import annotations

import errno
import hashlib
import io
import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from clip_unlearn.errors import ClipUnlearnError
from clip_unlearn.names import key, normalise

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
FACESCRUB_GROUPS = ("actors", "actresses")
# Official FaceScrub misspellings → correct names (docs/method.md §3); folders keep the list's spelling.
FACESCRUB_NAME_FIXES = {
    "Freddy Prinze Jr.": "Freddie Prinze Jr",
    "Leslie Neilsen": "Leslie Nielsen",
    "Robert Di Niro": "Robert De Niro",
    "Tatyana M. Ali": "Tatyana Ali",
}


@dataclass(frozen=True)
class IdentityFolder:
    name: str
    files: tuple[Path, ...]
    # "male"/"female" where the data says so (FaceScrub's actors/actresses lists), for the title variant
    gender: Optional[str] = None


def path_problem(path: Path, want: str = "folder") -> str:
    """Why ``path`` is not an existing ``want`` (``folder`` or ``file``), as words to follow its
    name ("does not exist", "is a file, not a folder", "is a symbolic link that loops", ...); "" if it is one."""
    try:
        st = os.stat(path)
    except OSError as e:
        if e.errno == errno.ELOOP:
            return "is a symbolic link that loops back on itself (or a folder on its path does)"
        if os.path.islink(path):
            try:
                target = os.readlink(path)
            except OSError:
                target = "?"
            return f"is a broken symbolic link (to {target}, which does not exist)"
        if e.errno in (errno.EACCES, errno.EPERM):
            return "cannot be accessed (permission denied)"
        if e.errno == errno.ENOTDIR:
            return "does not exist (a part of its path is a file, not a folder)"
        return "does not exist"
    if want == "folder" and not stat.S_ISDIR(st.st_mode):
        return "is a file, not a folder"
    if want == "file" and stat.S_ISDIR(st.st_mode):
        return "is a folder, not a file"
    return ""


def require_dir(path: Path, what: str, fix: str) -> Path:
    """``path`` if it is a folder, else one ClipUnlearnError line: "<what> <path> <why>; <fix>"."""
    problem = path_problem(path)
    if problem:
        raise ClipUnlearnError(f"{what} {path} {problem}; {fix}")
    return Path(path)


def _entries(folder: Path) -> list[Path]:
    try:
        return sorted(folder.iterdir())
    except OSError as e:
        raise ClipUnlearnError(f"folder {folder} cannot be read ({e.strerror}); check its permissions") from None


def image_files(folder: Path) -> list[Path]:
    return [p for p in _entries(folder) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")]


def is_facescrub_root(root: Path) -> bool:
    return any((root / g / v).is_dir() for g in FACESCRUB_GROUPS for v in ("images", "faces"))


def face_folders(root: Path, view: str = "images") -> list[IdentityFolder]:
    """Identity folders under ``root`` in a stable order (FaceScrub: actors first, then actresses).

    Args:
        root: a FaceScrub root or a folder of identity folders.
        view: for a FaceScrub root, ``images`` (uncropped, the paper's attack) or ``faces`` (crops);
            falls back to the other view when a group has only one.
    """
    root = require_dir(Path(root), "face folder", "run `clip-unlearn prepare-facescrub` or pass --data DIR")
    if is_facescrub_root(root):
        parents = []
        for g in FACESCRUB_GROUPS:
            other = "faces" if view == "images" else "images"
            chosen = root / g / view if (root / g / view).is_dir() else root / g / other
            if chosen.is_dir():
                parents.append((chosen, "male" if g == "actors" else "female"))
    else:
        parents = [(root, None)]
    out: list[IdentityFolder] = []
    seen: dict[str, Path] = {}
    for parent, gender in parents:
        for d in (p for p in _entries(parent) if p.is_dir() and not p.name.startswith(".")):
            name = normalise(d.name)
            name = FACESCRUB_NAME_FIXES.get(name, name)
            if key(name) in seen:
                log.warning("identity %s appears twice (%s and %s); using the first", name, seen[key(name)], d)
                continue
            seen[key(name)] = d
            out.append(IdentityFolder(name, tuple(image_files(d)), gender))
    if not out:
        raise ClipUnlearnError(f"face folder {root} has no identity folders; expected <First_Last>/*.jpg or a FaceScrub root")
    return out


def image_id(path: Path) -> str:
    """FaceScrub file names are ``<Name>_<image_id>[_<face_id>].<ext>``; elsewhere the stem is the id."""
    parts = path.stem.rsplit("_", 2)
    if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
        return parts[1]
    if len(parts) >= 2 and parts[-1].isdigit():
        return parts[-1]
    return path.stem


def split_side(identity: str, path: Path, ratio: float = 0.5, seed: int = 42) -> str:
    """``train`` or ``test`` for one image, decided by a hash of (seed, identity, image id)."""
    # the plain case-folded spelling, not names.key: a split must never move when the key's rules grow
    h = hashlib.sha256(f"{seed}|{normalise(identity).casefold()}|{image_id(path)}".encode()).digest()
    return "test" if int.from_bytes(h[:8], "big") / 2**64 < ratio else "train"


def read_image(data: bytes) -> Optional[object]:
    """Decode image bytes to RGB with Pillow's decompression-bomb guard on; None if unreadable."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            return to_rgb(im)
    except (OSError, ValueError, Image.DecompressionBombError, SyntaxError):
        return None


def eight_bit(im: Any) -> Any:
    """``im`` with 8 bits per channel: 16- and 32-bit grey scaled down to L rather than clipped.

    Pillow's own ``convert("L"/"RGB")`` clips such images, so a 16-bit PNG of a face turns white.
    """
    if im.mode.startswith("I;16") or im.mode == "I":
        im = im.convert("I")
        # 16-bit PNGs and TIFFs are the usual source: their range maps onto 8 bits; an I image
        # that already fits in 8 bits is kept as it is
        scale = 1 / 256 if im.getextrema()[1] > 255 else 1.0
        return im.point(lambda v: v * scale).convert("L")
    if im.mode == "F":
        lo, hi = im.getextrema()
        scale = 255.0 / (hi - lo) if hi > lo else 0.0
        return im.point(lambda v: (v - lo) * scale).convert("L")
    return im


def to_rgb(im: Any) -> Any:
    """``im`` as RGB, through RGBA when a palette has transparency (Pillow warns on the direct path)."""
    im = eight_bit(im)
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    return im.convert("RGB")


def class_folders(root: Path) -> list[tuple[str, list[Path]]]:
    """ImageFolder layout ``<class>/*.jpg`` in sorted folder order; an empty class is an error."""
    root = require_dir(Path(root), "image folder", "pass --data DIR with one sub-folder per class")
    out = []
    for d in (p for p in _entries(root) if p.is_dir() and not p.name.startswith(".")):
        files = image_files(d)
        if not files:
            raise ClipUnlearnError(f"class folder {d} has no images (.jpg, .jpeg, .png, .webp); remove it or add images")
        out.append((d.name, files))
    if not out:
        raise ClipUnlearnError(f"image folder {root} has no class folders; expected <class>/*.jpg")
    return out
