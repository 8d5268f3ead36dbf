"""A local, fault-injecting stand-in for the Model Studio generation API.

Same paths and bodies as the API reference, under a configurable prefix::

    POST {prefix}/organizations/{org}/generate            create a job
    GET  {prefix}/organizations/{org}/generate/{job_id}   read a job and its results

plus control endpoints outside the prefix, which need no token::

    GET  /_emulator/stats    what the emulator saw (never a token, only its hash)
    GET  /_emulator/jobs     every job's true start, end and duration (seconds after the
                             first job), for a benchmark's perfect schedule
    POST /_emulator/config   change knobs at run time (a JSON object of the fields); answers
                             the new knobs, with tokens shown only as ``token_keys``
    POST /_emulator/reset    forget every job and count, re-seed the fault generator

Behaviour worth knowing when you read a test:

* Timing is computed from a monotonic clock when a job is read, no background work. A
  job of ``n`` conversations lasts ``D = job_latency_s + task_latency_s * n``; task ``i``
  is done ``D * (i + 1) / n`` after creation. The job is ``CREATED`` for its first
  ``D / (2n)``, then ``RUNNING``, then ``FINISHED`` (or ``FAILED``) at ``D``.
* ``job_latency_jitter`` (sigma) multiplies ``D`` by ``exp(N(-sigma^2/2, sigma))``, a
  lognormal factor whose **mean** is 1 (its median is ``exp(-sigma^2/2)``, 0.88 at 0.5),
  so jobs of ``job_latency_s = 5`` take 5 s on average. With ``uneven_tasks`` the first
  ``n - 1`` tasks end at uniform points inside the job (sorted), the last at ``D``. Both
  come from a generator of their own, seeded from ``seed``: the k-th job gets the same
  times whatever requests and faults came before it.
* ``results`` lists the tasks done so far (partial while ``RUNNING``), in ``task_index``
  order or, with ``shuffle_results``, in a seeded order fixed when the job is created.
  A failed task still counts in ``completed_tasks`` (it is done) but has status
  ``failed``, result ``null`` and an ``error``.
* Answers are ``"<model_id> answers: <last user message>"``, so a test can prove which
  conversation a result belongs to. With ``known_models`` set, a POST naming another
  model gets 404 ``Model '<id>' not found`` and creates nothing.
* Fair use: a POST that would make a ``fair_use_limit + 1``-th active job (created, end
  not reached) for its token gets 429 with ``Retry-After: retry_after_s``.
* Request faults come from one draw per API request of a seeded ``random.Random``: the
  unit interval is cut into slices ``drop_connection_rate``, ``error_5xx_rate`` and
  ``rate_429`` (their sum may not exceed 1), so each fires at its own rate. They act
  before the token check and before anything is created. ``lost_post_response_rate``,
  ``failed_job_rate`` and ``task_failure_rate`` are drawn when a job is created.
* ``post_response_delay_s``: a POST that created a job answers this late (the job runs
  meanwhile), so a test can stop a client between a job's creation and its answer.
* A dropped connection is closed with no response at all, so a client sees a transport
  error, not a status code. This needs the uvicorn protocol installed by
  :class:`EmulatorServer` and :func:`serve`; another ASGI server gets an exception.

Example:
    >>> with EmulatorServer(EmulatorConfig(job_latency_s=0.1)) as server:  # doctest: +SKIP
    ...     client = ModelStudioClient(base_url=server.base_url, token=server.token,
    ...                                organization_id="org")
    ...     job = client.create_job(request)
    ...     client.wait_for_job(job.job_id).results[0].result
    'my-model answers: The capital of France is'
"""

from studio_flows.emulator.app import create_app
from studio_flows.emulator.config import (
    CONTROL_PREFIX,
    DEFAULT_TOKEN,
    FAULT_KINDS,
    STYLES,
    EmulatorConfig,
    EmulatorStyle,
    public_config,
    token_key,
)
from studio_flows.emulator.server import EmulatorServer, serve
from studio_flows.emulator.state import EmulatorState, readable_errors

__all__ = [
    "CONTROL_PREFIX",
    "DEFAULT_TOKEN",
    "FAULT_KINDS",
    "STYLES",
    "EmulatorConfig",
    "EmulatorServer",
    "EmulatorState",
    "EmulatorStyle",
    "create_app",
    "public_config",
    "readable_errors",
    "serve",
    "token_key",
]
