"""What a run of a deployment may set: the deployer's rules, read back at run time.

A notebook deployment (one whose own parameters fix ``notebook``) lets its callers
send the notebook's ``parameters`` and nothing else, unless its deployer opened a
technical parameter (``store``, ``cluster``, ``kernel``, ``input_files``, the
timeouts...) with a deployment tag ``nbjobs-allow:<name>``. ``nbjobs deploy --allow``
writes those tags and a schema that makes the server refuse the rest with HTTP 409.
The flow checks again here, against the deployment as its deployer saved it,
because the schema is not a wall: a caller can create a run with
``enforce_parameter_schema: false``, and a ``prefect.yaml`` deployment has the
flow's whole signature as its schema. A general deployment (``adhoc``: no fixed
notebook) takes any notebook and any settings; that is what it is for.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from prefect import get_client
from prefect.client.schemas.responses import DeploymentResponse

from notebook_jobs.flows.run_labels import current_deployment_id
from notebook_jobs.tasks.models import ParameterSource
from notebook_jobs.tasks.names import ALLOW_TAG as ALLOW_TAG


def opened_parameters(tags: list[str]) -> set[str]:
    """The technical parameters a deployment's tags open to its callers."""
    return {tag.removeprefix(ALLOW_TAG) for tag in tags if tag.startswith(ALLOW_TAG)}


def refused_parameter(
    fixed: Mapping[str, Any],
    tags: list[str],
    given: Mapping[str, Any],
    defaults: Mapping[str, Any],
) -> str | None:
    """The first parameter a run set that its deployment fixes, or ``None``.

    Args:
        fixed: The deployment's own parameters, as its deployer saved them.
        tags: The deployment's tags (``nbjobs-allow:<name>`` opens ``name``).
        given: What the run is about to run with: every flow parameter but
            ``parameters`` (the notebook's own, always the caller's).
        defaults: The flow's defaults, for what the deployment does not set.

    Example:
        >>> refused_parameter({"notebook": "s3://b/nb.ipynb"}, [],
        ...                   {"notebook": "s3://b/nb.ipynb", "store": "/root"}, {"store": None})
        'store'
    """
    if "notebook" not in fixed:
        return None  # a general deployment: any notebook, any settings
    opened = opened_parameters(tags)
    for name, value in given.items():
        if name in opened:
            continue
        if value != fixed.get(name, defaults.get(name)):
            return name
    return None


async def run_deployment() -> DeploymentResponse | None:
    """This flow run's deployment as its deployer saved it; ``None`` outside one."""
    deployment_id = current_deployment_id()
    if not deployment_id:
        return None
    async with get_client() as client:
        return await client.read_deployment(UUID(deployment_id))


def merged_parameters(
    deployment: DeploymentResponse | None, parameters: dict[str, Any] | None
) -> dict[str, Any]:
    """A deployment's default notebook parameters, overridden name by name by the run's.

    Prefect merges a run's parameters over the deployment's one level deep only, so a
    run that sets ``parameters={"n": 3}`` would otherwise drop a deployment's
    ``parameters={"label": "daily"}``.
    """
    defaults = (deployment.parameters or {}) if deployment is not None else {}
    return {**(defaults.get("parameters") or {}), **(parameters or {})}


@dataclass(frozen=True)
class RunOrigin:
    """Where a run's notebook parameters came from: the run's own and its deployment's."""

    run: dict[str, Any]
    deployment: dict[str, Any]
    deployment_name: str | None = None
    flow_defaults: Mapping[str, Any] = field(default_factory=dict)  # the flow's arguments'

    @classmethod
    def of(
        cls,
        deployment: DeploymentResponse | None,
        parameters: dict[str, Any] | None,
        flow_defaults: Mapping[str, Any],
    ) -> RunOrigin:
        given = ((deployment.parameters or {}).get("parameters") or {}) if deployment else {}
        return cls(
            dict(parameters or {}),
            dict(given),
            deployment.name if deployment else None,
            flow_defaults,
        )

    def sources(
        self, used: dict[str, Any], notebook_defaults: dict[str, Any]
    ) -> dict[str, ParameterSource]:
        """``run``, ``deployment`` or ``notebook`` for each value used.

        By value, not by where a key was sent: a scheduled run, and a run from the UI's
        form, carry the deployment's values (and the form the notebook's defaults) as
        the run's own, and are still the deployment's and the notebook's.

        Example:
            >>> RunOrigin({"n": 5, "label": "daily"}, {"label": "daily"}).sources(
            ...     {"n": 5, "label": "daily", "rows": 10}, {"n": 1, "rows": 10})
            {'n': 'run', 'label': 'deployment', 'rows': 'notebook'}
        """
        missing = object()
        found: dict[str, ParameterSource] = {}
        for name, value in used.items():
            own = self.run.get(name, missing)
            if (
                own is not missing
                and own != self.deployment.get(name, missing)
                and own != notebook_defaults.get(name, missing)
            ):
                found[name] = "run"
            elif notebook_defaults.get(name, missing) == value:
                found[name] = "notebook"  # (a deployment's form saves the defaults too)
            elif self.deployment.get(name, missing) == value:
                found[name] = "deployment"
            else:
                found[name] = "run" if own is not missing else "notebook"
        return found
