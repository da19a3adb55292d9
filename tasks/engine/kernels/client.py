"""The kernel side of the execute step: environment, output cap, resources, shutdown.

Free of Prefect, like ``tasks.execution`` which uses it.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import queue
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jupyter_client.asynchronous.client import AsyncKernelClient
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import AsyncKernelManager
from jupyter_core.utils import ensure_async
from nbclient import NotebookClient
from nbclient.exceptions import CellTimeoutError
from nbformat import NotebookNode

from notebook_jobs.blocks.exceptions import KernelStartError, UnknownKernelError
from notebook_jobs.tasks.engine.kernels.fork import use_forking_provisioner

KERNEL_STARTUP_TIMEOUT_SECONDS = 60
READY_POLL_SECONDS = 1.0
# a subscription still connecting misses the first status: asked again this soon
IOPUB_POLL_SECONDS = 0.02
# as nbclient does: no IPython history database, which concurrent kernels would lock
KERNEL_ARGUMENTS = ("--HistoryManager.hist_file=:memory:",)
MAX_CELL_OUTPUT_BYTES = 5 * 1024 * 1024
# how long a cell that overran its timeout has to answer the interrupt
INTERRUPT_GRACE_SECONDS = 5.0
KERNEL_ENV_DROPPED = frozenset(
    {
        "PREFECT_API_KEY",
        "PREFECT_API_AUTH_STRING",
        "PREFECT_SERVER_API_AUTH_STRING",
        "PREFECT_SERVER_DATABASE_CONNECTION_URL",
        "PREFECT_API_DATABASE_CONNECTION_URL",
        "PYTEST_CURRENT_TEST",
    }
)
# Unless set otherwise: debugpy, which ipykernel imports, otherwise tells stderr that
# frozen modules may make it miss breakpoints. Nobody debugs a job's kernel, and the
# four lines began every worker's log.
KERNEL_ENV_DEFAULTS = {"PYDEVD_DISABLE_FILE_VALIDATION": "1"}


# read when an interpreter starts (sys.path, hashing, the loader), not when a notebook
# reads them: a kernel that must see other values than its fork server's is spawned
STARTUP_VARIABLE_PREFIXES = ("PYTHON", "LD_", "VIRTUAL_ENV", "CONDA_")


def kernel_environment(overrides: dict[str, str] | None = None) -> dict[str, str]:
    """The kernel's environment: ours (with ``overrides`` on top, over
    ``KERNEL_ENV_DEFAULTS``), less what would change how the kernel behaves.

    Prefect's own credentials are not the notebook's business and would end up in a
    stored notebook that prints its environment. ``PYTEST_CURRENT_TEST`` makes
    ipykernel stop forwarding output written to file descriptor 1 (C extensions,
    ``os.write``), which a notebook job must keep.
    """
    merged = {**KERNEL_ENV_DEFAULTS, **os.environ, **(overrides or {})}
    return {k: v for k, v in merged.items() if k not in KERNEL_ENV_DROPPED}


def environment_overrides(caller: dict[str, str] | None) -> dict[str, str]:
    """What of a caller's environment differs from this process's, less what the kernel
    never gets (``KERNEL_ENV_DROPPED``): what a run's kernel must add to ours."""
    return {
        k: v
        for k, v in (caller or {}).items()
        if k not in KERNEL_ENV_DROPPED and os.environ.get(k) != v
    }


def needs_new_interpreter(overrides: dict[str, str]) -> bool:
    """Whether ``overrides`` change what an interpreter reads as it starts
    (``PYTHONPATH``, ``LD_LIBRARY_PATH``...): then neither a pre-started nor a forked
    kernel has them, and the kernel is spawned."""
    return any(name.startswith(STARTUP_VARIABLE_PREFIXES) for name in overrides)


def new_kernel_manager(kernel: str, ipc_path: Path) -> AsyncKernelManager:
    """A manager for a new ``kernel`` over IPC sockets at ``ipc_path``, not yet started.

    IPC sockets in a private folder: no TCP port on the host, no "unencrypted TCP"
    warning. ipykernels are forked from a warm fork server (``tasks.engine.kernels.fork``)
    when a ``ForkServers`` is current.
    """
    km = AsyncKernelManager(kernel_name=kernel, transport="ipc", ip=str(ipc_path))
    use_forking_provisioner(km.kernel_spec)
    return km


