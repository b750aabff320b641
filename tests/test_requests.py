"""Request after request: inject on a model that inject wrote chains the provenance, recognises names an
earlier request forgot (by the receipt's keys), and never writes a name in clear."""

from __future__ import annotations

import json
from pathlib import Path

from clip_unlearn.names import key
from conftest import SMOKE, invoke, output


def _names(tmp_path: Path, file: str, names: list[str]) -> Path:
    f = tmp_path / file
    f.write_text("".join(n + "\n" for n in names))
    return f


def _side(model: Path) -> dict:
    return json.loads((model / "clip_unlearn.json").read_text())


def _bytes(*roots: Path) -> bytes:
    return b"\n".join(p.read_bytes() for r in roots for p in ([r] if r.is_file() else r.rglob("*")) if p.is_file())


def test_a_second_request_chains_lineage_and_skips_names_already_forgotten(world, tmp_path):
    members = (world / "members.txt").read_text().splitlines()
    first, second = members[:2], members[2:4]
    r1 = _names(tmp_path, "r1.txt", first)
    u1, u2 = tmp_path / "u1", tmp_path / "u2"
    r = invoke("inject", "--model", world / "model", "--names", r1, "--out", u1, *SMOKE)
    assert r.exit_code == 0, output(r)
    s1 = _side(u1)
    assert [e["request"] for e in s1["lineage"]] == [1] and s1["lineage"][0]["names_count"] == 2
    assert s1["lineage"][0]["request_id"] == s1["request"]["id"] and len(s1["lineage"][0]["name_hmacs"]) == 2

    # request 2 repeats one name of request 1 (line 2) among two new ones
    r2 = _names(tmp_path, "r2.txt", [second[0], first[1], second[1]])
    r = invoke("inject", "--model", u1, "--names", r2, "--out", u2, *SMOKE, quiet=False)
    text = " ".join(output(r).split())
    assert r.exit_code == 0, text
    assert "1 name(s)" in text and "#2 (request 1)" in text and "not trained again" in text
    assert not any(part in text for n in [*first, *second] for part in n.split())  # by position only
    s2 = _side(u2)
    assert s2["names"] == {"count": 3, "trained": 2, "already_forgotten": 1}
    assert [e["request"] for e in s2["lineage"]] == [1, 2]
    assert s2["lineage"][0] == s1["lineage"][0]
    assert s2["lineage"][1]["base_model_sha256"] == s1["lineage"][0]["model_sha256"] == s2["base_model_sha256"]
    assert s2["lineage"][1]["request_id"] == s2["request"]["id"] and s2["lineage"][1]["names_trained"] == 2
    # the keyed hashes of one person differ between requests: nothing links them without both receipts
    assert not set(s2["lineage"][0]["name_hmacs"]) & set(s2["lineage"][1]["name_hmacs"])
    receipt2 = u2.parent / "u2.receipt.json"
    assert len(json.loads(receipt2.read_text())["ancestors"]) == 1

    # the receipt proves the whole chain; a names file that is not request 2's fails
    ok = invoke("verify-receipt", "--model", u2, "--receipt", receipt2, "--names", r2, quiet=False)
    assert ok.exit_code == 0, output(ok)
    assert "lineage records every request" in " ".join(output(ok).split())
    assert invoke("verify-receipt", "--model", u2, "--receipt", receipt2, "--names", r1).exit_code == 1

    # no name in clear in anything the two requests wrote (folders, receipts)
    written = _bytes(u1, u2, u1.parent / "u1.receipt.json", receipt2).lower()
    assert not [p for n in [*first, *second] for p in n.split() if p.lower().encode() in written]
    assert not [n for n in [*first, *second] if key(n).encode() in written]
    # nor can the published folders be inverted by enumerating the candidates: no unkeyed digest of any
    # member's name (plain, normalised, or as the receipt's HMAC message) appears in them
    import hashlib
    import hmac

    folders = _bytes(u1, u2).lower()
    for n in members:
        for msg in (n, key(n), "name|" + key(n)):
            for digest in (hashlib.sha256(msg.encode()).hexdigest(), hmac.new(b"", msg.encode(), hashlib.sha256).hexdigest()):
                assert digest.encode() not in folders, f"an unkeyed digest of {n!r} is in a model folder"

    # request 3 names only people already forgotten: nothing to train, nothing written
    r3 = _names(tmp_path, "r3.txt", [first[0], second[1]])
    r = invoke("inject", "--model", u2, "--names", r3, "--out", tmp_path / "u3", *SMOKE)
    assert r.exit_code == 1 and "every name" in output(r) and "--retrain-forgotten" in output(r)
    assert "(request 1)" in output(r) and "(request 2)" in output(r) and not (tmp_path / "u3").exists()
    r = invoke("inject", "--model", u2, "--names", r3, "--out", tmp_path / "u3", "--retrain-forgotten", *SMOKE)
    assert r.exit_code == 0, output(r)
    s3 = _side(tmp_path / "u3")
    assert s3["names"]["trained"] == 2 and [e["request"] for e in s3["lineage"]] == [1, 2, 3]


def test_without_the_receipt_the_chain_is_kept_and_names_are_trained_with_a_warning(world, tmp_path):
    members = (world / "members.txt").read_text().splitlines()
    r1 = _names(tmp_path, "r1.txt", members[:1])
    u1 = tmp_path / "u1"
    assert invoke("inject", "--model", world / "model", "--names", r1, "--out", u1, *SMOKE).exit_code == 0
    receipt = tmp_path / "u1.receipt.json"
    kept = receipt.rename(tmp_path / "operator-records.json")  # the receipt is not beside the model any more
    r = invoke("inject", "--model", u1, "--names", r1, "--out", tmp_path / "u2", *SMOKE, quiet=False)
    assert r.exit_code == 0, output(r)
    assert "no receipt" in " ".join(output(r).split()) and "--previous-receipt" in output(r)
    s2 = _side(tmp_path / "u2")
    assert s2["names"]["trained"] == 1 and [e["request"] for e in s2["lineage"]] == [1, 2]
    # naming the receipt finds the repeat again
    r = invoke("inject", "--model", u1, "--names", r1, "--out", tmp_path / "u3", "--previous-receipt", kept, *SMOKE)
    assert r.exit_code == 1 and "every name" in output(r)
    # a receipt of other weights is refused before anything is written
    r = invoke("inject", "--model", tmp_path / "u2", "--names", r1, "--out", tmp_path / "u4", "--previous-receipt", kept, *SMOKE)
    assert r.exit_code == 1 and "other weights" in output(r) and not (tmp_path / "u4").exists()
