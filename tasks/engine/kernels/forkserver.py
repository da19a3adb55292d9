"""Fork server for ipykernel kernels: import ipykernel once, fork a kernel per request.

Run by the kernelspec's own Python (``python forkserver.py``), so it imports
nothing but the standard library and ipykernel: it is a script, not part of our
package. Starting a kernel the usual way costs about half a second of CPU, almost all
of it importing IPython and ipykernel; a child forked from a process that has already
imported them starts in a fraction of that and shares those pages copy-on-write.

Protocol, one JSON object per line: requests on stdin::

    {"id": 1, "argv": ["-f", "/tmp/k.json"], "cwd": "/runs/x/work", "env": {...}}

replies on the original stdout::

    {"ready": true, "pid": 4242}              once, after the imports
    {"id": 1, "pid": 4243}                    a kernel was forked
    {"id": 1, "error": "..."}                 it could not be
    {"exit": 4243, "status": -9}              a kernel ended (negative: killed by that signal)

No thread and no zmq context may exist here before a fork: the child initialises its
own. When stdin closes (the process that started us is gone), every kernel is sent
SIGTERM, then SIGKILL, and the server exits.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import sys
import time
import traceback

TERMINATE_GRACE_SECONDS = 2.0
# What a kernel imports while it initialises and runs its first cell, beyond
# ipykernel.kernelapp itself (found by diffing sys.modules); the debugger (debugpy)
# is the largest part.
WARM_MODULES = (
    "ipykernel.ipkernel",
    "ipykernel.zmqshell",
    "ipykernel.debugger",
    "IPython.core.debugger",
    "IPython.core.completerlib",
    "IPython.core.oinspect",
    "IPython.core.logger",
    "IPython.extensions.storemagic",
    "IPython.utils.wildcard",
    "sqlite3",
    "pdb",
    "pydoc",
    "tornado.ioloop",
    "http.client",
    "xmlrpc.client",
    "email.parser",
)


def _status(raw: int) -> int:
    """Like ``Popen.returncode``: the exit code, or minus the signal that killed it."""
    if os.WIFSIGNALED(raw):
        return -os.WTERMSIG(raw)
    return os.WEXITSTATUS(raw)


def _run_kernel(
    request: dict[str, object], protocol_fds: tuple[int, ...], set_by_imports: dict[str, str]
) -> None:
    """In the child: become a fresh kernel process, as ``python -m ipykernel_launcher``."""
    try:
        os.setsid()  # its own process group, as jupyter_client's launcher gives a kernel
        signal.set_wakeup_fd(-1)
        for signum in (signal.SIGCHLD, signal.SIGINT, signal.SIGTERM, signal.SIGPIPE):
            signal.signal(signum, signal.SIG_DFL)
        for fd in protocol_fds:
            os.close(fd)
        sys.stdout = sys.__stdout__  # fd 1, which ipykernel captures (the server swapped it)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.close(devnull)
        cwd = str(request["cwd"])
        os.chdir(cwd)
        env = request["env"]
        assert isinstance(env, dict)
        os.environ.clear()
        os.environ.update({str(k): str(v) for k, v in env.items()})
        for key, value in set_by_imports.items():
            os.environ.setdefault(key, value)
        # ipykernel's parent poller exits the kernel when its parent (this server) is gone
        os.environ["JPY_PARENT_PID"] = str(os.getppid())
        argv = [str(a) for a in request["argv"]]  # type: ignore[attr-defined]
        # read from the environment when ipykernel was imported (here, before the fork)
        argv.append(f"--IPKernelApp.parent_handle={os.getppid()}")
        sys.argv = ["ipykernel_launcher", *argv]
        from ipykernel.kernelapp import IPKernelApp

        app = IPKernelApp.instance()
        app.initialize(argv)  # type: ignore[no-untyped-call]
        app.start()  # type: ignore[no-untyped-call]
    except BaseException:
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)
    os._exit(0)


def main() -> None:
    # sys.path[0] is this script's folder (tasks/engine/kernels/): no notebook imports from it
    # (Python resolves symbolic links there: notebook_jobs/tasks is a link to tasks/)
    if sys.path and os.path.realpath(sys.path[0]) == os.path.dirname(os.path.realpath(__file__)):
        del sys.path[0]
    replies = os.dup(1)
    os.dup2(2, 1)  # anything printed by an import goes to stderr, not into the protocol
    sys.stdout = sys.stderr
    requests = sys.stdin.fileno()

    environ_before = dict(os.environ)
    import ipykernel.kernelapp  # noqa: F401  the point of this process

    preload = sys.argv[1:]  # NBJOBS_KERNEL_PRELOAD, as read by the parent's settings
    for name in [*WARM_MODULES, *preload]:
        try:
            __import__(name)
        except Exception as error:  # a preload is an optimisation, never a failure
            print(f"nbjobs fork server: could not preload {name}: {error}", file=sys.stderr)

    # what those imports put in the environment (ipykernel.debugger sets
    # PYDEVD_USE_FRAME_EVAL): a spawned kernel has it, so each forked one gets it too
    set_by_imports = {k: v for k, v in os.environ.items() if environ_before.get(k) != v}
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_write, False)
    signal.set_wakeup_fd(wake_write)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    # A terminal's Ctrl-C reaches the whole foreground group; the parent decides when we stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda *_: None)
    protocol_fds = (requests, replies, wake_read, wake_write)
    children: set[int] = set()

    def send(message: dict[str, object]) -> None:
        # the parent may be gone; the kernels are reaped all the same
        with contextlib.suppress(OSError):
            os.write(replies, (json.dumps(message) + "\n").encode())

    def reap() -> None:
        while children:
            try:
                pid, raw = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                children.clear()
                return
            if pid == 0:
                return
            children.discard(pid)
            send({"exit": pid, "status": _status(raw)})

    send({"ready": True, "pid": os.getpid()})
    buffer = b""
    open_ = True
    while open_:
        readable, _, _ = select.select([requests, wake_read], [], [])
        if wake_read in readable:
            os.read(wake_read, 512)
            reap()
        if requests not in readable:
            continue
        chunk = os.read(requests, 65536)
        if not chunk:
            open_ = False
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            if not line.strip():
                continue
            request = json.loads(line)
            try:
                pid = os.fork()
            except OSError as error:
                send({"id": request.get("id"), "error": f"fork failed: {error}"})
                continue
            if pid == 0:
                _run_kernel(request, protocol_fds, set_by_imports)
            children.add(pid)
            send({"id": request.get("id"), "pid": pid})

    # stdin closed: whoever started us is gone or done; take the kernels down with us
    for signum in (signal.SIGTERM, signal.SIGKILL):
        for pid in list(children):
            with contextlib.suppress(OSError):
                os.killpg(pid, signum)
        deadline = time.monotonic() + TERMINATE_GRACE_SECONDS
        while children and time.monotonic() < deadline:
            reap()
            time.sleep(0.05)
        reap()
        if not children:
            break


if __name__ == "__main__":
    main()
