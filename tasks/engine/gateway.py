"""Jupyter Kernel Gateway in notebook-http mode, with HTTP basic auth added.

Kernel Gateway knows one credential, a token (``Authorization: token ...`` or
``?token=``). Its extension point is the personality (``KernelGatewayApp.api``, a
module with ``create_personality``): this module is one, the gateway's own
``NotebookHTTPPersonality`` whose request handlers also accept HTTP basic auth
(user ``nbjobs`` by default) with the same secret as the token. The secret reaches
the gateway process in ``NBJOBS_GATEWAY_PASSWORD``, which is removed from its
environment before any kernel starts, so no notebook can read it.

``gateway_command`` is the command line that runs it; without a password the
gateway serves anyone who can reach it (the flow binds 127.0.0.1 by default).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import os
import sys
from pathlib import Path
from typing import Any

from kernel_gateway.notebook_http import NotebookHTTPPersonality

PASSWORD_ENV = "NBJOBS_GATEWAY_PASSWORD"
USER_ENV = "NBJOBS_GATEWAY_USER"
DEFAULT_USER = "nbjobs"
REALM = "nbjobs endpoints"


def authorized(header: str, token: str | None, user: str, password: str) -> bool:
    """Whether a request's ``Authorization`` header (or ``?token=``) carries the secret.

    Example:
        >>> basic = "Basic " + base64.b64encode(b"nbjobs:s3cret").decode()
        >>> authorized(basic, None, "nbjobs", "s3cret")
        True
        >>> authorized("token s3cret", None, "nbjobs", "s3cret")
        True
    """
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() == "basic":
        try:
            given_user, _, given = base64.b64decode(value, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        return hmac.compare_digest(given_user, user) & hmac.compare_digest(given, password)
    if scheme.lower() == "token":
        return hmac.compare_digest(value.strip(), password)
    return token is not None and hmac.compare_digest(token, password)


def _guarded(handler: type[Any], user: str, password: str) -> type[Any]:
    """``handler`` answering 401 unless the request carries the secret."""

    class Guarded(handler):  # type: ignore[misc]
        def prepare(self) -> Any:
            if self.request.method != "OPTIONS" and not authorized(
                self.request.headers.get("Authorization", ""),
                self.get_query_argument("token", None),
                user,
                password,
            ):
                self.set_header("WWW-Authenticate", f'Basic realm="{REALM}"')
                return self.send_error(401)
            return super().prepare()

    Guarded.__name__ = f"Guarded{handler.__name__}"
    return Guarded


class AuthenticatedPersonality(NotebookHTTPPersonality):  # type: ignore[misc]
    """The gateway's notebook-http personality, its handlers behind basic or token auth."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # read, and gone before the first kernel is spawned with this environment
        self._password = os.environ.pop(PASSWORD_ENV, "")
        self._user = os.environ.pop(USER_ENV, "") or DEFAULT_USER
        super().__init__(*args, **kwargs)

    def create_request_handlers(self) -> list[Any]:
        handlers: list[Any] = super().create_request_handlers()
        if not self._password:
            return handlers
        return [
            (spec[0], _guarded(spec[1], self._user, self._password), *spec[2:]) for spec in handlers
        ]


def create_personality(*args: Any, **kwargs: Any) -> AuthenticatedPersonality:
    """Kernel Gateway's entry point of a personality module."""
    return AuthenticatedPersonality(*args, **kwargs)


def gateway_command(
    notebook: Path,
    *,
    ip: str,
    port: int,
    prespawn_count: int | None = None,
    allow_origin: str | None = None,
    base_url: str | None = None,
    kernel: str | None = None,
) -> list[str]:
    """The command that serves ``notebook``'s endpoints with this personality."""
    command = [
        sys.executable,
        "-m",
        "kernel_gateway",
        f"--KernelGatewayApp.api={__name__}",
        f"--KernelGatewayApp.seed_uri={notebook}",
        f"--KernelGatewayApp.ip={ip}",
        f"--KernelGatewayApp.port={port}",
        "--KernelGatewayApp.port_retries=0",
    ]
    if prespawn_count is not None:
        command.append(f"--KernelGatewayApp.prespawn_count={prespawn_count}")
    if allow_origin:
        command.append(f"--KernelGatewayApp.allow_origin={allow_origin}")
    if base_url:
        command.append(f"--KernelGatewayApp.base_url={base_url}")
    if kernel:
        command.append(f"--KernelGatewayApp.force_kernel_name={kernel}")
    return command
