#!/usr/bin/env bash
# Renders, from a throwaway Prefect server and `nbjobs serve` on 127.0.0.1:
#   docs/flow-run.png     a run of examples/report.ipynb in the Prefect UI, with its artifacts;
#   docs/deploy-form.png  that deployment's run form: the notebook's parameters and the
#                         one technical parameter opened (--allow);
#   docs/run-summary.png  a failed run's summary: the executed notebook, the failing cell marked;
#   docs/run-failed.png   that failed run's page (V2, 1440x900): the failure as its state message;
#   docs/batch-table.png  a batch of six as one table;
#   docs/diff.png         what changed between two of its runs (the diff-runs flow);
#   docs/history.png      report-history: the report's runs as a series (V2), and
#   docs/history-v1.png   the same in V1;
#   docs/run-plots.png    the summary of a run with a plot, a DataFrame and a dict, its
#                         local-store links served by `nbjobs serve --files-port`;
#   docs/run-cached.png   a cache hit: the run in state Cached, its summary linking the
#                         cached run's artefacts;
#   docs/alerts.png       an alert made by `nbjobs alert add`, in the Automations page;
#   docs/backfill.png     a backfill of two weeks of weekdays: its table (V2), and
#   docs/series-history.png  that notebook's history, each run for its day.
# Starts a throwaway Prefect server and `nbjobs serve` on 127.0.0.1, triggers runs over
# HTTP, and screenshots with headless Chromium (Debian's `chromium` package).
set -euo pipefail
cd "$(dirname "$0")/.."
port=4391
home="$(mktemp -d)"
export PREFECT_HOME="$home/prefect" NBJOBS_HOME="$home/nbjobs" PREFECT_SERVER_ANALYTICS_ENABLED=false
export PREFECT_UI_API_URL="http://127.0.0.1:$port/api"
setsid .venv/bin/prefect server start --host 127.0.0.1 --port "$port" >"$home/server.log" 2>&1 &
server=$!
trap 'kill -- -$server 2>/dev/null; kill -- -$worker 2>/dev/null; rm -rf "$home"' EXIT
until curl -sf "http://127.0.0.1:$port/api/health" >/dev/null; do sleep 0.5; done

# shot OUT WIDTH,HEIGHT BUDGET_MS URL: one page, rendered by headless Chromium
shot() {
  chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
    --disable-background-networking --disable-component-update --disable-sync \
    --user-data-dir="$home/chromium" --window-size="$2" --hide-scrollbars \
    --virtual-time-budget="$3" --screenshot="$1" "$4" 2>/dev/null
}
export PREFECT_API_URL="http://127.0.0.1:$port/api"
.venv/bin/nbjobs deploy examples/report.ipynb --name report -p label weekly --allow timeout_seconds >/dev/null
setsid .venv/bin/nbjobs serve --files-port $((port + 1)) >"$home/serve.log" 2>&1 &
worker=$!
run_id="$(.venv/bin/python - <<'PY'
import os
from notebook_jobs.deployments.api import PrefectHTTP
api = PrefectHTTP(os.environ["PREFECT_API_URL"])
# a series for the history: over HTTP here, from Python below (one failing: n as text)
for n in (4, 6, 5, 9, 8):
    run_id = api.trigger("run-notebook", "report", {"parameters": {"n": n}}, idempotency_key=f"shot-{n}")
    api.wait(run_id)
for n in (5, 12):
    run_id = api.trigger("run-notebook", "report", {"parameters": {"n": n}}, idempotency_key=f"shot-{n}-again")
    api.wait(run_id)
plots = api.trigger("run-notebook", "adhoc", {"notebook": os.path.abspath("tests/data/displays.ipynb")})
api.wait(plots)
print(run_id, api.artifacts(plots)["displays-summary"]["id"])
PY
)"
plots_summary="${run_id#* }"
run_id="${run_id%% *}"
deployment_id="$(curl -s "$PREFECT_API_URL/deployments/name/run-notebook/report" |
  .venv/bin/python -c 'import json, sys; print(json.load(sys.stdin)["id"])')"
shot docs/flow-run.png 1500,1150 40000 "http://127.0.0.1:$port/runs/flow-run/$run_id?tab=Artifacts"
echo "docs/flow-run.png: run $run_id"
shot docs/deploy-form.png 1400,960 15000 "http://127.0.0.1:$port/deployments/deployment/$deployment_id/run"
echo "docs/deploy-form.png: deployment $deployment_id"
ids="$(.venv/bin/python - <<'PY' 2>/dev/null
import asyncio

from prefect.client.orchestration import get_client
from prefect.client.schemas.sorting import ArtifactSort
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    ArtifactFilterKey,
)

from notebook_jobs.flows.run_notebook import run_notebook
from notebook_jobs.flows.run_diff import run_diff
from notebook_jobs.flows.run_notebooks import run_notebooks


