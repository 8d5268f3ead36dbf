"""`studio-flows serve`: the deployments served from this process."""

from __future__ import annotations

from typing import Annotated

import typer

from studio_flows.cli.app import app


@app.command("serve")
def serve_command(
    limit: Annotated[int | None, typer.Option(help="At most this many flow runs at once")] = None,
    nightly_dataset: Annotated[
        str | None,
        typer.Option(
            metavar="PATH", help="Dataset of the nightly run, as this process sees it; turns it on"
        ),
    ] = None,
) -> None:
    """Serve the nightly and ad-hoc deployments from this process (no work pool needed).

    The nightly schedule stays off unless --nightly-dataset names its dataset.
    """
    from studio_flows.deployments.serve import serve

    serve(limit=limit, nightly_dataset=nightly_dataset)
