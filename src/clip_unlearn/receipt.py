"""Receipts: which request an unlearned model answers, provable by the operator alone.

A model folder may be published, so it holds nothing that identifies the forgotten people:
no name, no names-file hash, no per-name hash (each is inverted by hashing a candidate list).
It holds only the count and a request id, HMAC-SHA256 under a random 256-bit key. The key,
the per-name HMACs and the fingerprints go into a receipt file that stays with the operator;
with it and the names file, `verify-receipt` proves that this model answered this request.
The receipt is as sensitive as the names file: with its key, a candidate list is checkable.

Requests chain: inject on a model that inject wrote is request 2. The new sidecar's ``lineage``
lists every request in order with the weights before and after it, its names count and its
per-name HMACs (keyed by that request's secret, so without the receipt they are random strings;
each request has its own key, so no name can be linked across requests either). The new receipt
carries the earlier requests' keys (``ancestors``), so that the next request recognises a name
that was already forgotten, and it is as sensitive as all the requests' names files together.
"""

from __future__ import annotations

import hashlib
import hmac
import random
import secrets
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Optional

from clip_unlearn import __version__
from clip_unlearn.errors import ClipUnlearnError
from clip_unlearn.names import key

KIND = "clip-unlearn-receipt"


def _mac(secret: str, message: str) -> str:
    return hmac.new(bytes.fromhex(secret), message.encode("utf-8"), hashlib.sha256).hexdigest()


def name_macs(secret: str, names: list[str]) -> list[str]:
    return sorted(_mac(secret, "name|" + key(n)) for n in names)


def new_key() -> str:
    return secrets.token_hex(32)


MADE_UP = "a made-up name per person (from the receipt's key)"
MADE_UP_FACE = "a made-up face per person (from the receipt's key)"


def made_up_names(secret: str, names: Iterable[str]) -> dict[str, str]:
    """key(name) → the made-up name it is mapped to: a function of the key and that name alone, so the operator
    (who holds the receipt) can rebuild it from any subset of the request and nobody else can guess it. Its
    parts are no part of any name pool or shipped public person (names.made_up_name); two names meeting on
    one made-up name is a one-in-10^13 event."""
    from clip_unlearn.names import made_up_name

    return {key(n): made_up_name(random.Random(_mac(secret, "made-up|" + key(n))), avoid=[n]) for n in names}


def made_up_face_seeds(secret: str, names: Iterable[str]) -> dict[str, int]:
    """key(name) → the seed of the made-up face a forgotten person's photos are sent to (inject --made-up with the
    image stage): like made_up_names, a function of the key and the name alone."""
    return {key(n): int(_mac(secret, "made-up-face|" + key(n))[:16], 16) for n in names}


def request_id(secret: str, macs: list[str], model_sha256: str, encoder: str) -> str:
    return _mac(secret, "request|" + encoder + "|" + model_sha256 + "|" + ",".join(sorted(macs)))


def new_receipt(names: list[str], model_sha256: str, base_sha256: str, encoder: str, out: Path,
                ancestors: Optional[list[dict[str, Any]]] = None, secret: Optional[str] = None) -> dict[str, Any]:
    secret = secret or new_key()
    macs = name_macs(secret, names)
    return {
        "kind": KIND, "tool_version": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "model_folder": str(Path(out).resolve()), "model_sha256": model_sha256, "base_model_sha256": base_sha256,
        "encoder": encoder, "names_count": len(names), "key": secret, "name_hmacs": macs,
        "request_id": request_id(secret, macs, model_sha256, encoder),
        "ancestors": list(ancestors or []),
    }


def chain(receipt: dict[str, Any]) -> list[dict[str, Any]]:
    """Every request a receipt knows, oldest first, with its key: its ancestors, then itself."""
    own = {k: receipt[k] for k in ("request_id", "key", "name_hmacs", "model_sha256", "base_model_sha256", "encoder",
                                   "names_count") if k in receipt}
    return [*receipt.get("ancestors", []), own]


