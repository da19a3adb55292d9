"""Which Prefect server JupyterLab's jobs go to: the configured one, else the local server.

Read on each call, not once at start: ``jupyter lab`` may outlive a local server that
is stopped and started again (on another port, with new credentials).
"""

from __future__ import annotations

from dataclasses import dataclass

from notebook_jobs.deployments.api import PrefectHTTP
from notebook_jobs.deployments.local_server import LocalServer
from notebook_jobs.deployments.local_state import configured_api_url, configured_setting
from notebook_jobs.tasks.ui_links import run_url


@dataclass(frozen=True)
class Connection:
    """A Prefect API and, for the local server, the server (its worker takes runs at once)."""

    api_url: str
    auth_string: str | None
    ui_url: str | None
    local: LocalServer | None

    def client(self) -> PrefectHTTP:
        return PrefectHTTP(self.api_url, auth_string=self.auth_string)

    def run_link(self, run_id: str) -> str | None:
        """The run's page in the Prefect UI."""
        return run_url(run_id, self.ui_url)


def connect() -> Connection:
    """The configured Prefect API (``PREFECT_API_URL``, or the active profile's), else
    the local server, started if it is not running.

    Raises:
        LocalServerError: The local server could not start (the message names its log).
    """
    configured = configured_api_url()
    if configured is not None:
        ui = configured_setting("PREFECT_UI_URL") or configured.rstrip("/").removesuffix("/api")
        return Connection(configured, configured_setting("PREFECT_API_AUTH_STRING"), ui, None)
    server = LocalServer()
    api_url = server.ensure()
    return Connection(api_url, server.auth_string(), server.ui_url(), server)
