"""What runs and their deployments are called, and the tags that carry their settings:
one home, light to import (no Prefect), below every layer that reads them."""

from __future__ import annotations

RUN_FLOW = "run-notebook"  # the flow every notebook run is (flows/run_notebook.py)
NOTEBOOK_LABEL_TAG = "notebook:"  # notebook:<label> on every run: its series (history)
ALLOW_TAG = "nbjobs-allow:"  # a technical parameter a deployment's callers may set
OVERLAP_TAG = "on-overlap:"  # on-overlap:skip on a deployment (flows/series.py)
CATCH_UP_TAG = "catch-up:"  # catch-up:none, catch-up:latest
