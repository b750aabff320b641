"""README's command reference against the CLI itself, so that neither can change without the other.

The options come from the typer app, i.e. from the config dataclasses, which are also what `--help` prints.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import typer

from clip_unlearn import config
from clip_unlearn.cli import app

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
COMMANDS = typer.main.get_command(app).commands
# the root callback's options and help may be written anywhere
GLOBAL = {"--version", "--verbose", "--quiet", "-v", "-q", "-h", "--help"}
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9]*(?:-[a-z0-9]+)*")
CODE_SPAN = re.compile(r"`([^`]+)`")
HEADING = re.compile(r"^(#{1,6}) (.*)$")
SECTION = re.compile(r"^`([a-z][a-z-]*)`")
# `clip-unlearn CMD`, `python -m clip_unlearn CMD`, or a code span that opens with a command name: the
# flags after it are that command's (e.g. `inject --encoder image` in the attack section)
_NAMES = "|".join(sorted(map(re.escape, COMMANDS), key=len, reverse=True))
INVOKE = re.compile(rf"(?:\bclip[-_]unlearn\s+|^\s*)({_NAMES})(?![\w-])")
# the config class behind each command, for the defaults of the "Other options" lists
CONFIGS = {"demo": config.DemoConfig, "prepare-synthetic": config.PrepareSyntheticConfig, "attack": config.AttackConfig,
           "inject": config.InjectConfig, "eval-zeroshot": config.EvalZeroshotConfig,
           "prepare-facescrub": config.PrepareFacescrubConfig, "verify-receipt": config.VerifyReceiptConfig,
           "audit": config.AuditConfig}


def options(name: str) -> dict[str, set[str]]:
    """Each option of a command (by parameter name) with all its spellings, both halves of a --x/--no-x pair.

    (typer bundles its own click, so the type is told by ``param_type_name``, not by isinstance.)
    """
    return {p.name: set(p.opts) | set(p.secondary_opts) for p in COMMANDS[name].params if p.param_type_name == "option"}


def spellings(name: str) -> set[str]:
    return set().union(*options(name).values())


def pieces(markdown: str) -> list[tuple[str, bool]]:
    """The text as (piece, is_code): a line of a fenced block or an inline code span is one piece, prose another.

    Code spans are taken across line breaks (Markdown allows it), fenced blocks line by line.
    """
    out: list[tuple[str, bool]] = []
    prose: list[str] = []
    fenced = False
    for line in markdown.split("\n"):
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if fenced:
            out.append((line, True))
        else:
            prose.append(line)
    text = "\n".join(prose)
    last = 0
    for m in CODE_SPAN.finditer(text):
        out.append((text[last:m.start()], False))
        out.append((m.group(1), True))
        last = m.end()
    out.append((text[last:], False))
    return out


def owned_flags(markdown: str, default_owner: str | None) -> list[tuple[str | None, str]]:
    """Every --flag of the text with the command it belongs to: the last command invoked before it in the
    same piece of code, else ``default_owner`` (the section's command; None outside command sections)."""
    found = []
    for piece, is_code in pieces(markdown):
        invocations = [(m.start(1), m.group(1)) for m in INVOKE.finditer(piece)] if is_code else []
        for f in FLAG.finditer(piece):
            owner = default_owner
            for pos, name in invocations:
                if pos < f.start():
                    owner = name
            found.append((owner, f.group()))
    return found


def sections(markdown: str) -> dict[str, str]:
    """`### \\`name\\` ...` → its text up to the next heading of level 3 or above (headings in code blocks are code)."""
    out: dict[str, str] = {}
    current: str | None = None
    fenced = False
    for line in markdown.split("\n"):
        if line.lstrip().startswith("```"):
            fenced = not fenced
        heading = None if fenced else HEADING.match(line)
        if heading and len(heading.group(1)) <= 3:
            m = SECTION.match(heading.group(2)) if len(heading.group(1)) == 3 else None
            current = m.group(1) if m else None
            if current is not None:
                assert current not in out, f"README has two sections for `{current}`"
                out[current] = ""
            continue
        if current is not None:
            out[current] += line + "\n"
    return out


README_TEXT = README.read_text(encoding="utf-8")
SECTIONS = sections(README_TEXT)


def test_the_cli_has_the_commands_the_readme_is_checked_for():
    # a new command must be added here too, with its config class
    assert set(COMMANDS) == set(CONFIGS)


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_has_a_readme_section(name):
    assert name in SECTIONS, f"README has no `### \\`{name}\\`` section for the command {name}"


def test_every_readme_command_section_is_a_command():
    assert not set(SECTIONS) - set(COMMANDS), f"README sections for commands the CLI does not have: {set(SECTIONS) - set(COMMANDS)}"


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_flag_the_readme_names_in_a_section_is_an_option(name):
    drift = [f"{flag} (as an option of {owner})" for owner, flag in owned_flags(SECTIONS.get(name, ""), name)
             if flag not in GLOBAL and flag not in spellings(owner)]
    assert not drift, f"README section `{name}` names flags the CLI does not have: {', '.join(drift)}"


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_option_is_named_in_its_readme_section(name):
    named = {flag for owner, flag in owned_flags(SECTIONS.get(name, ""), name) if owner == name}
    missing = [sorted(spelled)[0] if len(spelled) == 1 else "/".join(sorted(spelled, key=len))
               for spelled in options(name).values() if not spelled & named]
    assert not missing, f"README section `{name}` does not mention these options of {name}: {', '.join(missing)}"


@pytest.mark.parametrize("path", [README, *sorted((ROOT / "docs").glob("*.md"))], ids=lambda p: p.name)
def test_every_command_line_anywhere_uses_real_options(path):
    drift = [f"{flag} of {owner}" for owner, flag in owned_flags(path.read_text(encoding="utf-8"), None)
             if owner is not None and flag not in GLOBAL and flag not in spellings(owner)]
    assert not drift, f"{path.name} invokes commands with flags they do not have: {', '.join(drift)}"


def _default(value: object) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_other_options_lists_show_the_config_defaults(name):
    # "Other options: `--batch-size` (256), ..." lines: a default written there must be the dataclass's
    fields = {f.name: f for f in dataclasses.fields(CONFIGS[name])}
    param_of = {spelling: param for param, spelled in options(name).items() for spelling in spelled}
    wrong = []
    for line in re.findall(r"^Other options:.*(?:\n(?!\n).*)*", SECTIONS.get(name, ""), flags=re.M):
        for flag, written in re.findall(r"`(--[a-z0-9-]+)`(?:/`--[a-z0-9-]+`)? \(([^)]*)\)", line):
            field = fields.get(param_of.get(flag, ""))
            if field is None or field.default is None:
                continue
            default = _default(field.default)
            # the default may be followed by a gloss: "(30, training images per member)"
            if written != default and not written.startswith(default + ", "):
                wrong.append(f"{flag} ({written}, but the default is {default})")
    assert not wrong, f"README section `{name}` lists wrong defaults for {name}: {', '.join(wrong)}"


DOC_REF = re.compile(r"\b((?:docs/)?[\w.-]+\.md)(?: (§[\d.]+(?:-[\d.]+)?))?")


def _sections(path: Path) -> set[str]:
    """The numbers of a document's numbered headings ("## 6. ..." → "6", "### 6.4 ..." → "6.4")."""
    return {m.group(1) for m in re.finditer(r"^#{2,3} (\d+(?:\.\d+)?)\.? ", path.read_text(encoding="utf-8"), re.M)}


def test_every_document_the_code_and_docs_cite_exists_with_its_section():
    texts = [*sorted((ROOT / "src").rglob("*.py")), *sorted((ROOT / "benchmarks").glob("*.py")), README,
             *sorted((ROOT / "docs").glob("*.md")), ROOT / "BENCHMARKS.md"]
    broken = []
    for path in texts:
        for m in DOC_REF.finditer(path.read_text(encoding="utf-8")):
            name, section = m.group(1), m.group(2)
            if name.startswith("docs/"):
                target = ROOT / name
            elif path.parent.name == "docs" and (path.parent / name).exists():
                target = path.parent / name
            else:
                target = ROOT / name
            if not target.exists():
                broken.append(f"{path.relative_to(ROOT)} cites {name}, which the repository lacks")
                continue
            if section:
                wanted = section[1:].split("-")
                missing = [w for w in wanted if w not in _sections(target)]
                if missing:
                    broken.append(f"{path.relative_to(ROOT)} cites {name} {section}, which has no such section")
    assert not broken, "\n".join(broken)


# README's figures live in one place. README is for usage; measurements sit in docs/experiments.md (what
# forgetting achieves and costs) and BENCHMARKS.md (speed), each beside the command that produced it. A figure
# written in README as well would drift from its source, so README may state a figure only if neither holds it.
#
# A figure is a measured number in README's prose: one with a decimal point (0.976, −2.36), a percentage
# (94 %), a duration, size or change in points (110 s, 8 minutes, 1.2 GB, 2 points), or a count out of a
# total (14 of the 15, 50 / 50). Not figures: code (fenced blocks and `spans`), option defaults (the "(30)" after an option and
# the "Other options:" paragraphs), link targets, section numbers (§6.7), versions (2.14.1) and thresholds
# (a number right after ≥, ≤, < or >, as in the demo's "sim_clean ≥ 0.95").
MEASURES = [ROOT / "docs" / "experiments.md", ROOT / "BENCHMARKS.md"]
_UNITS = {"%": "%", "s": "s", "sec": "s", "second": "s", "seconds": "s", "ms": "ms", "min": "min", "minute": "min",
          "minutes": "min", "h": "h", "hour": "h", "hours": "h", "point": "points", "points": "points",
          "gb": "GB", "mb": "MB"}
FIGURE = re.compile(
    r"(?<![\w.,§#/-])(?P<part>\d+) (?:of|/) (?:the |its |all )?(?P<whole>\d+)(?!\w|\.\d)"  # 14 of the 15, 50 / 50
    r"|(?<![\w.,§])(?P<decimal>\d+\.\d+)(?!\.?\d)"                                   # 0.976, but not 2.14.1
    r"|(?<![\w.,§#/-])(?P<number>\d+(?:[-–]\d+)?)\s?"                                   # 110 s, 5-8 minutes
    r"(?P<unit>%|(?:s|sec|seconds?|ms|min|minutes?|h|hours?|points?|GB|MB)(?!\w))", re.I)
THRESHOLD = re.compile(r"[≥≤<>]\s*$")


def _figure_key(m: re.Match) -> tuple[str, ...]:
    if m.group("part"):
        return ("count", m.group("part"), m.group("whole"))
    if m.group("decimal"):
        return ("decimal", m.group("decimal"))
    return ("unit", m.group("number"), _UNITS[m.group("unit").lower()])


def figures(text: str) -> dict[tuple[str, ...], str]:
    """Every figure of the text, by a key that ignores spelling ("95 %" = "95%", "8 minutes" = "8 min"),
    with the words it was written as."""
    return {_figure_key(m): m.group() for m in FIGURE.finditer(text)}


def readme_prose_figures(markdown: str) -> dict[tuple[str, ...], str]:
    prose = "\n".join(piece for piece, is_code in pieces(
        re.sub(r"^Other options:.*(?:\n(?!\n).*)*", "", markdown, flags=re.M)  # the option lists
    ) if not is_code)
    prose = re.sub(r"^\s*\([^\s),;]*", "", prose, flags=re.M)  # a default after its option: `--flag` (30, ...)
    prose = re.sub(r"\]\([^)]*\)|<!--.*?-->", "]", prose, flags=re.S)  # link targets and comments
    found = {}
    for m in FIGURE.finditer(prose):
        before = prose[max(0, m.start() - 3):m.start()]
        if not THRESHOLD.search(before):
            found.setdefault(_figure_key(m), m.group())
    return found


def duplicated_figures(readme: str) -> list[str]:
    mine = readme_prose_figures(readme)
    twice = []
    for path in MEASURES:
        theirs = figures(path.read_text(encoding="utf-8"))
        for key, written in mine.items():
            if key in theirs:
                said, also = (" ".join(w.split()) for w in (written, theirs[key]))
                twice.append(f"README.md says {said!r}, and {path.relative_to(ROOT)} has it too ({also!r})")
    return twice


def test_readme_states_no_figure_that_the_measurement_documents_hold():
    twice = duplicated_figures(README_TEXT)
    assert not twice, ("a figure belongs in one place: keep it in docs/experiments.md or BENCHMARKS.md and link "
                       "there from README.md with one sentence\n" + "\n".join(twice))


def _anchors(path: Path):
    """GitHub's anchors of a document's headings: lower case, punctuation dropped, spaces as hyphens,
    a repeated one numbered (-1, -2, ...)."""
    seen: dict[str, int] = {}
    fenced = False
    for line in path.read_text(encoding="utf-8").split("\n"):
        if line.lstrip().startswith("```"):
            fenced = not fenced
        heading = None if fenced else HEADING.match(line)
        if heading:
            slug = re.sub(r"[^\w\- ]", "", heading.group(2).strip().lower()).replace(" ", "-")
            seen[slug] = seen.get(slug, -1) + 1
            yield slug if seen[slug] == 0 else f"{slug}-{seen[slug]}"


def test_every_readme_link_reaches_its_file_and_heading():
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", README_TEXT):
        if re.match(r"[a-z]+:", target):
            continue  # a URL
        name, _, anchor = target.partition("#")
        path = ROOT / name if name else README
        if not path.exists():
            broken.append(f"{target}: no such file")
        elif anchor and anchor not in set(_anchors(path)):
            broken.append(f"{target}: {path.relative_to(ROOT)} has no heading with that anchor")
    assert not broken, "README.md links to nowhere:\n" + "\n".join(broken)
