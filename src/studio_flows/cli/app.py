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

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        command = super().get_command(ctx, cmd_name)
        if command is not None:
            _name_values(command, ctx)
        return command


# What a value is called in --help where the option does not say (typer shows the Python
# type: <str>, <list[str]>, <float range>). The option's last word decides, else its type.
_VALUE_NAMES = {"url": "URL", "column": "COLUMN", "id": "ID", "block": "BLOCK", "s": "SECONDS"}
_TYPE_NAMES = {"int": "N", "float": "NUMBER", "path": "PATH", "file": "PATH"}


def _name_values(command: Any, ctx: Any) -> None:
    """Give every option and argument of ``command`` (and of its subcommands) a readable
    value name in --help, unless it names its own."""
    for param in command.params:
        if param.metavar is None and not getattr(param, "is_flag", False):
            param.metavar = _value_name(
                param.param_type_name, param.name or "", param.display_type(ctx)
            )
    for sub in getattr(command, "commands", {}).values():
        _name_values(sub, ctx)


def _value_name(kind: str, name: str, typer_type: str) -> str:
    """The value name of parameter ``name``, an ``option`` or ``argument`` typer shows as
    ``typer_type``.

    Example:
        >>> _value_name("option", "database_url", "<str>")
        'URL'
        >>> _value_name("option", "temperature", "<float range>")
        'NUMBER'
        >>> _value_name("argument", "dataset", "<path>")
        'DATASET'
    """
    if kind == "argument":
        return name.upper()
    last_word = name.rsplit("_", 1)[-1]
    if last_word in _VALUE_NAMES:
        return _VALUE_NAMES[last_word]
    type_name = typer_type.strip("<>").removeprefix("list[").split()[0].rstrip("]")
    return _TYPE_NAMES.get(type_name, "TEXT")


app = typer.Typer(
    name="studio-flows",
    cls=_Commands,
    help="Batch text generation with IONOS AI Model Studio, every answer kept in SQL.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    # Plain click help: Rich's boxed layout cut option names at 80 columns and showed <str>.
    rich_markup_mode=None,
    # Every option with a default says it (a None default names the real one itself).
    context_settings={"max_content_width": 100, "show_default": True},
)
console = Console()
err_console = Console(stderr=True)

# --help's default of an option whose None means "the setting": what that setting holds.
DATABASE_URL_DEFAULT = "MODEL_STUDIO_DATABASE_URL, else sqlite:///studio_flows.db"

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
