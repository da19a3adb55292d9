"""Links into the Prefect UI, in the version the server opens by default.

Prefect 3.8 serves two UIs: V1 at ``/`` and V2 at ``/v2``, and its ``/`` redirects to
the one its settings make the default (``server.ui.v2_enabled``, V2 unless turned off).
A deep link such as ``/runs/flow-run/<id>`` is never redirected: it opens V1 even where
everything else opens V2. So every link we print or publish asks the server once which
UI it defaults to (``GET <ui>/ui-settings``, which the UI itself reads, with no login)
and points there.

Example:
    >>> run_url("0192f5c3-...", "http://127.0.0.1:4200")
    'http://127.0.0.1:4200/v2/runs/flow-run/0192f5c3-...'
"""

from __future__ import annotations

import functools
import json
import urllib.parse
import urllib.request

SETTINGS_TIMEOUT_SECONDS = 2.0


def configured_ui_url() -> str | None:
    """The UI's address as Prefect's settings give it (``PREFECT_UI_URL``, else made from
    ``PREFECT_API_URL``); None when no server is configured."""
    from prefect.settings import PREFECT_UI_URL

    found = PREFECT_UI_URL.value()
    return str(found).rstrip("/") if found else None


@functools.cache
def default_ui_base(ui_url: str) -> str:
    """The address of the UI ``ui_url``'s server opens by default: ``ui_url`` for V1,
    ``ui_url/v2`` for V2. A server that does not say (older than 3.8, or unreachable)
    gets V1 links, which every Prefect 3 server serves."""
    try:
        with urllib.request.urlopen(
            f"{ui_url}/ui-settings", timeout=SETTINGS_TIMEOUT_SECONDS
        ) as answer:
            settings = json.loads(answer.read())
    except (OSError, ValueError):
        return ui_url
    if settings.get("default_ui") == "v2" and settings.get("v2_base_url"):
        origin = urllib.parse.urlsplit(ui_url)
        # ui-settings names the V2 base as a path on the same origin (``/v2``)
        return f"{origin.scheme}://{origin.netloc}{settings['v2_base_url'].rstrip('/')}"
    return ui_url


def ui_base(ui_url: str | None = None) -> str | None:
    """The default UI's address for ``ui_url`` (default: the configured server's)."""
    found = ui_url or configured_ui_url()
    return default_ui_base(found.rstrip("/")) if found else None


def run_url(run_id: str, ui_url: str | None = None) -> str | None:
    """A flow run's page in the default UI."""
    base = ui_base(ui_url)
    return f"{base}/runs/flow-run/{run_id}" if base else None


def artifact_url(key: str, ui_url: str | None = None) -> str | None:
    """The page of an artifact key (every version of it) in the default UI."""
    base = ui_base(ui_url)
    return f"{base}/artifacts/key/{urllib.parse.quote(key)}" if base else None


__all__ = ["artifact_url", "configured_ui_url", "default_ui_base", "run_url", "ui_base"]