async def start_kernel(
    km: AsyncKernelManager,
    cwd: Path,
    timeout: float = KERNEL_STARTUP_TIMEOUT_SECONDS,
    environment: dict[str, str] | None = None,
) -> AsyncKernelClient:
    """Start the kernel of ``km`` in ``cwd``, with ``environment`` on top of ours; a
    connected client once it answers."""
    await km.start_kernel(
        cwd=str(cwd),
        env=kernel_environment(environment),
        extra_arguments=list(KERNEL_ARGUMENTS),
    )
    kc = await connect_client(km, timeout)
    if getattr(km.provisioner, "moved_from", None) is not None:
        try:  # a kernel forked ahead (``ForkServers(ahead=True)``), started elsewhere
            await move_kernel(kc, cwd)
        except BaseException:
            kc.stop_channels()
            raise
    return kc


async def connect_client(km: AsyncKernelManager, timeout: float) -> AsyncKernelClient:
    """A client connected to the started kernel of ``km``, once the kernel answers.

    jupyter_client's ``wait_for_ready`` ends by draining IOPub until it has been
    silent for 0.2 s, on every start. Seeing the kernel's ``idle`` status for our own
    ``kernel_info`` request on IOPub proves both channels connected, without the wait.
    """
    kc: AsyncKernelClient = km.client()
    # No heartbeat: a client made by its kernel manager asks the manager whether the
    # kernel lives, so the heartbeat thread only costs a thread per kernel. And in
    # jupyter_client 8.10 a heartbeat stopped as it starts (a kernel that dies at
    # once) spins, opening sockets, until ZeroMQ says "Too many open files".
    kc.start_channels(hb=False)
    deadline = time.monotonic() + timeout
    try:
        while True:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the kernel did not answer in {timeout:g} s")
            if not await km.is_alive():
                raise RuntimeError("the kernel died before answering")
            msg_id = kc.kernel_info()
            reply = await _message_for(kc.shell_channel, msg_id, READY_POLL_SECONDS)
            if reply is None:
                continue
            # a subscription still connecting misses the status: ask again, soon
            status = await _message_for(kc.iopub_channel, msg_id, IOPUB_POLL_SECONDS, "idle")
            if status is not None:  # IOPub is subscribed: nothing can be missed from here
                kc._handle_kernel_info_reply(reply)
                kc.allow_stdin = False
                return kc
    except BaseException:
        kc.stop_channels()
        raise


async def _message_for(
    channel: Any, msg_id: str, timeout: float, state: str | None = None
) -> dict[str, Any] | None:
    """The next message on ``channel`` answering ``msg_id`` (an ``idle`` status if
    ``state``), or None after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        try:
            message: dict[str, Any] = await channel.get_msg(timeout=left)
        except queue.Empty:
            return None
        if message.get("parent_header", {}).get("msg_id") != msg_id:
            continue
        if state is None or message["content"].get("execution_state") == state:
            return message
    return None


@dataclass
class StartedKernel:
    """A started kernel with a connected client, ready for its one run.

    ``retire``, when given (by a ``KernelPool``), stops the kernel off the run's
    critical path once the run has ended cleanly; its owner waits for that on close.
    """

    km: AsyncKernelManager
    kc: AsyncKernelClient
    retire: Callable[[], None] | None = None


def installed_kernels() -> dict[str, str]:
    """Installed kernels as ``{name: resource_dir}``."""
    return dict(KernelSpecManager().find_kernel_specs())


def ensure_kernel_installed(kernel: str) -> None:
    """Raise ``UnknownKernelError`` (listing installed kernels) unless ``kernel`` exists."""
    kernels = installed_kernels()
    if kernel not in kernels:
        raise UnknownKernelError(kernel, list(kernels))


class CappedClient(NotebookClient):
    """nbclient with a cap on the output one cell may keep in memory and in the notebook."""

    max_output_bytes: int = MAX_CELL_OUTPUT_BYTES

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._output_bytes: dict[int, int] = {}
        self._truncated: set[int] = set()
        self.timed_out = False  # the running cell overran ``timeout`` and was interrupted

    async def _async_handle_timeout(
        self, timeout: int, cell: NotebookNode | None = None
    ) -> dict[str, Any] | None:
        """A cell overran its timeout: interrupt it, as papermill's run does.

        The kernel answers the interrupt with a ``KeyboardInterrupt`` error output whose
        traceback shows where the cell was, and that reply ends the cell (the caller
        reads ``timed_out``). A kernel that does not answer within
        ``INTERRUPT_GRACE_SECONDS`` gets nbclient's ``CellTimeoutError``.
        """
        self.timed_out = True
        assert self.km is not None and self.kc is not None
        await ensure_async(self.km.interrupt_kernel())
        try:
            reply: dict[str, Any] = await self.kc.shell_channel.get_msg(
                timeout=INTERRUPT_GRACE_SECONDS
            )
        except queue.Empty:
            assert cell is not None
            raise CellTimeoutError.error_from_timeout_and_cell(
                "Cell execution timed out", timeout, cell
            ) from None
        return reply

    def output(
        self, outs: list[NotebookNode], msg: dict[str, Any], display_id: str | None, cell_index: int
    ) -> NotebookNode | None:
        if msg.get("msg_type") == "error":
            return super().output(outs, msg, display_id, cell_index)
        content = msg.get("content", {})
        used = self._output_bytes.get(cell_index, 0)
        if cell_index in self._truncated:
            return None
        text = content.get("text") if msg.get("msg_type") == "stream" else None
        size = len(text) if isinstance(text, str) else len(str(content))
        if used + size <= self.max_output_bytes:
            self._output_bytes[cell_index] = used + size
            return super().output(outs, msg, display_id, cell_index)
        if isinstance(text, str) and used < self.max_output_bytes:
            # keep the head of the stream up to the cap
            head = {**msg, "content": {**content, "text": text[: self.max_output_bytes - used]}}
            super().output(outs, head, display_id, cell_index)
        self._output_bytes[cell_index] = self.max_output_bytes
        if cell_index not in self._truncated:
            self._truncated.add(cell_index)
            note = (
                f"[nbjobs] output truncated: this cell produced more than "
                f"{self.max_output_bytes // (1024 * 1024)} MiB of output; the rest was dropped.\n"
            )
            outs.append(NotebookNode(output_type="stream", name="stderr", text=note))
        return None


async def shutdown_kernel(km: AsyncKernelManager, kc: Any | None) -> None:
    """Kill the kernel and close its client's channels, whatever state it is in."""
    try:
        if km.has_kernel:
            await km.shutdown_kernel(now=True)  # also removes the connection file
    except Exception:
        try:
            outcome = km.cleanup_resources()
            if inspect.isawaitable(outcome):
                await outcome
        except Exception:
            pass
    finally:
        if kc is not None:
            kc.stop_channels()


