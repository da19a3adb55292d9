"""``python -m notebook_jobs.deployments.cli``: the ``nbjobs`` command (the local server
starts its worker this way)."""

import sys

from notebook_jobs.deployments.cli import main

sys.exit(main())
