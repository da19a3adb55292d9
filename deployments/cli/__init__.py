"""``nbjobs``: the flows, exposed to a terminal as deployments expose them to HTTP.

One module per command, each with its arguments and its handler
(``add_parser`` sets ``handler``); ``parser.py`` puts them together:

    nbjobs run NOTEBOOK [OUTPUT] [-p NAME VALUE]... [papermill's other options]   run.py
    nbjobs repair RUN [--from-cell N] [--notebook FIXED] [-p NAME VALUE]...        repair.py
    nbjobs inspect NOTEBOOK [--json]                                              inspect.py
    nbjobs deploy NOTEBOOK --name NAME [--cron EXPR | --every DURATION] ...        deploy.py
    nbjobs diff RUN_A RUN_B [--json]                                              diff.py
    nbjobs retry-uploads                                                          retry_uploads.py
    nbjobs serve [--pool P] [--limit N] [--isolation in-process|process] ...      serve.py
    nbjobs backfill DEPLOYMENT --start DATE --end DATE [...] | --cancel ID        ../backfill.py
    nbjobs endpoints serve|stop|restart|status|deploy ...                         ../endpoints.py
    nbjobs alert add|list|remove ...                                              ../alerts.py
    nbjobs runs [NOTEBOOK] [--last N] [--json]                                    ../runs_command.py
    nbjobs server start|stop|status|env [--json]                                  server.py

Every option is in the generated reference (``docs/cli-reference.md``, from this parser).
With no Prefect server configured (no ``PREFECT_API_URL``, no profile naming one), the
commands that need one use the local server (``deployments/local_server.py``), started on
first use and reused; ``run`` is then a plain HTTP client and imports no Prefect.

Exit codes (``exit_codes.py``): 0 the notebook ran to the end; 1 it raised, timed out or
killed its kernel (its partial notebook is stored); 2 the request was refused before any
kernel started (bad notebook, parameter, kernel, option...); 3 the artefact store failed;
4 the local Prefect server, its worker or the API failed; 130 interrupted.
"""

from __future__ import annotations

import os
import sys

from notebook_jobs.blocks.exceptions import (
    APIError,
    EndpointServerError,
    LocalServerError,
    NotebookInputError,
    SettingsError,
)
from notebook_jobs.deployments.cli.parser import build_parser
from notebook_jobs.deployments.exit_codes import (
    EXIT_BAD_INPUT,
    EXIT_BROKEN_PIPE,
    EXIT_INTERRUPTED,
    EXIT_SERVER_FAILED,
)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``nbjobs`` console script: parse, run the command's handler,
    and turn an expected failure into one line and its exit code."""
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        if not getattr(args, "passes_on", None):  # only nbjobs lab hands arguments on
            parser.error(f"unrecognized arguments: {' '.join(unknown)}")
        setattr(args, args.passes_on, unknown)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    try:
        code: int = args.handler(args)
        return code
    except (SettingsError, NotebookInputError) as error:  # what to fix, in one line
        print(f"nbjobs: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (LocalServerError, EndpointServerError) as error:
        print(f"nbjobs: {error}", file=sys.stderr)
        return EXIT_SERVER_FAILED
    except APIError as error:
        where = os.environ.get("PREFECT_API_URL", "the Prefect server")
        print(f"nbjobs: {where} did not answer as expected: {error}", file=sys.stderr)
        return EXIT_SERVER_FAILED
    except KeyboardInterrupt:
        print("nbjobs: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `nbjobs run ... | head -1`: the reader left; the run is stored
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no flush error at exit
        return EXIT_BROKEN_PIPE
