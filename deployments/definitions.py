"""The deployments, as code: the general ``run-notebook/adhoc`` and one per notebook.

Every deployment runs the same flow, ``flows.run_notebook.run_notebook``, from a
work pool of type ``process`` (``notebook-jobs`` by default), so a single machine
(``nbjobs serve``) and a fleet of workers (``prefect worker start --pool
notebook-jobs``) run them alike. The entrypoint is a module path: a worker needs
notebook-jobs installed, not a checkout in a particular folder.

A notebook deployment fixes ``notebook`` to a copy of the notebook stored under its
content hash and turns the notebook's ``parameters`` cell into the JSON schema of the
``parameters`` object: the UI shows a typed form, and the server (enforced parameter
schema) refuses unknown names and wrong types before anything runs. Every technical
parameter (store, cluster, kernel, input files, timeouts...) is fixed to the
deployer's value unless opened with ``--allow``: the schema shows only the notebook's
parameters and the opened ones, and the server refuses the rest with HTTP 409 (the
flow checks again at run time, ``flows/deployment_rules.py``).
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID
from zoneinfo import ZoneInfo

from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.actions import DeploymentScheduleCreate, WorkPoolCreate
from prefect.client.schemas.objects import ConcurrencyLimitStrategy, ConcurrencyOptions
from prefect.client.schemas.schedules import CronSchedule, IntervalSchedule
from prefect.exceptions import ObjectNotFound
from prefect.utilities.callables import parameter_schema as callable_parameter_schema

from notebook_jobs.blocks.exceptions import NotebookInputError, OptionError
from notebook_jobs.deployments.names import GENERAL_DEPLOYMENT as GENERAL_DEPLOYMENT
from notebook_jobs.deployments.names import JSON_TYPES
from notebook_jobs.deployments.names import NOTEBOOK_TAG as NOTEBOOK_TAG
from notebook_jobs.deployments.names import POOL_NAME as POOL_NAME
from notebook_jobs.flows.deployment_rules import ALLOW_TAG
from notebook_jobs.flows.run_notebook import FLOW_DEFAULTS, FLOW_NAME, run_notebook
from notebook_jobs.flows.series import CATCH_UP_TAG, OVERLAP_TAG
from notebook_jobs.tasks.engine.run_context import run_value_asked
from notebook_jobs.tasks.engine.secrets import SECRET_KEY, reference, secret_declaration

ENTRYPOINT = "notebook_jobs.flows.run_notebook.run_notebook"
ENTRYPOINTS = frozenset({ENTRYPOINT})
# the notebook endpoints' gateway: a long run, cancelled to stop it (flows/serve_endpoints.py)
ENDPOINTS_ENTRYPOINT = "notebook_jobs.flows.serve_endpoints.run_endpoints"
# one call of one endpoint as a job (flows/run_endpoint.py)
ENDPOINT_JOB_ENTRYPOINT = "notebook_jobs.flows.run_endpoint.run_endpoint"
IN_PROCESS_ENTRYPOINTS = ENTRYPOINTS | {ENDPOINTS_ENTRYPOINT, ENDPOINT_JOB_ENTRYPOINT}


SECRET_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {SECRET_KEY: {"type": "string", "title": "Secret block"}},
    "required": [SECRET_KEY],
    "additionalProperties": False,
}


def content_hash(data: bytes) -> str:
    """The short content hash a notebook is stored and versioned under."""
    return hashlib.sha256(data).hexdigest()[:16]


def parameter_schema(
    declared: list[dict[str, Any]], defaults: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The JSON schema of a notebook's parameters, from its ``parameters`` cell.

    Args:
        declared: As ``tasks.engine.staging.declared_parameters`` returns them.
        defaults: Defaults that override the notebook's own (``nbjobs deploy -p``).

    Returns:
        An object schema: one property per parameter with its inferred type, its
        default and its comment as description; unknown names are not allowed.

    Example:
        >>> parameter_schema([{"name": "n", "type": "int", "default": "10", "help": "rows"}])
        {'type': 'object', 'title': 'parameters', 'properties': {'n': {'title': 'n', ...
    """
    defaults = defaults or {}
    properties: dict[str, Any] = {}
    for position, item in enumerate(declared):
        name = item["name"]
        prop: dict[str, Any] = {"title": name, "position": position}
        json_type = JSON_TYPES.get(item.get("type") or "")
        if json_type == "number":
            prop["type"] = "number"
        elif json_type:
            prop["type"] = json_type
        if item.get("help"):
            prop["description"] = item["help"]
        asked = run_value_asked(item.get("help") or "")
        if asked:  # the UI's form says what leaving it empty does
            prop["description"] = f"left empty: the run's {asked} (# {item['help']})"
        secret, block = secret_declaration(item.get("help") or "")
        if secret:  # the value is a Secret block's name, never the secret
            prop.update(SECRET_SCHEMA)
            prop["description"] = f"secret: a Secret block's name ({item.get('help')})"
            if block:
                prop["default"] = reference(block)
            if name in defaults:
                prop["default"] = defaults[name]
            properties[name] = prop
            continue
        if name in defaults:
            prop["default"] = defaults[name]
        else:
            # a computed default (say, today()) stays the notebook's business
            with contextlib.suppress(ValueError, SyntaxError, TypeError, MemoryError):
                prop["default"] = ast.literal_eval(item.get("default") or "")
        if isinstance(prop.get("default"), tuple):
            prop["default"] = list(prop["default"])
        properties[name] = prop
    return {
        "type": "object",
        "title": "parameters",
        "description": "The notebook's parameters; omitted ones keep the notebook's defaults.",
        "properties": properties,
        "additionalProperties": False,
    }


