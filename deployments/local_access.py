"""What keeps the local server its owner's alone: private folders and files, and the
API's credentials.

Everything the local server keeps lives in 0700 folders and 0600 files, and its API
asks for credentials (Prefect's ``PREFECT_SERVER_API_AUTH_STRING``), made at random on
the first start and kept in ``$NBJOBS_HOME/server/credentials``. Another account on the
same machine can neither read the folders nor call the API; every client we start or
print reads the credentials from that file.

Standard library only: ``nbjobs run`` reads the credentials on every call.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from pathlib import Path

from notebook_jobs.blocks.exceptions import LocalServerError

USER = "nbjobs"
PRIVATE_FOLDER_MODE = 0o700
PRIVATE_FILE_MODE = 0o600


def private_folder(path: Path, *, owned_here: bool = False) -> Path:
    """Make ``path`` (and missing parents) 0700, or make an existing one 0700.

    Args:
        path: The folder.
        owned_here: The folder sits where others can write (the temp folder): it must
            be ours, else it is refused rather than used.

    Raises:
        LocalServerError: It cannot be made or changed, or (``owned_here``) it belongs
            to someone else.
    """
    try:
        path.mkdir(mode=PRIVATE_FOLDER_MODE, parents=True, exist_ok=True)
        info = path.lstat()
        if owned_here and (info.st_uid != os.getuid() or not stat.S_ISDIR(info.st_mode)):
            raise LocalServerError(
                f"{path} belongs to another account; remove it, or set NBJOBS_HOME to a "
                "shorter path"
            )
        if info.st_uid == os.getuid() and stat.S_IMODE(info.st_mode) != PRIVATE_FOLDER_MODE:
            path.chmod(PRIVATE_FOLDER_MODE)
    except OSError as error:
        raise LocalServerError(
            f"cannot write the local server's folder {path} ({error.strerror}); "
            "set NBJOBS_HOME to a folder you can write"
        ) from error
    return path


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` as a 0600 file, whole or not at all.

    Raises:
        LocalServerError: It cannot be written (a full disk, a read-only folder).
    """
    partial = path.with_name(path.name + ".tmp")
    try:
        descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE_MODE)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(text)
        os.chmod(partial, PRIVATE_FILE_MODE)  # an older file of another mode, reused
        partial.replace(path)
    except OSError as error:
        with contextlib.suppress(OSError):
            partial.unlink()
        raise LocalServerError(
            f"cannot write {path} ({error.strerror}); free some space or set NBJOBS_HOME "
            "to a folder you can write (the local server's history is untouched)"
        ) from error


def open_private_log(path: Path) -> int:
    """A 0600 log file opened for appending (made so, or made so again)."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, PRIVATE_FILE_MODE)
    os.fchmod(descriptor, PRIVATE_FILE_MODE)
    return descriptor


class Credentials:
    """The local server's API credentials, in a 0600 file.

    Example:
        >>> Credentials(Path("~/.nbjobs/server/credentials").expanduser()).make()
        'nbjobs:4q3T...'
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def make(self) -> str:
        """New credentials for a server about to start; written before it starts."""
        auth_string = f"{USER}:{secrets.token_urlsafe(24)}"
        write_private(self.path, auth_string + "\n")
        return auth_string

    def read(self) -> str:
        """The running server's credentials.

        Raises:
            LocalServerError: The file is missing or unreadable (one line: what to do).
        """
        try:
            auth_string = self.path.read_text().strip()
        except OSError as error:
            raise LocalServerError(
                f"cannot read the local server's credentials {self.path} ({error.strerror}); "
                "`nbjobs server stop` and run again to make new ones"
            ) from error
        if ":" not in auth_string:
            raise LocalServerError(
                f"the local server's credentials {self.path} are not `user:password`; "
                "`nbjobs server stop` and run again to make new ones"
            )
        return auth_string
