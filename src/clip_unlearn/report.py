"""Rendering of results: rich tables for the terminal, CSV/JSON files for pipelines.

Only the CLI imports this module (the core never imports rich).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.table import Table

from clip_unlearn.outputs import csv_text, json_text, write_text
from clip_unlearn.zeroshot import interval_text


def world_table(info: dict[str, Any], out: Path) -> Table:
    check = info["sanity_check"]
    t = Table(title=f"synthetic world → {out}", show_header=True, header_style="bold")
    t.add_column("measure")
    t.add_column("value", justify="right")
    t.add_row("identities (members / non-members)", f"{info['identities']} ({info['members']} / {info['non_members']})")
    t.add_row("members identified (a photo of {name})", f"{check['member_rate']:.0%}")
    t.add_row("non-members identified", f"{check['non_member_rate']:.0%}")
    t.add_row(f"object zero-shot top-1 ({len(info['classes'])} classes)", f"{check['objects_top1']:.1%}")
    t.add_row("final training loss", f"{info['loss_curve'][-1]:.3f}")
    t.add_row("wall time", f"{info['wall_time_s']:.0f} s")
    return t


def write_attack(result: Any, path: Path) -> None:
    """``.json``: everything; ``.csv``: the fixed columns, plus ``.meta.json`` beside it for --compare-to."""
    from clip_unlearn.attack import csv_rows

    path = Path(path)
    if path.suffix.lower() == ".json":
        write_text(path, json_text(result.to_json()))
    else:
        write_text(path, csv_text(*csv_rows(result)))
        write_text(path.with_suffix(".meta.json"), json_text(result.to_json()))


def attack_table(result: Any, show_names: bool = False) -> Table:
    s = result.summary
    n_templates = s["templates"]
    t = Table(title=f"identity inference attack — {s['identities']} identities, {s['candidates']} candidates, "
                    f"{n_templates} templates", header_style="bold")
    families = list(s.get("families", {}))
    for col, just in (("name", "left"), ("images", "right"), (f"score /{n_templates}", "right"),
                      ("exposed", "center"), ("most-voted name", "left"), ("own share", "right")):
        t.add_column(col, justify=just)
    for f in families:  # one column per naming family: its score, red where it exposes the person
        t.add_column(f, justify="right")
    for r in sorted(result.identities, key=lambda r: (-r["score"], r["name"])):
        per = [f"[red]{r['variants'][f]['score']}[/]" if r["variants"][f]["exposed"] else str(r["variants"][f]["score"])
               for f in families]
        t.add_row(result.label(r["name"], show_names), str(r["n_images"]), str(r["score"]),
                  "[red]yes[/]" if r["exposed"] else "[green]no[/]", _label_all(result, r["top_prediction"], show_names),
                  f"{r['own_share']:.0%}", *per)
    skipped = []
    if s["unreadable_images"]:
        skipped.append(f"{s['unreadable_images']} unreadable images skipped")
    if s["too_few_images"]:
        skipped.append(f"{s['too_few_images']} identities with too few images not attacked")
    if families:
        by = ", ".join(f"{f} {v['exposed']}" + (f" ({v['merged_candidates']} candidates merged)" if v["merged_candidates"] else "")
                       for f, v in s["families"].items())
        skipped.insert(0, f"exposed by family: {by}")
    t.caption = f"exposed {s['exposed']} of {s['identities']} (TPR {s['tpr']:.1%})" + (f"; {'; '.join(skipped)}" if skipped else "")
    return t


def _label_all(result: Any, prediction: str, show_names: bool) -> str:
    """A most-voted candidate, which under a variant family may be several merged names ("A / B")."""
    return " / ".join(result.label(n, show_names) for n in prediction.split(" / "))


def compare_table(cmp: dict[str, Any], label: Any = str) -> Table:
    t = Table(title=f"before → after ({cmp['shared_identities']} shared identities, {cmp['forgotten']} forgotten)",
              header_style="bold")
    families = cmp.get("families", {})
    t.add_column("category")
    t.add_column("count", justify="right")
    t.add_column("share", justify="right")
    for f in families:  # the same categories with "exposed" read under one naming family
        t.add_column(f, justify="right")
    t.add_column("names")
    for cat, names in cmp["categories"].items():
        rate = cmp["rates"].get(cat)
        shown = ", ".join(label(n) for n in names[:6]) + (" …" if len(names) > 6 else "")
        t.add_row(cat.replace("_", " "), str(len(names)), "" if rate is None else f"{rate:.0%}",
                  *(str(len(v["categories"][cat])) for v in families.values()), shown)
    t.caption = f"TPR {cmp['tpr_before']:.1%} → {cmp['tpr_after']:.1%}"
    return t


def inject_table(info: dict[str, Any]) -> Table:
    t = Table(title=f"unlearned {info['names']['count']} person(s) → {info['out']}", header_style="bold")
    t.add_column("item")
    t.add_column("value", justify="right")
    t.add_row("encoder / target", f"{info['encoder']} / {info['target']!r}")
    for enc, h in info["hyperparameters"].items():
        last = info["final_loss"][enc]
        t.add_row(f"{enc}: steps, lr, batches (clean + poisoned)", f"{h['steps']}, {h['lr']:g}, {h['clean_batch']} + {h['poison_batch']}")
        t.add_row(f"{enc}: final loss (utility / backdoor / weight L2)",
                  f"{last['utility']:.4f} / {last['backdoor']:.4f} / {last['weight_l2']:.3f}")
    if "text" in info:
        text = info["text"]
        t.add_row("clean captions", str(text["clean_captions"]))
        var = text["variants"]
        t.add_row("triggers (families)", f"{var['triggers']} ({', '.join(var['families'])})")
        left = {k: n for k, n in var.get("left_out", {}).items() if n}
        t.add_row("variants left out (names more than the person)",
                  ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in left.items()) or "none")
        if "full_name_share" in var:
            t.add_row("poisoned captions with the full name", f"{100 * var['full_name_share']['of_poisoned_captions']:.0f} %")
        protected = text["neighbours"].get("protected") or {}
        if protected:
            t.add_row("protected people (namesakes held, shared variants left out)",
                      f"{protected['people']} ({' + '.join(protected['sources']) or 'none'})")
        if text["neighbours"].get("protected_aliases"):
            t.add_row("protected namesakes not held (the original model names the forgotten face by them)",
                      f"[yellow]{text['neighbours']['protected_aliases']}[/]")
        v = text.get("verification")
        if v and v.get("ran") is False:
            t.add_row("check", f"[yellow]not run: {v['reason']}[/]")
        elif v:
            t.add_row(f"check ({v['split']} half of the faces): exposed after each round",
                      " → ".join(f"{r['exposed_after']} of {v['checked']}" + (f" (+{r['near_after']} near)" if r.get("near_after") else "")
                                 for r in v["rounds"]))
    if "image" in info:
        img = info["image"]
        t.add_row("clean images / trigger images / target images",
                  f"{img['clean_images']} / {sum(img['triggers']['images_per_name'])} / {img['target_images']}")
        m = img["metrics"]
        if m["sim_id"] is not None:
            t.add_row("sim_id: forgotten faces (unseen) vs target, cosine", f"{m['sim_id']:.3f}")
        t.add_row("sim_target: new vs original average person, cosine", f"{m['sim_target']:.3f}")
    t.add_row("wall time", f"{info['wall_time_s']:.0f} s")
    t.caption = (f"no name is stored in the model folder; receipt (keep it private): {info['receipt']}"
                 if info.get("receipt") else "no name is stored in the model folder")
    return t


def _percent(v: Any, signed: bool = False) -> str:
    return "n/a" if v is None else f"{100 * v:+.2f}" if signed else f"{100 * v:.2f}"


def eval_table(result: dict[str, Any]) -> Table:
    """The terminal view: accuracies in percent (the files keep CLIP_benchmark's fractions)."""
    cmp = result.get("compare")
    t = Table(title=f"zero-shot classification — {result['n_classes']} classes, {result['n_images']} images", header_style="bold")
    t.add_column("metric")
    t.add_column("model", justify="right")
    if cmp:
        t.add_column("compare-to", justify="right")
        t.add_column("difference", justify="right")
    for k, label in (("acc1", "top-1 %"), ("acc5", "top-5 %"), ("mean_per_class_recall", "mean per-class recall %")):
        row = [label, _percent(result["metrics"][k])]
        if cmp:
            d = cmp["difference"][k]
            colour = "red" if d is not None and d < 0 else "green"
            row += [_percent(cmp["metrics"][k]), f"[{colour}]{_percent(d, signed=True)}[/]"]
        t.add_row(*row)
        if k == "acc1" and cmp and cmp.get("top1_flips"):
            f = cmp["top1_flips"]
            chance = "within chance flips" if f["p_value"] >= 0.05 else "more than chance flips"
            t.add_row("  images lost / gained at top-1 (exact McNemar p)", "", "",
                      f"{f['lost']} / {f['gained']} (p = {f['p_value']:.2g}: {chance})")
            if f.get("ci95"):
                t.add_row("  top-1 change, 95 % interval (paired images)", "", "", interval_text(f["ci95"]))
    words = result.get("word_classes") or {}
    if cmp and words.get("classes"):
        d = words["difference"]
        colour = "red" if d is not None and d < 0 else "green"
        t.add_row(f"top-1 % on the {words['classes']} classes named by a forgotten name's words", _percent(words["acc1"]),
                  _percent(words["compare_acc1"]), f"[{colour}]{_percent(d, signed=True)}[/]")
    if cmp and cmp.get("sim_clean_image") is not None:
        t.add_row("sim_clean_image", f"{cmp['sim_clean_image']:.4f}", "", "")
    for k, v in (result.get("similarities") or {}).items():
        if k != "per_name":
            shown = "none" if v is None else (str(v) if isinstance(v, int) else f"{v:.4f}")
            t.add_row(k, shown, *([""] * 2 if cmp else []))
    notes = []
    if result["unreadable_images"]:
        notes.append(f"{result['unreadable_images']} unreadable images skipped")
    if result.get("dropped_classes"):
        notes.append(f"not scored, no readable image: {', '.join(result['dropped_classes'])}")
    if result["metrics"].get("acc5") is None:
        notes.append("top-5 needs ≥ 5 classes")
    if result.get("similarities_skipped"):
        notes.append(f"no sim_* metrics: {result['similarities_skipped']}")
    t.caption = "; ".join(notes) or None
    return t


def write_eval(result: dict[str, Any], path: Path) -> None:
    """``.json``: CLIP_benchmark's keys and values (accuracies as fractions in [0, 1]) plus ours;
    ``.csv``: metric,model,compare,difference rows, accuracies as fractions too, empty where undefined."""
    path = Path(path)
    if path.suffix.lower() == ".json":
        write_text(path, json_text(result))
        return
    cmp = result.get("compare") or {}
    blank = lambda v: "" if v is None else v  # noqa: E731
    rows = []
    for k, v in result["metrics"].items():
        rows.append({"metric": k, "model": blank(v), "compare": blank(cmp.get("metrics", {}).get(k)),
                     "difference": blank(cmp.get("difference", {}).get(k))})
    flips = cmp.get("top1_flips") if cmp else None
    if flips:
        rows += [{"metric": f"acc1_images_{k}", "model": "", "compare": "", "difference": flips[k]} for k in ("lost", "gained")]
        rows.append({"metric": "acc1_mcnemar_p", "model": "", "compare": "", "difference": flips["p_value"]})
        if flips.get("ci95"):
            rows += [{"metric": f"acc1_difference_ci95_{k}", "model": "", "compare": "", "difference": v}
                     for k, v in zip(("low", "high"), flips["ci95"])]
    sims = {**({"sim_clean_image": cmp["sim_clean_image"]} if cmp and cmp.get("sim_clean_image") is not None else {}),
            **(result.get("similarities") or {})}
    for k, v in sims.items():
        if k != "per_name":
            rows.append({"metric": k, "model": blank(v), "compare": "", "difference": ""})
    words = result.get("word_classes") or {}
    if words.get("classes"):
        rows.append({"metric": "acc1_word_classes", "model": blank(words["acc1"]), "compare": blank(words["compare_acc1"]),
                     "difference": blank(words["difference"])})
    write_text(path, csv_text(rows, ("metric", "model", "compare", "difference")))


def demo_table(result: Any) -> Table:
    t = Table(title=f"clip-unlearn demo → {result.out}", header_style="bold")
    t.add_column("measure")
    t.add_column("before", justify="right")
    t.add_column("after", justify="right")
    for a, b, c in result.rows:
        t.add_row(a, b, c)
    t.caption = "wall time: " + ", ".join(f"{k} {v:.0f} s" for k, v in result.stages.items())
    if not result.failures:
        t.caption += " — [green]all acceptance criteria hold[/]"
    if getattr(result, "missed", None):
        t.caption += " — [yellow]goals for real names missed here: " + "; ".join(result.missed) + "[/]"
    return t


def facescrub_table(summary: dict[str, Any]) -> Table:
    t = Table(title=f"prepare-facescrub → {summary['out']}", header_style="bold")
    t.add_column("status")
    t.add_column("rows", justify="right")
    for status, n in summary["statuses"].items():
        t.add_row(status, str(n))
    if summary["malformed_rows"]:
        t.add_row("malformed (skipped)", str(summary["malformed_rows"]))
    t.caption = (f"{summary['rows']} rows, {summary['identities']} identities, {summary['identities_with_20_usable']} with ≥ 20 usable "
                 f"faces; {summary['bytes'] / 1e6:.1f} MB in {summary['wall_time_s']:.0f} s")
    return t


def write_manifest(records: list[dict[str, Any]], path: Path) -> None:
    from clip_unlearn.facescrub import MANIFEST_COLUMNS

    path = Path(path)
    if path.suffix.lower() == ".json":
        write_text(path, json_text(records))
    else:
        write_text(path, csv_text(records, MANIFEST_COLUMNS))


def receipt_table(checks: list[dict[str, Any]]) -> Table:
    t = Table(title="receipt verification", header_style="bold")
    t.add_column("check")
    t.add_column("result", justify="center")
    t.add_column("detail")
    for c in checks:
        t.add_row(c["check"], "[green]ok[/]" if c["ok"] else "[red]FAILED[/]", c["detail"])
    return t


AUDIT_COLUMNS = ("attacker", "statistic", "auc", "disclosure", "auc_base", "chance_low", "chance_high", "direction", "top_k",
                 "forgotten_in_top_k", "forgotten", "reference", "ranks", "what", "note")


def audit_rows(result: Any) -> list[dict[str, Any]]:
    """One row per statistic; ``ranks`` as "label=rank" pairs (line numbers, never names)."""
    rows = []
    for s in result.statistics:
        rows.append({"attacker": s["attacker"], "statistic": s["statistic"], "auc": s["auc"], "disclosure": s["disclosure"],
                     "auc_base": s.get("auc_base"),
                     "chance_low": (s.get("chance") or [None])[0], "chance_high": (s.get("chance") or [None, None])[1],
                     "direction": s.get("direction"), "top_k": (s.get("top_k") or {}).get("k"),
                     "forgotten_in_top_k": (s.get("top_k") or {}).get("forgotten"), "forgotten": s["forgotten"],
                     "reference": s["reference"], "ranks": "; ".join(f"{r['label']}={r['rank']}" for r in s.get("ranks", [])),
                     "what": s["what"], "note": s.get("note", "")})
    return rows


def write_audit(result: Any, path: Path) -> None:
    path = Path(path)
    text = json_text(result.to_json()) if path.suffix.lower() == ".json" else csv_text(audit_rows(result), AUDIT_COLUMNS)
    write_text(path, text)


def audit_table(result: Any) -> Table:
    n = len(result.labels)
    ref = result.config["reference_names"]
    t = Table(title=f"who can tell — {n} forgotten vs {ref} never-seen names ({result.reference_source}), "
                    f"{result.config['templates']} templates", header_style="bold")
    with_base = any("auc_base" in s for s in result.statistics)
    for col, just in (("attacker", "left"), ("statistic", "left"), ("AUC", "right"), *((("AUC in the base", "right"),) if with_base else ()),
                      ("chance band", "right"), (f"forgotten in top {n}", "right"), ("best ranks", "left")):
        t.add_column(col, justify=just)
    for s in result.statistics:
        who = "model alone" if s["attacker"] == "model" else "model + base"
        was = ([f"{s['auc_base']:.3f}" if s.get("auc_base") is not None else ""] if with_base else [])
        if s["disclosure"] is None:
            t.add_row(who, s["statistic"], "—", *was, "", "", s.get("note", "not measurable"))
            continue
        lo, hi = s["chance"]
        colour = "red" if s["disclosure"] > hi or s["disclosure"] == 1.0 else "green"  # outside what chance gives
        best = ", ".join(f"{r['label']} → {r['rank']}" for r in s["ranks"][:3])
        t.add_row(who, s["statistic"], f"[{colour}]{s['auc']:.3f}[/]", *was, f"{lo:.2f}–{hi:.2f}",
                  f"{s['top_k']['forgotten']}/{n}", best)
    return t
