"""Speaking to Slurm: sbatch, sacct, squeue, scontrol and scancel behind one seam.

``SlurmCommands`` runs the commands on this machine (a submit host); the parsing of
what they print is pure functions, tested on captured output.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass, replace

from notebook_jobs.blocks.exceptions import SlurmSubmissionError
from notebook_jobs.blocks.sizes import parse_size

SLURM_COMMAND_TIMEOUT_SECONDS = 60

# Slurm's job states, by what they mean for a run.
RUNNING_STATES = frozenset(
    {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED", "RESIZING"}
)
RETRYABLE_STATES = frozenset({"NODE_FAIL", "PREEMPTED", "BOOT_FAIL"})
FINAL_STATES = frozenset(
    {
        "COMPLETED",
        "FAILED",
        "CANCELLED",
        "TIMEOUT",
        "OUT_OF_MEMORY",
        "DEADLINE",
        "REVOKED",
        *RETRYABLE_STATES,
    }
)


@dataclass(frozen=True)
class JobStatus:
    """One reading of a job's state."""

    job_id: str
    state: str  # the Slurm state's first word: COMPLETED, FAILED, CANCELLED...
    exit_code: int | None = None
    signal: int | None = None
    node: str | None = None
    max_rss_bytes: int | None = None  # sacct's MaxRSS over the job's steps, once known

    @property
    def finished(self) -> bool:
        """True once the job has ended, whatever the outcome."""
        return self.state in FINAL_STATES


SACCT_FIELDS = "JobID,State,ExitCode,NodeList,MaxRSS"


def parse_sacct(output: str, job_id: str) -> JobStatus | None:
    """Read ``sacct --parsable2 --noheader -o JobID,State,ExitCode,NodeList,MaxRSS``: the
    job's own line, and the highest MaxRSS of its steps (``12.batch``...).

    Returns:
        The status, or ``None`` when sacct does not list the job (yet).
    """
    found: JobStatus | None = None
    highest: int | None = None
    for line in output.splitlines():
        fields = line.strip().split("|")
        if len(fields) < 3:
            continue
        if fields[0].startswith(f"{job_id}.") and len(fields) > 4:
            rss = _sacct_size(fields[4])
            if rss is not None:
                highest = max(highest or 0, rss)
        if fields[0] != job_id:
            continue
        state = fields[1].split()[0].rstrip("+") if fields[1].strip() else "UNKNOWN"
        exit_code, _, signal = fields[2].partition(":")
        node = fields[3] if len(fields) > 3 and fields[3] not in ("", "None assigned") else None
        found = JobStatus(
            job_id,
            state,
            int(exit_code) if exit_code.isdigit() else None,
            int(signal) if signal.isdigit() else None,
            node,
        )
    if found is not None and highest is not None:
        found = replace(found, max_rss_bytes=highest)
    return found


def _sacct_size(text: str) -> int | None:
    """sacct's ``123456K`` (units K, M, G, T of 1024; a bare number is bytes)."""
    text = text.strip()
    if not text:
        return None
    try:
        return parse_size(int(text) if text.isdigit() else text)
    except ValueError:
        return None


def parse_squeue(output: str, job_id: str) -> JobStatus | None:
    """Read ``squeue -h -j ID -o %i|%T|%N``; ``None`` when the job is not queued."""
    for line in output.splitlines():
        fields = line.strip().split("|")
        if len(fields) >= 2 and fields[0] == job_id:
            node = fields[2] if len(fields) > 2 and fields[2] else None
            return JobStatus(job_id, fields[1], None, None, node)
    return None


def parse_scontrol(output: str, job_id: str) -> JobStatus | None:
    """Read ``scontrol show job -o ID`` (one line of ``Key=Value`` words); None if absent.

    slurmctld keeps an ended job for ``MinJobAge`` (300 s by default), so this knows a
    job that accounting does not (yet): ``sacct`` lags, or accounting is off.
    """
    for line in output.splitlines():
        words = dict(
            word.split("=", 1) for word in line.split() if "=" in word and not word.startswith("=")
        )
        if words.get("JobId") != job_id or not words.get("JobState"):
            continue
        exit_code, _, signal = words.get("ExitCode", "").partition(":")
        node = words.get("NodeList") or None
        return JobStatus(
            job_id,
            words["JobState"],
            int(exit_code) if exit_code.isdigit() else None,
            int(signal) if signal.isdigit() else None,
            None if node in (None, "(null)") else node,
        )
    return None


_JOB_ID = re.compile(r"^(\d+)(;\S+)?$")


def parse_sbatch(output: str) -> str:
    """The job id from ``sbatch --parsable`` (``"123"`` or ``"123;cluster"``)."""
    text = output.strip().splitlines()[-1] if output.strip() else ""
    match = _JOB_ID.match(text)
    if not match:
        raise SlurmSubmissionError(f"sbatch printed no job id: {output.strip()[:500]!r}")
    return match.group(1)


class SlurmCommands:
    """The one seam to the cluster: runs sbatch, sacct, squeue and scancel here."""

    def _run(self, args: list[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        try:
            return subprocess.run(
                args,
                input=stdin,
                capture_output=True,
                text=True,
                timeout=SLURM_COMMAND_TIMEOUT_SECONDS,
            )
        except FileNotFoundError as error:
            raise SlurmSubmissionError(
                f"{args[0]} not found: is this machine a Slurm submit host (slurm-client)?"
            ) from error
        except subprocess.TimeoutExpired as error:
            raise SlurmSubmissionError(
                f"{args[0]} did not answer in {SLURM_COMMAND_TIMEOUT_SECONDS} s: "
                "is slurmctld reachable?"
            ) from error

    def submit(self, script_path: str) -> str:
        """``sbatch --parsable SCRIPT``; returns the job id."""
        done = self._run(["sbatch", "--parsable", script_path])
        if done.returncode != 0:
            raise SlurmSubmissionError(
                f"sbatch failed (exit {done.returncode}): {done.stderr.strip()[:1000]}"
            )
        return parse_sbatch(done.stdout)

    def status(self, job_id: str) -> JobStatus | None:
        """The job's state from sacct; from squeue or scontrol where sacct does not list it.

        Accounting lags on busy clusters and is off on some: a job it does not know may
        be queued (squeue), or ended a moment ago (scontrol keeps it for a while).

        Returns:
            The status, or ``None`` when no command knows the job.

        Raises:
            SlurmSubmissionError: A command is missing or did not answer.
        """
        done = self._run(
            [
                "sacct",
                "-j",
                job_id,
                "--parsable2",
                "--noheader",
                "-o",
                SACCT_FIELDS,
            ]
        )
        status = parse_sacct(done.stdout, job_id) if done.returncode == 0 else None
        if status is not None:
            return status
        queued = self._run(["squeue", "-h", "-j", job_id, "-o", "%i|%T|%N"])
        status = parse_squeue(queued.stdout, job_id) if queued.returncode == 0 else None
        if status is not None:
            return status
        shown = self._run(["scontrol", "show", "job", "-o", job_id])
        return parse_scontrol(shown.stdout, job_id) if shown.returncode == 0 else None

    def cancel(self, job_id: str) -> None:
        """``scancel JOB``; a job that already ended is not an error."""
        self._run(["scancel", job_id])