async def cancelled_not_dead(client: NotebookClient) -> bool:
    """True when nbclient's DeadKernelError was really this task being cancelled."""
    task = asyncio.current_task()
    if task is not None and hasattr(task, "cancelling") and task.cancelling():
        return True
    try:
        if client.km is None:
            return False
        alive = client.km.is_alive()
        return bool(await alive if inspect.isawaitable(alive) else alive)
    except Exception:
        return False


async def death_cause(client: NotebookClient) -> str:
    """`` (killed by SIGSEGV)`` or `` (exit code 1)`` for a dead kernel, if known."""
    provisioner = getattr(client.km, "provisioner", None)
    if provisioner is None or not provisioner.has_process:
        return ""
    for _ in range(20):  # the process may take a moment to be reaped
        code = await provisioner.poll()
        if code is not None:
            if code < 0:
                try:
                    return f" (killed by {signal.Signals(-code).name})"
                except ValueError:
                    return f" (killed by signal {-code})"
            return f" (exit code {code})"
        await asyncio.sleep(0.05)
    return ""


def kernel_pid(holder: NotebookClient | StartedKernel) -> int | None:
    """The kernel's process id, from its client's (or started kernel's) manager."""
    provisioner = getattr(holder.km, "provisioner", None)
    pid = getattr(provisioner, "pid", None)
    return int(pid) if pid else None


def is_python_kernel(kernel: str) -> bool:
    """Whether the installed kernel ``kernel`` runs Python (its kernelspec's language)."""
    spec = KernelSpecManager().get_kernel_spec(kernel)
    return str(spec.language or "").lower() == "python"


async def move_kernel(kc: Any, workdir: Path, environment: dict[str, str] | None = None) -> None:
    """Make ``workdir`` the working folder of a Python kernel that was started elsewhere,
    and add ``environment`` to its own, as a fork server does for a forked kernel.

    Runs silently: no execution count, no history, no output in the notebook. Only for
    Python kernels (``KernelPool`` and ``ForkServers`` keep no other ahead).

    Raises:
        KernelStartError: The kernel refused (the run then ends as one whose kernel
            could not start).
    """
    lines = ["import os as _nbjobs_os", f"_nbjobs_os.chdir({str(workdir)!r})"]
    if environment:
        lines += [
            f"_nbjobs_os.environ.update({environment!r})",
            "import time as _nbjobs_time; _nbjobs_time.tzset(); del _nbjobs_time",
        ]
    lines.append("del _nbjobs_os")
    reply = await kc.execute_interactive(
        "\n".join(lines),
        silent=True,
        store_history=False,
        timeout=KERNEL_STARTUP_TIMEOUT_SECONDS,
    )
    content = reply["content"]
    if content.get("status") != "ok":
        reason = ": ".join(
            str(part) for part in (content.get("ename"), content.get("evalue")) if part
        )
        raise KernelStartError(
            f"the pre-started kernel could not move to {workdir}: {reason or 'it refused'}"
        )
