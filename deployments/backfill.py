"""``nbjobs backfill``: one run per tick of a deployment's schedule over a past range.

    nbjobs backfill DEPLOYMENT --start 2026-01-01 --end 2026-01-31 [--every 1d]
                    [--max-concurrency N] [--skip-completed] [--dry-run]
    nbjobs backfill DEPLOYMENT --cancel ID

Each run is created from the deployment as Prefect's scheduler creates a scheduled
run, Scheduled at its tick (in the past, so a worker takes it at once): its expected
start time is the tick, so the run is *for* that tick (``flows/series.py``), its
notebook gets it as ``# nbjobs: logical_date``, and its history and the UI sort it
there. No queue of our own: at most ``--max-concurrency`` runs are going at a time
because the command creates the next one when one ends (on the local server it asks
the worker to start each at once, as ``nbjobs run`` does).

Idempotent: a tick that has a run of the deployment (made by the schedule, by hand, or
by an earlier backfill) gets no second one; ``--skip-completed`` runs again the ticks
whose runs did not complete. Idempotency keys make two backfills started together
create one run per tick. Every run is tagged ``trigger:backfill`` and ``backfill:ID``;
the backfill's table (a row per tick: status, seconds, outputs) is the artifact
``<notebook>-backfill-<ID>``, updated as runs end. Interrupted, it stops creating runs
and says how to cancel the ones it made.
"""

from __future__ import annotations

import argparse
import queue
import secrets
import sys
import threading
import time
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from notebook_jobs.blocks.exceptions import APIError, NotebookInputError
from notebook_jobs.deployments.api import FINAL_STATES, PrefectHTTP
from notebook_jobs.deployments.backfill_plan import (
    GOING,
    Tick,
    backfill_table,
    deployment_zone,
    parse_bound,
    planned_ticks,
    status_counts,
)
from notebook_jobs.deployments.exit_codes import EXIT_INTERRUPTED, EXIT_NOTEBOOK_FAILED, EXIT_OK
from notebook_jobs.tasks.engine.run_context import duration_seconds, tick_text, zone_name
from notebook_jobs.tasks.ui_links import artifact_url, run_url

if TYPE_CHECKING:
    from notebook_jobs.deployments.local_server import LocalServer

FLOW = "run-notebook"
DEFAULT_CONCURRENCY = 4
TABLE_EVERY_SECONDS = 3.0  # the table artifact is republished at most this often
POLL_SECONDS = 1.0
BACKFILL_TRIGGER = "trigger:backfill"
BACKFILL_TAG = "backfill:"  # backfill:<id> on each run of one backfill


def add_parser(commands: Any) -> None:
    backfill = commands.add_parser(
        "backfill",
        help="one run per tick of a deployment's schedule over past dates, each for its date",
    )
    backfill.set_defaults(handler=handle)
    backfill.add_argument("deployment", help="the deployment: NAME or run-notebook/NAME")
    backfill.add_argument("--start", help="first date (or date and time), e.g. 2026-01-01")
    backfill.add_argument("--end", help="last date, included (or date and time), e.g. 2026-01-31")
    backfill.add_argument(
        "--every",
        metavar="DURATION",
        help="ticks every DURATION from --start (30m, 1h, 1d) instead of the deployment's schedule",
    )
    backfill.add_argument(
        "--max-concurrency",
        type=int,
        default=DEFAULT_CONCURRENCY,
        metavar="N",
        help="most runs of the backfill going at a time (default %(default)s)",
    )
    backfill.add_argument(
        "--skip-completed",
        action="store_true",
        help="run again the ticks whose runs failed, crashed or were cancelled (default: a "
        "tick with any run gets no other)",
    )
    backfill.add_argument(
        "--dry-run", action="store_true", help="list the ticks and what would happen to each"
    )
    backfill.add_argument(
        "--cancel", metavar="ID", help="cancel the runs of backfill ID that have not ended"
    )


