"""What deployments are called, light to import (no Prefect): the ``nbjobs`` command's
quick paths and JupyterLab's backend (``deployments/lab``) read them without paying for
``deployments.definitions``' imports. The run's own names are in ``tasks/names.py``."""

from __future__ import annotations

POOL_NAME = "notebook-jobs"  # the process work pool `nbjobs serve` and the local server use
GENERAL_DEPLOYMENT = "adhoc"  # run-notebook/adhoc: any notebook it is sent
NOTEBOOK_TAG = "nbjobs-notebook"  # on every deployment of one notebook (nbjobs deploy)
# how run-notebook's parameters cell types map to JSON schema types, both ways
JSON_TYPES = {
    "int": "integer",
    "float": "number",
    "str": "string",
    "bool": "boolean",
    "list": "array",
    "tuple": "array",
    "dict": "object",
}