@dataclass(frozen=True)
class DeploymentOptions:
    """What a deployer chooses for one notebook's deployment: ``nbjobs deploy``'s options.

    Attributes:
        defaults: Defaults of the notebook's parameters (``-p``); the notebook's own
            literal defaults are added when it is deployed.
        store: Where the notebook and its runs' artefacts are stored.
        fixed: Technical parameters set by the deployer (``kernel``, ``cluster``...);
            callers cannot change them.
        allow: Technical parameters callers may set (``timeout_seconds``...).
        cron: A cron schedule, or ``interval_seconds``: an interval anchored at midnight.
        timezone: The schedule's IANA time zone.
        concurrency_limit: The most runs at the same time.
        on_overlap: What a run does that starts while an earlier one runs: ``queue``
            (waits), ``cancel-new`` (Cancelled by the server), ``skip`` (Cancelled by the
            flow, naming the run still going); default: both run.
        catch_up: Which ticks missed while no worker took runs still run: ``all``
            (Prefect's behaviour, the default), ``latest``, ``none``.
        pool: The process work pool its runs go to.

    Raises:
        OptionError: ``skip`` with a concurrency limit (a limit holds runs back; skip
            ends them), or both a cron and an interval.
        NotebookInputError: ``allow`` names what is not a technical parameter.
    """

    defaults: dict[str, Any] = field(default_factory=dict)
    store: str | None = None
    fixed: dict[str, Any] = field(default_factory=dict)
    allow: tuple[str, ...] = ()
    cron: str | None = None
    interval_seconds: float | None = None
    timezone: str | None = None
    concurrency_limit: int | None = None
    on_overlap: str | None = None
    catch_up: str | None = None
    pool: str = POOL_NAME

    def __post_init__(self) -> None:
        if self.on_overlap == "skip" and self.concurrency_limit:
            raise OptionError(
                "--on-overlap skip skips a run while any earlier one runs; leave out "
                "--concurrency-limit (or use --on-overlap queue with it)"
            )
        if self.cron and self.interval_seconds:
            raise OptionError("a schedule is a cron or an interval, not both")
        check_allowed(list(self.allow))

    @property
    def scheduled(self) -> bool:
        """Whether the deployment has a schedule."""
        return bool(self.cron or self.interval_seconds)


@dataclass
class DeploymentSpec:
    """Everything needed to create or update one deployment of ``run-notebook``."""

    name: str
    parameters: dict[str, Any] = field(default_factory=dict)
    schema: dict[str, Any] | None = None
    description: str = ""
    tags: list[str] = field(default_factory=list)
    version: str | None = None
    cron: str | None = None
    interval_seconds: float | None = None
    timezone: str | None = None
    concurrency_limit: int | None = None
    on_overlap: str | None = None  # queue, skip, cancel-new (flows/series.py)
    catch_up: str | None = None  # all, latest, none
    paused: bool = False
    work_queue_name: str | None = None


def technical_parameters() -> list[str]:
    """``run-notebook``'s parameters other than ``notebook`` and ``parameters``."""
    return [name for name in FLOW_DEFAULTS if name != "parameters"]


def check_allowed(allow: list[str]) -> None:
    """Refuse an ``--allow`` name that is not a technical parameter of ``run-notebook``.

    Raises:
        NotebookInputError: Lists the names that can be opened.
    """
    known = technical_parameters()
    unknown = [name for name in allow if name not in known]
    if unknown:
        raise NotebookInputError(
            f"--allow {','.join(unknown)}: not a parameter that can be opened; "
            f"these can: {', '.join(known)}"
        )


def flow_schema() -> dict[str, Any]:
    """The parameter schema Prefect derives from ``run_notebook``'s signature."""
    schema: dict[str, Any] = callable_parameter_schema(run_notebook.fn).model_dump(
        exclude_unset=True
    )
    return schema


def general_spec(pool: str = POOL_NAME) -> DeploymentSpec:
    """The general deployment: any notebook (path, URI or JSON) and any parameters.

    Named ``adhoc`` in the default pool and ``adhoc-<pool>`` in any other, so several
    pools each have their own.
    """
    return DeploymentSpec(
        name=GENERAL_DEPLOYMENT if pool == POOL_NAME else f"{GENERAL_DEPLOYMENT}-{pool}",
        description=(
            "Runs any notebook it is sent (a path, an s3:// or http(s):// URI, or its JSON), "
            "with any settings: whoever can create its runs can run code on the worker."
        ),
        tags=["nbjobs"],
    )


