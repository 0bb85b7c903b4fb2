"""``cowtrace doctor``: show every host check, so a user sees all problems at once.

Tracing commands stop at the first failing check (:func:`cowtrace.checks.require_tracing_ready`);
doctor runs them all and prints each one's fix, and with ``--fix`` also mounts tracefs/debugfs
and links Debian's kernel headers.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Annotated

import typer

from cowtrace.checks import Check, run_checks

if TYPE_CHECKING:
    from rich.console import Console


def command(
    fix: Annotated[
        bool, typer.Option("--fix", help="Also link Debian's kernel headers for this kernel.")
    ] = False,
) -> None:
    """Check whether this host can run cowtrace, and say how to fix what is missing.

    Exit status 0 only when tracing will work.

    Examples:

      sudo cowtrace doctor

      sudo cowtrace doctor --fix
    """
    raise typer.Exit(doctor(fix))


def print_checks(checks: list[Check], console: Console) -> None:
    """One line per check, and an indented fix line under each failure that has one."""
    from rich.markup import escape

    for check in checks:
        mark = "[green]✓[/]" if check.ok else "[red]✗[/]"
        # soft_wrap: a detail stays one line in logs instead of being folded at 80 columns.
        line = f"{mark} [bold]{escape(check.name)}[/]: {escape(check.detail)}"
        console.print(line, soft_wrap=True)
        if not check.ok and check.fix:
            console.print(f"    fix: [cyan]{escape(check.fix)}[/]", soft_wrap=True)


def doctor(fix: bool, console: Console | None = None) -> int:
    """Run and print all host checks; return 0 only when every one passes (the exit code)."""
    # rich is imported here, not at the top: `--help` and shell completion import this module.
    from rich.console import Console
    from rich.markup import escape

    console = console or Console(highlight=False)
    checks = run_checks(fix=fix)
    print_checks(checks, console)
    failed = [check for check in checks if not check.ok]
    if not failed:
        console.print("[green]cowtrace can trace on this host[/]")
        return 0
    names = ", ".join(check.name for check in failed)
    console.print(f"[red]{len(failed)} problem(s):[/] {escape(names)}", soft_wrap=True)
    return 1


if __name__ == "__main__":
    raise SystemExit(doctor(fix="--fix" in sys.argv[1:]))
