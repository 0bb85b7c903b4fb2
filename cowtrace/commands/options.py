"""The options of the tracing commands, each declared once.

`trace` and `run` take the same set of options (`TracingOptions`); `demo` and `agent` take some
of them.  Each option is an Annotated type here; `with_tracing_options` adds the fields of
`TracingOptions` to a command's signature, so typer shows and parses them after the command's
own arguments, and the command's body receives them as one value.

This module stays free of heavy imports (rich, numpy, the session): every command module
imports it, and `--help`, `report` and each shell-completion request import every command
module.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Annotated, Any, get_type_hints

import typer

from cowtrace.python.budget import DEFAULT_SHARE, parse_share

if TYPE_CHECKING:
    from cowtrace.commands.common import OutputOptions
    from cowtrace.session import SessionOptions

Duration = Annotated[
    float | None, typer.Option("--duration", min=0.0, help="Stop by itself after SECONDS.")
]
Interval = Annotated[
    float, typer.Option("--interval", min=0.05, help="Seconds between view refreshes.")
]
JsonPath = Annotated[
    str | None,
    typer.Option(
        "--json", metavar="PATH", help="Write a JSON summary when tracing ends ('-': stdout)."
    ),
]
EventsPath = Annotated[
    str | None,
    typer.Option(
        "--events",
        metavar="PATH",
        help="Write one JSON line per classified event ('-': stdout).",
    ),
]
Quiet = Annotated[
    bool, typer.Option("--quiet", "-q", help="No view and no summary on the terminal.")
]
Plain = Annotated[
    bool, typer.Option("--plain", help="Plain periodic lines instead of the live view.")
]
RingMb = Annotated[
    int,
    typer.Option("--ring-mb", min=1, help="Size of the kernel's detail-event ring buffer, in MiB."),
]
Malloc = Annotated[
    bool | None,
    typer.Option(
        "--malloc/--no-malloc",
        help="Uprobes on malloc & co. to attribute copies to allocated blocks (default: on for "
        "`run` and `demo`, off when attaching to a PID: each call then costs microseconds).",
    ),
]
ExitWindow = Annotated[
    float,
    typer.Option(
        "--exit-window",
        min=0.0,
        metavar="SECONDS",
        help="Copies made this close before a process exits are reported as exit-time copies.",
    ),
]
NoStacks = Annotated[
    bool, typer.Option("--no-stacks", help="Do not capture native writer and allocation stacks.")
]
HoldEvents = Annotated[
    float,
    typer.Option(
        "--hold-events", hidden=True, help="Testing aid: do not drain detail events for SECONDS."
    ),
]
MetricsAddr = Annotated[
    str | None,
    typer.Option(
        "--metrics-addr",
        metavar="[HOST:]PORT",
        help="Serve Prometheus metrics here (a bare PORT binds 127.0.0.1; port 0: any free port).",
    ),
]
PidLabelGrace = Annotated[
    float,
    typer.Option(
        "--pid-label-grace",
        min=0.0,
        metavar="SECONDS",
        help="Keep an exited member's pid-labelled series this long, then drop them.",
    ),
]
NoPidLabels = Annotated[
    bool,
    typer.Option(
        "--no-pid-labels", help="Metrics summed by root, role and comm instead of per pid."
    ),
]
Delayacct = Annotated[
    bool,
    typer.Option(
        "--delayacct",
        help="Export the kernel's time spent copying per member (sets kernel.task_delayacct=1).",
    ),
]
PythonTypesTop = Annotated[
    int,
    typer.Option(
        "--python-types-top",
        metavar="N",
        min=0,
        help="Metrics: name the N types with the most copied bytes in "
        'cowtrace_python_type_copied_bytes_total (the rest: type="other").',
    ),
]


def _budget_share(text: str | float | None) -> float | None:
    """The option's value; typer passes its default through here as it is."""
    if not isinstance(text, str):
        return text
    try:
        return parse_share(text)
    except ValueError as error:
        raise typer.BadParameter(str(error)) from None


PythonTypesBudget = Annotated[
    float | None,
    typer.Option(
        "--python-types-budget",
        metavar="SHARE|none",
        parser=_budget_share,
        help="The share of wall time (of one core) resolving copied pages to Python types may "
        "take, averaged, with a burst allowance; pages beyond it are counted as over_budget, "
        "the copy counts stay exact ('none': no limit).",
    ),
]
PythonStacks = Annotated[
    bool,
    typer.Option(
        "--python-stacks/--no-python-stacks",
        help="Capture the Python stack of each copy in CPython members (3.11-3.13).",
    ),
]


@dataclass
class TracingOptions:
    """What `trace` and `run` both take, in the order `--help` lists them."""

    duration: Duration = None
    interval: Interval = 1.0
    json_path: JsonPath = None
    events_path: EventsPath = None
    quiet: Quiet = False
    plain: Plain = False
    ring_mb: RingMb = 16
    malloc: Malloc = None
    exit_window: ExitWindow = 0.5
    no_stacks: NoStacks = False
    hold_events: HoldEvents = 0.0
    metrics_addr: MetricsAddr = None
    pid_label_grace: PidLabelGrace = 300.0
    no_pid_labels: NoPidLabels = False
    delayacct: Delayacct = False
    python_stacks: PythonStacks = True
    python_types_top: PythonTypesTop = 20
    python_types_budget: PythonTypesBudget = DEFAULT_SHARE

    def output_options(self) -> OutputOptions:
        """What the command loop and the views need (metrics options checked here)."""
        from cowtrace.commands.common import OutputOptions
        from cowtrace.metrics.exporter import metrics_options

        return OutputOptions(
            duration=self.duration,
            interval=self.interval,
            json_path=self.json_path,
            events_path=self.events_path,
            quiet=self.quiet,
            plain=self.plain,
            metrics=metrics_options(
                self.metrics_addr,
                self.pid_label_grace,
                self.no_pid_labels,
                self.delayacct,
                self.python_types_top,
            ),
        )

    def session_options(self, *, malloc_by_default: bool) -> SessionOptions:
        """What the session needs; --malloc/--no-malloc unset means `malloc_by_default`."""
        from cowtrace.session import SessionOptions

        return SessionOptions(
            events_path=self.events_path,
            ring_bytes=self.ring_mb << 20,
            hold_events_s=self.hold_events,
            malloc=malloc_by_default if self.malloc is None else self.malloc,
            stacks=not self.no_stacks,
            exit_window_s=self.exit_window,
            python_stacks=self.python_stacks,
            python_types_budget=self.python_types_budget,
        )


def with_tracing_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """`command`'s own parameters, then the fields of TracingOptions, as typer sees them.

    `command` declares a keyword-only `tracing: TracingOptions` parameter; typer parses the
    fields as options and the wrapper hands them to `command` as that one value.
    """
    own = inspect.signature(command, eval_str=True)
    hints = get_type_hints(TracingOptions, include_extras=True)
    names = [field.name for field in fields(TracingOptions)]
    shared = [
        inspect.Parameter(
            field.name,
            inspect.Parameter.KEYWORD_ONLY,
            default=field.default,
            annotation=hints[field.name],
        )
        for field in fields(TracingOptions)
    ]
    parameters = [param for param in own.parameters.values() if param.name != "tracing"]
    parameters += shared

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        tracing = TracingOptions(**{name: kwargs.pop(name) for name in names})
        return command(*args, tracing=tracing, **kwargs)

    # typer reads the parameters from the signature and their types from __annotations__.
    wrapper.__signature__ = own.replace(parameters=parameters)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {param.name: param.annotation for param in parameters}
    return wrapper
