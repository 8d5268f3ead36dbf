"""`studio-flows db`: the results database's schema (`db upgrade`)."""

from __future__ import annotations

from typing import Annotated

import typer

from studio_flows.cli.app import DATABASE_URL_DEFAULT, _clear_errors, app, console

db_app = typer.Typer(
    name="db",
    help="The results database: bring its schema up to date.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(db_app)


@db_app.command("upgrade")
def upgrade_command(
    database_url: Annotated[
        str | None, typer.Option(help="SQLAlchemy URL", show_default=DATABASE_URL_DEFAULT)
    ] = None,
) -> None:
    """Bring the results schema up to this release's, and say what was done.

    Creates the tables in an empty database or upgrades an older one in place, whatever
    MODEL_STUDIO_DATABASE_AUTO_UPGRADE says. Safe to run while runs use the database, and
    when it is already up to date.
    """
    from studio_flows.settings import load_settings
    from studio_flows.storage import upgrade_database

    with _clear_errors():
        url = database_url or load_settings().database_url
        console.print(str(upgrade_database(url)), highlight=False, soft_wrap=True)