class Backfill:
    """One backfill: its ticks, the runs it follows, its progress and its table."""

    def __init__(
        self,
        api: PrefectHTTP,
        deployment: dict[str, Any],
        ticks: list[Tick],
        *,
        ui_url: str | None,
        server: LocalServer | None,
        concurrency: int,
        skip_completed: bool,
    ) -> None:
        self.api, self.deployment, self.ticks = api, deployment, ticks
        self.ui_url, self.server = ui_url, server
        self.concurrency = max(1, concurrency)
        self.skip_completed = skip_completed
        self.id = secrets.token_hex(3)
        tags = deployment.get("tags") or []
        self.label = next(
            (t.removeprefix("notebook:") for t in tags if t.startswith("notebook:")),
            str(deployment["name"]),
        )
        from notebook_jobs.tasks.notebook import artifact_key

        self.key = artifact_key(self.label, f"backfill-{self.id}")
        self.stopping = threading.Event()
        self._published = 0.0

    # --- one tick, in a thread of its own ---------------------------------------------

    def _run(self, tick: Tick) -> None:
        api = self.api  # a connection per thread
        try:
            body = {
                "parameters": {},
                "state": {
                    "type": "SCHEDULED",
                    "name": "Scheduled",
                    "message": f"backfill {self.id}",
                    "state_details": {"scheduled_time": tick.when.isoformat()},
                },
                "tags": [BACKFILL_TRIGGER, f"{BACKFILL_TAG}{self.id}"],
                # the same tick made again (a second backfill started together) is one run
                "idempotency_key": (
                    f"nbjobs-backfill {self.deployment['id']} "
                    f"{tick.when.astimezone(ZoneInfo('UTC')).isoformat()} #{len(tick.earlier)}"
                ),
            }
            run = api.request(
                "POST",
                f"/deployments/{self.deployment['id']}/create_flow_run",
                json=body,
                idempotent=True,
            ).json()
            tick.run_id, tick.name, tick.made, tick.status = run["id"], run["name"], True, "going"
            document = self._follow(api, run["id"])
            final = api.flow_run(run["id"])
            tick.name = final.get("name") or tick.name
            tick.status = (final.get("state") or {}).get("type", "UNKNOWN").lower()
            tick.seconds = final.get("total_run_time") or None
            if document:
                tick.outputs = document.get("outputs") or {}
                tick.seconds = (document.get("timings") or {}).get("total_seconds", tick.seconds)
        except (APIError, OSError) as error:  # this tick's (a timeout too), not the backfill's
            tick.status = f"error: {error}"

    def _follow(self, api: PrefectHTTP, run_id: str) -> dict[str, Any] | None:
        """Wait for the run to end; its result document where it is at hand."""
        channel = self.server.follow(run_id) if self.server is not None else None
        if channel is not None:  # the local worker starts it now and streams its result
            from notebook_jobs.deployments.client_run import (
                Interrupts,
                RunFollower,
                follow_channel,
            )

            with channel:
                found = follow_channel(
                    channel,
                    api,
                    run_id,
                    RunFollower(bar=False, echo=False),
                    Interrupts(lambda: None),
                )
            if found is not None and found.get("document"):
                api.wait(run_id, timeout=600)  # its state follows its result by a moment
                document: dict[str, Any] = found["document"]
                return document
        while (api.flow_run(run_id).get("state") or {}).get("type") not in FINAL_STATES:
            time.sleep(POLL_SECONDS)
        try:
            return api.result(run_id)
        except (LookupError, APIError):
            return None

    # --- the whole backfill --------------------------------------------------------

    def run(self, progress: Progress) -> None:
        todo: queue.Queue[Tick] = queue.Queue()
        for tick in self.ticks:
            if tick.action(self.skip_completed) in ("run", "run again"):
                todo.put(tick)
            else:
                self._adopt(tick)
        ended: queue.Queue[Tick] = queue.Queue()
        total = todo.qsize()

        def work() -> None:
            while not self.stopping.is_set():
                try:
                    tick = todo.get_nowait()
                except queue.Empty:
                    return
                self._run(tick)
                ended.put(tick)

        threads = [
            threading.Thread(target=work, daemon=True, name=f"backfill-{i}")
            for i in range(min(self.concurrency, total))
        ]
        for thread in threads:
            thread.start()
        self.publish(force=True)
        done = 0
        while done < total:
            try:
                tick = ended.get(timeout=0.5)
            except queue.Empty:
                if not any(thread.is_alive() for thread in threads):
                    break
                continue
            done += 1
            progress.ended(tick, self.ticks)
            self.publish()
        self.publish(force=True)

    def _adopt(self, tick: Tick) -> None:
        """A tick with a run already: the table shows its latest."""
        latest = tick.earlier[-1]
        tick.run_id, tick.name = latest["id"], latest.get("name")
        tick.status = ((latest.get("state") or {}).get("type") or "scheduled").lower()
        tick.seconds = latest.get("total_run_time") or None

    def cancel_made(self) -> None:
        self.stopping.set()

    def table(self) -> str:
        """The backfill's table artifact: a row per tick."""
        return backfill_table(
            self.label, self.id, str(self.deployment["name"]), self.ticks, self.ui_url
        )

    def publish(self, force: bool = False) -> None:
        if not force and time.monotonic() - self._published < TABLE_EVERY_SECONDS:
            return
        self._published = time.monotonic()
        try:
            self.api.request(
                "POST",
                "/artifacts/",
                json={
                    "key": self.key,
                    "type": "markdown",
                    "data": self.table(),
                    "description": f"backfill {self.id} of run-notebook/{self.deployment['name']}",
                },
            )
        except APIError as error:  # the table is not worth the backfill
            print(f"nbjobs: could not update the backfill's table: {error}", file=sys.stderr)