async def main() -> None:
    state = await run_notebook("tests/data/raises.ipynb", return_state=True)
    await run_notebook("examples/report.ipynb", parameters={"n": "x"}, return_state=True)
    await run_notebook("examples/report.ipynb", parameters={"n": 7}, return_state=True)
    batch = await run_notebooks(notebook="examples/report.ipynb",
                                grid={"n": [1, 2, 3], "label": ["a", "b"]})
    items = sorted(batch.items, key=lambda item: item.index)
    diffed = await run_diff(str(items[0].flow_run_id), str(items[5].flow_run_id), return_state=True)
    async with get_client() as client:
        summary = await client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id]),
            key=ArtifactFilterKey(any_=["raises-summary"])))
        (table,) = await client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["report-batch"])),
            sort=ArtifactSort.CREATED_DESC, limit=1)
        (diff,) = await client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[diffed.state_details.flow_run_id])))
        (history,) = await client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["report-history"])),
            sort=ArtifactSort.CREATED_DESC, limit=1)
    print(summary[0].id, table.id, diff.id, history.id, state.state_details.flow_run_id)


asyncio.run(main())
PY
)"
set -- $ids
# artifacts in the UI the server opens by default (V2), the history in V1 as well
for spec in "run-summary:v2:$1" "batch-table:v2:$2" "diff:v2:$3" "run-plots:v2:$plots_summary" \
  "history:v2:$4" "history-v1:v1:$4"; do
  name="${spec%%:*}" rest="${spec#*:}"
  ui="${rest%%:*}" id="${rest#*:}"
  base="http://127.0.0.1:$port"
  [ "$ui" = v2 ] && base="$base/v2"
  shot "docs/$name.png" 1400,1500 40000 "$base/artifacts/artifact/$id"
  echo "docs/$name.png: $id ($ui)"
done
# the failed run's page as an analyst's screen shows it (V2, 1440x900), its Details tab:
# the failure as the state's message (V2's header shows the state, not its message)
shot docs/run-failed.png 1440,900 40000 "http://127.0.0.1:$port/v2/runs/flow-run/$5?tab=Details"
echo "docs/run-failed.png: run $5"
cached="$(.venv/bin/python - <<'PY'
import os
from notebook_jobs.deployments.api import PrefectHTTP
api = PrefectHTTP(os.environ["PREFECT_API_URL"])
request = {"notebook": os.path.abspath("examples/report.ipynb"), "parameters": {"n": 7}, "cache": True}
for _ in range(2):
    run_id = api.trigger("run-notebook", "adhoc", request)
    api.wait(run_id)
print(run_id)
PY
)"
shot docs/run-cached.png 1500,1150 40000 "http://127.0.0.1:$port/runs/flow-run/$cached?tab=Artifacts"
echo "docs/run-cached.png: run $cached"
.venv/bin/python -c "
from prefect.blocks.notifications import CustomWebhookNotificationBlock
CustomWebhookNotificationBlock(name='ops', url='http://127.0.0.1:9/hook',
    json_data={'text': '{{subject}}'}).save('ops')" >/dev/null
.venv/bin/nbjobs alert add report --when 'outputs.total > 100' --webhook-block ops >/dev/null
.venv/bin/nbjobs alert add report --when 'cells[3].duration > 3x median' --webhook-block ops \
  --name 'report: slow squares' >/dev/null
shot docs/alerts.png 1400,900 20000 "http://127.0.0.1:$port/automations"
echo "docs/alerts.png"
# a scheduled notebook as a series: two weeks of weekdays backfilled, its table and history
.venv/bin/nbjobs deploy examples/daily.ipynb --name daily --cron "0 6 * * 1-5" \
  --timezone Europe/Berlin >/dev/null
.venv/bin/nbjobs backfill daily --start 2026-01-05 --end 2026-01-16 --max-concurrency 4 >/dev/null
series="$(.venv/bin/python - <<'PY'
import os
from notebook_jobs.deployments.api import PrefectHTTP
api = PrefectHTTP(os.environ["PREFECT_API_URL"])
def latest(like):
    found = api.request("POST", "/artifacts/filter", json={
        "artifacts": {"key": {"like_": like}}, "sort": "CREATED_DESC", "limit": 1}).json()
    return found[0]["id"]
print(latest("daily-backfill-%"), latest("daily-history"))
PY
)"
shot docs/backfill.png 1400,1000 40000 "http://127.0.0.1:$port/v2/artifacts/artifact/${series%% *}"
echo "docs/backfill.png: ${series%% *}"
shot docs/series-history.png 1400,1300 40000 "http://127.0.0.1:$port/v2/artifacts/artifact/${series#* }"
echo "docs/series-history.png: ${series#* }"
