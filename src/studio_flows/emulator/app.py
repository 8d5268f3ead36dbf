"""The emulator's FastAPI app: the API's two routes and the control endpoints."""

from __future__ import annotations

import asyncio
import json
import time

from fastapi import FastAPI, Request, Response
from pydantic import ValidationError

from studio_flows.emulator.config import CONTROL_PREFIX, Clock, EmulatorConfig, public_config
from studio_flows.emulator.responses import _json
from studio_flows.emulator.state import EmulatorState, readable_errors


def create_app(config: EmulatorConfig, *, clock: Clock = time.monotonic) -> FastAPI:
    """Build the emulator's ASGI app; its :class:`EmulatorState` is ``app.state.emulator``.

    Serve it with :class:`EmulatorServer` or :func:`serve`: dropped connections need
    their uvicorn protocol.

    Example:
        >>> app = create_app(EmulatorConfig(job_latency_s=0.1))
        >>> isinstance(app.state.emulator, EmulatorState)
        True
    """
    state = EmulatorState(config, clock)
    app = FastAPI(title="Model Studio emulator", docs_url=None, redoc_url=None)
    app.state.emulator = state
    jobs = f"{config.prefix}/organizations/{{organization_id}}/generate"

    @app.post(jobs)
    async def create_generation_job(organization_id: str, request: Request) -> Response:
        body = await request.body()
        answer = state.create_job(organization_id, request.headers.get("authorization"), body)
        delay = state.config.post_response_delay_s
        if answer.status_code == 200 and delay > 0:
            # The job runs from now; only its answer is late (a slow network, a busy API).
            await asyncio.sleep(delay)
        return answer

    @app.get(jobs + "/{job_id}")
    async def read_generation_job(organization_id: str, job_id: str, request: Request) -> Response:
        return state.read_job(organization_id, job_id, request.headers.get("authorization"))

    @app.get(f"{CONTROL_PREFIX}/stats")
    async def emulator_stats() -> Response:
        return _json(200, state.stats())

    @app.get(f"{CONTROL_PREFIX}/jobs")
    async def emulator_jobs() -> Response:
        return _json(200, {"jobs": state.jobs()})

    @app.post(f"{CONTROL_PREFIX}/config")
    async def emulator_config(request: Request) -> Response:
        try:
            changes = json.loads(await request.body() or b"{}")
        except ValueError:
            return _json(422, {"detail": "body: not valid JSON"})
        if not isinstance(changes, dict):
            return _json(422, {"detail": "body: expected a JSON object of knobs to change"})
        try:
            new = state.configure(changes)
        except ValidationError as err:
            return _json(422, {"detail": readable_errors(err)})
        except ValueError as err:
            return _json(422, {"detail": str(err)})
        return _json(200, public_config(new))

    @app.post(f"{CONTROL_PREFIX}/reset")
    async def emulator_reset() -> Response:
        state.reset()
        return _json(200, {"reset": True})

    return app
