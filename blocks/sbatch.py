"""What an ``#SBATCH`` line can carry: checked where a ``SlurmCluster`` is saved and where a
job's batch script is written (``tasks/engine/slurm/script.py``), with no Prefect, so a
cluster's values are checked the same way in both.
"""

from __future__ import annotations

import re

# sbatch reads #SBATCH lines itself, not through a shell: no quoting to rely on
DIRECTIVE_VALUE = re.compile(r"[\w@%:/.,=+-]+")


def directive_value(what: str, value: str) -> str:
    """``value``, if an ``#SBATCH`` line can carry it.

    Raises:
        ValueError: It holds a character outside letters, digits and ``@%:/.,=+-``
            (a pydantic validator turns it into the block's validation error).

    Example:
        >>> directive_value("partition", "gpu")
        'gpu'
    """
    if not DIRECTIVE_VALUE.fullmatch(value):
        raise ValueError(f"{what} {value!r} has characters an #SBATCH line cannot carry")
    return value
