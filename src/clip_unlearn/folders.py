"""Reading image folders (DESIGN.md §3): face folders for attack/inject, class folders for zero-shot.

Face folders are either a FaceScrub root (``actors/`` and/or ``actresses/``, each with
``images/`` and/or ``faces/``) or a plain folder of identity folders ``<First_Last>/*.jpg``.
The train/test split is by image id and hashed with a fixed seed, so the uncropped and the
cropped view of one photo always land on the same side (METHOD.md §3 [bug] fixed).
"""

from __future__ import annotations

import hashlib
import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from clip_unlearn.errors import ClipUnlearnError
from clip_unlearn.names import key, normalise

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
FACESCRUB_GROUPS = ("actors", "actresses")
# Official FaceScrub misspellings → correct names (METHOD.md §3); folders keep the list's spelling.
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


def image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))


def is_facescrub_root(root: Path) -> bool:
    return any((root / g / v).is_dir() for g in FACESCRUB_GROUPS for v in ("images", "faces"))


def face_folders(root: Path, view: str = "images") -> list[IdentityFolder]:
    """Identity folders under ``root`` in a stable order (FaceScrub: actors first, then actresses).

    Args:
        root: a FaceScrub root or a folder of identity folders.
        view: for a FaceScrub root, ``images`` (uncropped, the paper's attack) or ``faces`` (crops);
            falls back to the other view when a group has only one.
    """
    root = Path(root)
    if not root.is_dir():
        raise ClipUnlearnError(f"face folder {root} does not exist; run `clip-unlearn prepare-facescrub` or pass --data")
    if is_facescrub_root(root):
        parents = []
        for g in FACESCRUB_GROUPS:
            other = "faces" if view == "images" else "images"
            chosen = root / g / view if (root / g / view).is_dir() else root / g / other
            if chosen.is_dir():
                parents.append(chosen)
    else:
        parents = [root]
    out: list[IdentityFolder] = []
    seen: dict[str, Path] = {}
    for parent in parents:
        for d in sorted(p for p in parent.iterdir() if p.is_dir() and not p.name.startswith(".")):
            name = normalise(d.name)
            name = FACESCRUB_NAME_FIXES.get(name, name)
            if key(name) in seen:
                log.warning("identity %s appears twice (%s and %s); using the first", name, seen[key(name)], d)
                continue
            seen[key(name)] = d
            out.append(IdentityFolder(name, tuple(image_files(d))))
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
    h = hashlib.sha256(f"{seed}|{key(identity)}|{image_id(path)}".encode()).digest()
    return "test" if int.from_bytes(h[:8], "big") / 2**64 < ratio else "train"


def read_image(data: bytes) -> Optional[object]:
    """Decode image bytes to RGB with Pillow's decompression-bomb guard on; None if unreadable."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            return im.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError, SyntaxError):
        return None


def class_folders(root: Path) -> list[tuple[str, list[Path]]]:
    """ImageFolder layout ``<class>/*.jpg`` in sorted folder order; an empty class is an error."""
    root = Path(root)
    if not root.is_dir():
        raise ClipUnlearnError(f"image folder {root} does not exist; pass --data DIR with one sub-folder per class")
    out = []
    for d in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = image_files(d)
        if not files:
            raise ClipUnlearnError(f"class folder {d} has no images (.jpg, .jpeg, .png, .webp); remove it or add images")
        out.append((d.name, files))
    if not out:
        raise ClipUnlearnError(f"image folder {root} has no class folders; expected <class>/*.jpg")
    return out