def lineage_entry(receipt: dict[str, Any], number: int, trained: int) -> dict[str, Any]:
    """A request as the published sidecar records it: everything but the key."""
    return {"request": number, "request_id": receipt["request_id"], "encoder": receipt["encoder"],
            "names_count": receipt["names_count"], "names_trained": trained,
            "base_model_sha256": receipt["base_model_sha256"], "model_sha256": receipt["model_sha256"],
            "name_hmacs": receipt["name_hmacs"]}


def forgotten_by(requests: list[dict[str, Any]], name: str) -> Optional[int]:
    """The number (1-based, oldest first) of the first request in ``requests`` that forgot ``name``, or None."""
    for number, r in enumerate(requests, 1):
        if _mac(r["key"], "name|" + key(name)) in set(r["name_hmacs"]):
            return number
    return None


def write_receipt(path: Path, receipt: dict[str, Any]) -> None:
    """Atomically, readable by its owner only."""
    from clip_unlearn.outputs import write_json

    write_json(path, receipt, mode=0o600)


def read_receipt(path: Path) -> dict[str, Any]:
    from clip_unlearn.models import read_json

    data = read_json(path, "pass the .receipt.json that inject wrote")
    needed = ("key", "name_hmacs", "request_id", "model_sha256", "encoder")
    if not isinstance(data, dict) or data.get("kind") != KIND or any(k not in data for k in needed):
        raise ClipUnlearnError(f"receipt {path} is not a clip-unlearn receipt; pass the .receipt.json that inject wrote")
    try:
        bytes.fromhex(data["key"])
    except (TypeError, ValueError):
        raise ClipUnlearnError(f"receipt {path} has a damaged key") from None
    return data


def verify(model_sha256: str, sidecar: dict[str, Any], receipt: dict[str, Any], names: Optional[list[str]]) -> list[dict[str, Any]]:
    """Each check as {check, ok, detail}; the model answers the request iff all are ok."""
    secret = receipt["key"]
    recorded = (sidecar.get("request") or {}).get("id")
    checks = [
        {"check": "model weights are the ones the receipt was issued for", "ok": model_sha256 == receipt["model_sha256"],
         "detail": "sha256 of the weights"},
        {"check": "the model folder records this receipt's request", "ok": recorded is not None and hmac.compare_digest(
            str(recorded), receipt["request_id"]), "detail": "request id in clip_unlearn.json"},
        {"check": "the receipt is intact", "ok": hmac.compare_digest(
            request_id(secret, receipt["name_hmacs"], receipt["model_sha256"], receipt["encoder"]), receipt["request_id"]),
         "detail": "request id recomputed from the receipt"},
    ]
    ancestors = receipt.get("ancestors") or []
    if ancestors:
        recorded_chain = [r.get("request_id") for r in sidecar.get("lineage") or []]
        wanted = [a["request_id"] for a in ancestors] + [receipt["request_id"]]
        checks.append({"check": "the model's lineage records every request of the receipt, in order",
                       "ok": recorded_chain == wanted,
                       "detail": f"{len(wanted)} requests in the receipt, {len(recorded_chain)} in clip_unlearn.json"})
    if names is not None:
        mine = name_macs(secret, names)
        theirs = set(receipt["name_hmacs"])
        missing = sum(m not in theirs for m in mine)
        extra = len(theirs - set(mine))
        checks.append({"check": "the names file is exactly the request's names", "ok": missing == 0 and extra == 0,
                       "detail": f"{len(mine)} names given; {missing} not in the request, {extra} of the request not given"})
    return checks


def run_verify(model: str, receipt_path: Path, names_path: Optional[Path]) -> list[dict[str, Any]]:
    from clip_unlearn.models import load_model, parse_spec, read_sidecar
    from clip_unlearn.names import read_names

    receipt = read_receipt(receipt_path)
    spec = parse_spec(model)
    sidecar = read_sidecar(spec)
    names = read_names(names_path, "names file") if names_path is not None else None
    loaded = load_model(spec, "cpu")
    return verify(loaded.fingerprint(), sidecar, receipt, names)
