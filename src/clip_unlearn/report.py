"""Rendering of results: rich tables for the terminal, CSV/JSON files for pipelines.

Only the CLI imports this module (the core never imports rich).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.table import Table


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