class Progress:
    """A bar on a terminal; a line per ended run otherwise."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.done = 0
        self.bar = sys.stderr.isatty()

    def ended(self, tick: Tick, ticks: list[Tick]) -> None:
        self.done += 1
        if not self.bar:
            seconds = f" in {tick.seconds:.1f} s" if tick.seconds else ""
            print(f"{tick_text(tick.when)}  {tick.status}{seconds}  {tick.name or ''}", flush=True)
            return
        width = 30
        filled = width * self.done // max(self.total, 1)
        counts = ", ".join(f"{n} {s}" for s, n in status_counts(ticks).items())
        sys.stderr.write(
            f"\r[{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total}  {counts}\033[K"
        )
        sys.stderr.flush()
        if self.done == self.total:
            sys.stderr.write("\n")


def backfill_command(args: argparse.Namespace, server: LocalServer | None) -> int:
    """``nbjobs backfill``: the whole command, from its arguments to its exit code."""
    from prefect.settings import get_current_settings

    settings = get_current_settings()
    ui_url = server.ui_url() if server is not None else None
    name = args.deployment.removeprefix(f"{FLOW}/")
    with PrefectHTTP(str(settings.api.url), auth_string=_secret(settings.api.auth_string)) as api:
        try:
            deployment = api.request("GET", f"/deployments/name/{FLOW}/{name}").json()
        except APIError as error:
            if error.status_code == 404:
                raise NotebookInputError(
                    f"no deployment {FLOW}/{name} on {settings.api.url}; `nbjobs deploy` makes one"
                ) from None
            raise
        if args.cancel:
            return cancel_backfill(api, args.cancel)
        if not args.start or not args.end:
            raise NotebookInputError("give the range: --start 2026-01-01 --end 2026-01-31")
        every = None
        if args.every:
            try:
                every = duration_seconds(args.every)
            except ValueError as error:
                raise NotebookInputError(f"--every {error}") from None
        zone = deployment_zone(deployment)
        start = parse_bound(args.start, zone, end=False)
        end = parse_bound(args.end, zone, end=True)
        if end < start:
            raise NotebookInputError(f"--end {args.end} is before --start {args.start}")
        ticks = planned_ticks(api, deployment, start, end, every)
        if not ticks:
            print(f"no tick of run-notebook/{name} between {start} and {end}")
            return EXIT_OK
        backfill = Backfill(
            api,
            deployment,
            ticks,
            ui_url=ui_url,
            server=server,
            concurrency=args.max_concurrency,
            skip_completed=args.skip_completed,
        )
        to_run = [t for t in ticks if t.action(args.skip_completed) in ("run", "run again")]
        what = "dry run" if args.dry_run else f"backfill {backfill.id}"
        print(
            f"{what} of run-notebook/{name}: {len(ticks)} ticks from "
            f"{tick_text(ticks[0].when)} to {tick_text(ticks[-1].when)} ({zone_name(zone)}), "
            f"{len(to_run)} to run" + (": nothing is created" if args.dry_run else "")
        )
        if args.dry_run:
            for tick in ticks:
                print(f"  {tick_text(tick.when):<19} {tick.action(args.skip_completed)}")
            return EXIT_OK
        print(f"  its table: {artifact_url(backfill.key, ui_url)}", flush=True)
        started = time.monotonic()
        try:
            backfill.run(Progress(len(to_run)))
        except KeyboardInterrupt:
            backfill.cancel_made()
            going = [t.run_id for t in ticks if t.made and t.status in ("going", "pending")]
            print(
                f"\nnbjobs: backfill {backfill.id} interrupted: no more runs are created; the "
                f"{len(going)} it made that have not ended go on (tagged backfill:{backfill.id}). "
                f"Cancel them: nbjobs backfill {name} --cancel {backfill.id}",
                file=sys.stderr,
            )
            return EXIT_INTERRUPTED
        elapsed = time.monotonic() - started
    made = [t for t in ticks if t.made]
    failed = [t for t in made if t.status != "completed"]
    rate = f", {len(made) / elapsed * 60:.1f} notebooks/min" if made and elapsed > 0 else ""
    print(
        f"backfill {backfill.id}: {len(made)} runs in {elapsed:.1f} s{rate}; "
        + ", ".join(f"{n} {s}" for s, n in status_counts(ticks).items())
    )
    for tick in failed:
        print(f"  {tick_text(tick.when)} {tick.status}: {run_url(tick.run_id or '', ui_url)}")
    return EXIT_NOTEBOOK_FAILED if failed else EXIT_OK


def cancel_backfill(api: PrefectHTTP, backfill_id: str) -> int:
    """Cancel every run of backfill ``backfill_id`` that has not ended."""
    runs = api.flow_runs(
        {
            "flow_runs": {
                "tags": {"all_": [f"{BACKFILL_TAG}{backfill_id}"]},
                "state": {"type": {"any_": list(GOING)}},
            }
        }
    )
    message = f"backfill {backfill_id} cancelled (nbjobs backfill --cancel)"
    for run in runs:
        api.cancel(run["id"], message, state=(run.get("state") or {}).get("type"))
    print(f"backfill {backfill_id}: {len(runs)} runs cancelled")
    return EXIT_OK


def _secret(value: Any) -> str | None:
    if value is None:
        return None
    return str(value.get_secret_value() if hasattr(value, "get_secret_value") else value)


__all__ = ["add_parser", "backfill_command", "cancel_backfill", "handle"]


def handle(args: argparse.Namespace) -> int:
    """``nbjobs backfill``, on the local server when no Prefect server is configured."""
    from notebook_jobs.deployments.cli.common import use_local_server

    return backfill_command(args, use_local_server())
