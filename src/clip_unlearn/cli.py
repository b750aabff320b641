"""The command-line interface: parse, build a config, call one core function, render.

Each command's options are generated from its config dataclass (config.py), so defaults and
help text live in one place. torch and open_clip are imported only inside commands, which
keeps ``clip-unlearn --help`` instant.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import logging
import os
import sys
import typing
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console

from clip_unlearn import __version__, config
from clip_unlearn.errors import ClipUnlearnError, ConfigError, flag
from clip_unlearn.progress import ProgressFn

app = typer.Typer(
    name="clip-unlearn",
    help="Remove people from CLIP models and prove it (backdoor unlearning + identity inference attack).",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_show_locals=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    add_completion=False,
)
out = Console()
err = Console(stderr=True)
_state = {"verbose": False, "quiet": False}


class _HideRootChatter(logging.Filter):
    """open_clip logs informational noise through the root logger; show it only with --verbose."""

    def filter(self, record: logging.LogRecord) -> bool:
        return _state["verbose"] or record.name != "root" or record.levelno >= logging.ERROR


def _setup_logging() -> None:
    from rich.logging import RichHandler

    level = logging.DEBUG if _state["verbose"] else logging.ERROR if _state["quiet"] else logging.WARNING
    handler = RichHandler(console=err, show_time=False, show_path=False, markup=False, rich_tracebacks=False)
    handler.addFilter(_HideRootChatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("clip_unlearn").setLevel(logging.INFO if _state["verbose"] else level)
    logging.captureWarnings(True)
    for noisy in ("PIL", "urllib3", "httpx", "httpcore", "filelock", "fsspec"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _version(value: bool) -> None:
    if value:
        out.print(f"clip-unlearn {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="More log output, and tracebacks on errors.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only errors and results; no progress bars.")] = False,
) -> None:
    """Remove people from CLIP models and prove it."""
    global out
    from clip_unlearn.distributed import rank

    if rank() > 0:
        # under torchrun only rank 0 shows progress and results (errors still surface from any rank)
        quiet = True
        out = Console(file=open(os.devnull, "w"))  # noqa: SIM115
    _state.update(verbose=verbose, quiet=quiet)
    _setup_logging()


def _main_rank() -> bool:
    from clip_unlearn.distributed import rank

    return rank() == 0


def _fail(message: str, code: int) -> typer.Exit:
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def _run_safely(fn: Callable[[], Optional[int]]) -> None:
    """Turn expected errors into one red line and a documented exit code (docs/design.md §2)."""
    try:
        code = fn()
    except ClipUnlearnError as e:
        if _state["verbose"]:
            err.print_exception(show_locals=False)
        raise _fail(str(e), e.exit_code) from None
    except KeyboardInterrupt:
        raise _fail("interrupted; outputs were left as they were before this command", 130) from None
    except (typer.Exit, typer.Abort):
        raise
    except Exception as e:  # an unexpected failure is still one line unless --verbose
        if _state["verbose"]:
            raise
        raise _fail(f"unexpected {type(e).__name__}: {e} (rerun with --verbose for the traceback)", 1) from None
    if code:
        raise typer.Exit(code)


def _option_for(f: dataclasses.Field, hint: Any) -> Any:
    from rich.markup import escape

    flags = f.metadata.get("flags") or (flag(f.name),)
    help_text = escape(f.metadata.get("help", ""))
    show_default = f.default is not None
    if isinstance(f.default, bool) and not any("/" in x for x in flags):
        # a lone on-switch: typer would print nothing, so say it
        help_text += f" \\[default: {'on' if f.default else 'off'}]"
        show_default = False
    return Annotated[hint, typer.Option(*flags, help=help_text, show_default=show_default)]


def command(name: str, cfg_cls: type) -> Callable[[Callable[[Any], Optional[int]]], Callable[[Any], Optional[int]]]:
    """Register ``run(cfg)`` as command ``name`` with one option per field of ``cfg_cls``."""
    hints = typing.get_type_hints(cfg_cls)

    def register(run: Callable[[Any], Optional[int]]) -> Callable[[Any], Optional[int]]:
        params = [
            inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default, annotation=_option_for(f, hints[f.name]))
            for f in dataclasses.fields(cfg_cls)
        ]

        def cmd(**kwargs: Any) -> None:
            def go() -> Optional[int]:
                try:
                    cfg = cfg_cls(**kwargs)
                except ConfigError as e:
                    raise _fail(str(e), 2) from None
                return run(cfg)

            _run_safely(go)

        cmd.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        cmd.__doc__ = cfg_cls.__doc__
        app.command(name, help=cfg_cls.__doc__)(cmd)
        return run

    return register


@contextlib.contextmanager
def progress_bar() -> Iterator[ProgressFn]:
    """A rich progress bar on stderr; yields the ``progress(label, done, total, info)`` callback the core takes."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    if _state["quiet"]:
        yield lambda label, done, total, info="": None
        return
    bar = Progress(TextColumn("{task.description:<12}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[info]}"), console=err, transient=False)
    tasks: dict[str, Any] = {}

    def update(label: str, done: int, total: int, info: str = "") -> None:
        if label not in tasks:
            tasks[label] = bar.add_task(label, total=total, info=info)
        bar.update(tasks[label], completed=done, total=total, info=info)

    with bar:
        yield update