def notebook_spec(
    *,
    name: str,
    notebook_uri: str,
    notebook_name: str,
    digest: str,
    declared: list[dict[str, Any]],
    options: DeploymentOptions,
) -> DeploymentSpec:
    """A deployment for one stored notebook, its parameters cell as a typed schema.

    The schema lists ``parameters`` and the opened names only, so the UI's form shows
    nothing else. What the deployment fixes is checked without being shown: any
    other name is refused (``propertyNames``), and a fixed value can only be sent
    unchanged (``const`` under ``allOf``). Both make the server answer HTTP 409.
    """
    allow, defaults = list(options.allow), options.defaults
    parameters: dict[str, Any] = {
        "notebook": notebook_uri,
        "parameters": dict(defaults),
        **{key: value for key, value in options.fixed.items() if value is not None},
    }
    if options.store:
        parameters["store"] = options.store
    signature = flow_schema()
    properties: dict[str, Any] = {
        "parameters": {**parameter_schema(declared, defaults), "position": 0},
    }
    for position, opened in enumerate(allow, start=1):
        properties[opened] = {**signature["properties"][opened], "position": position}
    hidden = {key: {"const": value} for key, value in parameters.items() if key not in properties}
    schema = {
        "title": "Parameters",
        "type": "object",
        "properties": properties,
        "required": [],
        "definitions": signature.get("definitions", {}),
        "propertyNames": {"enum": sorted({*parameters, *properties})},
        "allOf": [{"properties": hidden}],
    }
    return DeploymentSpec(
        name=name,
        parameters=parameters,
        schema=schema,
        description=f"Runs {notebook_name} (version {digest}).",
        tags=[
            NOTEBOOK_TAG,
            f"notebook:{notebook_name.removesuffix('.ipynb')}",
            *(f"{ALLOW_TAG}{opened}" for opened in allow),
            *([f"{OVERLAP_TAG}{options.on_overlap}"] if options.on_overlap else []),
            *(
                [f"{CATCH_UP_TAG}{options.catch_up}"]
                if options.catch_up and options.catch_up != "all"
                else []
            ),
        ],
        version=digest,
        cron=options.cron,
        interval_seconds=options.interval_seconds,
        timezone=options.timezone if options.scheduled else None,
        concurrency_limit=options.concurrency_limit,
        on_overlap=options.on_overlap,
        catch_up=options.catch_up,
    )


# --on-overlap policies the server enforces (a deployment concurrency limit); skip is the flow's
SERVER_STRATEGIES = {
    "queue": ConcurrencyLimitStrategy.ENQUEUE,
    "cancel-new": ConcurrencyLimitStrategy.CANCEL_NEW,
}


def schedule_of(spec: DeploymentSpec) -> CronSchedule | IntervalSchedule:
    """The deployment's schedule: its cron, else its interval, anchored at midnight in its
    time zone (``--every 1h`` runs on the hour, ``--every 1d`` at midnight)."""
    zone = spec.timezone or "UTC"
    if spec.cron:
        return CronSchedule(cron=spec.cron, timezone=zone)
    assert spec.interval_seconds is not None
    midnight = datetime.now(ZoneInfo(zone)).replace(hour=0, minute=0, second=0, microsecond=0)
    return IntervalSchedule(
        interval=timedelta(seconds=spec.interval_seconds), anchor_date=midnight, timezone=zone
    )


async def ensure_pool(client: PrefectClient, pool: str) -> None:
    """Create the process work pool ``pool`` unless it exists."""
    try:
        await client.read_work_pool(pool)
    except ObjectNotFound:
        await client.create_work_pool(WorkPoolCreate(name=pool, type="process"))


async def apply_spec(client: PrefectClient, spec: DeploymentSpec, pool: str = POOL_NAME) -> UUID:
    """Create or update the deployment ``run-notebook/<spec.name>`` in ``pool``."""
    await ensure_pool(client, pool)
    flow_id = await client.create_flow_from_name(FLOW_NAME)
    schedules = []
    if spec.cron or spec.interval_seconds:
        schedules = [DeploymentScheduleCreate(schedule=schedule_of(spec), active=True)]
    limit, options = spec.concurrency_limit, None
    if spec.on_overlap in SERVER_STRATEGIES:
        limit = limit or 1
        options = ConcurrencyOptions(collision_strategy=SERVER_STRATEGIES[spec.on_overlap])
    deployment_id: UUID = await client.create_deployment(
        flow_id=flow_id,
        name=spec.name,
        version=spec.version,
        schedules=schedules,
        concurrency_limit=limit,
        concurrency_options=options,
        parameters=spec.parameters,
        description=spec.description,
        tags=spec.tags,
        entrypoint=ENTRYPOINT,
        work_pool_name=pool,
        work_queue_name=spec.work_queue_name,
        pull_steps=[],
        parameter_openapi_schema=spec.schema or flow_schema(),
        enforce_parameter_schema=True,
        paused=spec.paused,
    )
    return deployment_id
