"""The ``studio-flows`` Typer app and what every command shares: consoles, clear errors."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, NoReturn

import typer
from rich.console import Console
from typer.core import TyperGroup

from studio_flows.errors import StudioFlowsError
from studio_flows.resources import examples_dir

# The order `studio-flows --help` lists the commands in, whatever order their modules load.
COMMAND_ORDER = (
    "generate",
    "demo",
    "results",
    "scores",
    "export-training",
    "emulator",
    "serve",
    "db",
    "server",
)


class _Commands(TyperGroup):
    def list_commands(self, ctx: Any) -> list[str]:
        known = super().list_commands(ctx)
        # A command missing from the order is listed last, never a crash of --help.
        rank = {name: index for index, name in enumerate(COMMAND_ORDER)}
        return sorted(known, key=lambda name: rank.get(name, len(rank)))


app = typer.Typer(
    name="studio-flows",
    cls=_Commands,
    help="Batch text generation with IONOS AI Model Studio, every answer kept in SQL.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    # Plain click help: Rich's boxed layout cut option names at 80 columns and showed <str>.
    rich_markup_mode=None,
    context_settings={"max_content_width": 100},
)
console = Console()
err_console = Console(stderr=True)

EXAMPLES = examples_dir()  # inside the installed wheel, or the clone's examples/
DEMO_TOKEN = "studio-flows-demo-token"


@contextmanager
def _clear_errors() -> Iterator[None]:
    """Turn the errors a user can fix into one paragraph and exit code 2.

    Example:
        >>> with _clear_errors():  # doctest: +SKIP
        ...     raise ConfigurationError("Set MODEL_STUDIO_TOKEN")
        error: Set MODEL_STUDIO_TOKEN
    """
    try:
        yield
    except StudioFlowsError as err:  # bad input, configuration, or a request the API refused
        _fail(str(err))


def _fail(message: str) -> NoReturn:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(2) from None


def _option_flags(command: str) -> dict[str, str]:
    """``command``'s options by parameter name: ``{"shard_size": "--shard-size"}``."""
    group = typer.main.get_group(app)
    return {
        param.name: param.opts[0]
        for param in group.commands[command].params
        if param.name and param.opts and param.opts[0].startswith("--")
    }