@command("prepare-synthetic", config.PrepareSyntheticConfig)
def prepare_synthetic(cfg: config.PrepareSyntheticConfig) -> None:
    from clip_unlearn import report, synthetic

    with progress_bar() as progress:
        info = synthetic.build_world(cfg, progress)
    out.print(report.world_table(info, Path(cfg.out)))


@command("attack", config.AttackConfig)
def attack(cfg: config.AttackConfig) -> int:
    from clip_unlearn import report
    from clip_unlearn.attack import run_attack

    with progress_bar() as progress:
        result = run_attack(cfg, progress)
    out.print(report.attack_table(result, cfg.show_names))
    if result.compare is not None:
        out.print(report.compare_table(result.compare, lambda n: result.label(n, cfg.show_names)))
    if cfg.output is not None and _main_rank():
        report.write_attack(result, cfg.output)
        err.print(f"results written to {cfg.output}", highlight=False)
    if result.gate_exposed:
        # CI logs keep this line: positions in the files and a count, names only on request
        from clip_unlearn.attack import gate_lines, read_gates

        named = ""
        if cfg.show_names:
            names = dict(read_gates(cfg))
            named = f" ({', '.join(names[path][line - 1] for path, line in result.gate_exposed)})"
        err.print(f"[bold red]privacy gate failed:[/] {len(result.gate_exposed)} name(s) still exposed: "
                  f"{gate_lines(result.gate_exposed)}{named}", highlight=False)
        return 3
    return 0


@command("audit", config.AuditConfig)
def audit(cfg: config.AuditConfig) -> int:
    from clip_unlearn import report
    from clip_unlearn.audit import run_audit

    with progress_bar() as progress:
        result = run_audit(cfg, progress)
    out.print(report.audit_table(result))
    if cfg.output is not None and _main_rank():
        report.write_audit(result, cfg.output)
        err.print(f"results written to {cfg.output}", highlight=False)
    worst = result.worst("model")
    if worst is not None:
        err.print(f"without the base model the most telling statistic is {worst['statistic']} "
                  f"(AUC {worst['auc']:.3f}, {worst['top_k']['forgotten']} of {len(result.labels)} forgotten in its top "
                  f"{len(result.labels)})", highlight=False)
    if cfg.fail_on_disclosed is not None:
        told = result.disclosed(cfg.fail_on_disclosed)
        if told:
            err.print(f"[bold red]disclosure gate failed:[/] {len(told)} statistic(s) tell the forgotten from never-seen "
                      f"names with AUC ≥ {cfg.fail_on_disclosed}: {', '.join(s['statistic'] for s in told)}", highlight=False)
            return 3
    return 0


@command("verify-receipt", config.VerifyReceiptConfig)
def verify_receipt(cfg: config.VerifyReceiptConfig) -> int:
    from clip_unlearn import report
    from clip_unlearn.receipt import run_verify

    checks = run_verify(str(cfg.model), cfg.receipt, cfg.names)
    out.print(report.receipt_table(checks))
    failed = [c["check"] for c in checks if not c["ok"]]
    if failed:
        err.print(f"[bold red]receipt does not match:[/] {'; '.join(failed)}", highlight=False)
        return 1
    return 0


@command("inject", config.InjectConfig)
def inject(cfg: config.InjectConfig) -> None:
    from clip_unlearn import report
    from clip_unlearn.inject import run_inject

    with progress_bar() as progress:
        info = run_inject(cfg, progress)
    out.print(report.inject_table(info))


@command("eval-zeroshot", config.EvalZeroshotConfig)
def eval_zeroshot(cfg: config.EvalZeroshotConfig) -> None:
    from clip_unlearn import report
    from clip_unlearn.zeroshot import run_eval

    with progress_bar() as progress:
        result = run_eval(cfg, progress)
    out.print(report.eval_table(result))
    if cfg.output is not None and _main_rank():
        report.write_eval(result, cfg.output)
        err.print(f"results written to {cfg.output}", highlight=False)


@command("demo", config.DemoConfig)
def demo(cfg: config.DemoConfig) -> int:
    from clip_unlearn import report
    from clip_unlearn.demo import run_demo

    with progress_bar() as progress:
        result = run_demo(cfg, progress)
    out.print(report.demo_table(result))
    err.print(f"report: {result.report}", highlight=False)
    if cfg.open and result.report is not None:
        import webbrowser

        webbrowser.open(result.report.resolve().as_uri())
    if result.failures:
        err.print(f"[bold red]acceptance failed:[/] {'; '.join(result.failures)}", highlight=False)
        return 1
    return 0


@command("prepare-facescrub", config.PrepareFacescrubConfig)
def prepare_facescrub(cfg: config.PrepareFacescrubConfig) -> None:
    from clip_unlearn import report
    from clip_unlearn.facescrub import run_prepare

    with progress_bar() as progress:
        result = run_prepare(cfg, progress)
    out.print(report.facescrub_table(result["summary"]))
    if cfg.output is not None:
        report.write_manifest(result["manifest"], cfg.output)
        err.print(f"manifest written to {cfg.output}", highlight=False)


def main() -> None:
    """Console-script entry point."""
    from clip_unlearn.outputs import install_signal_handlers

    install_signal_handlers()
    app(prog_name="clip-unlearn")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
