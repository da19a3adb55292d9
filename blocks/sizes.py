"""Memory sizes as people write them (``2GiB``, ``300MiB``, ``4G``), and as we show them.

Prefect-free, for the engine, the command line, the flow and the ``SlurmCluster`` block
alike. Binary units (``KiB``, ``MiB``, ``GiB``, ``TiB``) and Slurm's single letters
(``K``, ``M``, ``G``, ``T``: also powers of 1024, as ``sbatch --mem`` reads them) and
decimal ones (``KB``, ``MB``, ``GB``, ``TB``). Written, a size needs its unit; a number
given as an ``int`` is bytes.

Example:
    >>> parse_size("2GiB"), parse_size("300 MiB"), parse_size("4G"), parse_size(1024)
    (2147483648, 314572800, 4294967296, 1024)
    >>> size_text(2254857830)
    '2.1 GiB'
"""

from __future__ import annotations

import re

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1024,
    "kib": 1024,
    "kb": 1000,
    "m": 1024**2,
    "mib": 1024**2,
    "mb": 1000**2,
    "g": 1024**3,
    "gib": 1024**3,
    "gb": 1000**3,
    "t": 1024**4,
    "tib": 1024**4,
    "tb": 1000**4,
}
_SIZE = re.compile(r"^\s*(?P<number>\d+(?:\.\d+)?)\s*(?P<unit>[A-Za-z]*)\s*$")
FORMS = "a size such as 2GiB, 300MiB, 4G or 512MB"


def parse_size(value: str | int) -> int:
    """Bytes, from a size as written, or an ``int`` of bytes (see the module).

    Raises:
        ValueError: Not a size, or not above zero; the message says what is.
    """
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not {FORMS}")
    if isinstance(value, int):
        size = value
    else:
        match = _SIZE.match(str(value))
        unit = match.group("unit").lower() if match else None
        if match is None or unit not in _UNITS:
            raise ValueError(f"{value!r} is not {FORMS}")
        if not unit:  # 300 bytes is never what was meant
            number = match.group("number")
            raise ValueError(f"{value!r} has no unit: write {number}MiB or {number}GiB")
        size = int(float(match.group("number")) * _UNITS[unit])
    if size <= 0:
        raise ValueError(f"{value!r} is not above zero: give {FORMS}")
    return size


def size_text(size: int) -> str:
    """``2.1 GiB``, ``300 MiB``, ``512 KiB``, ``100 B``: one decimal below ten units."""
    amount = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if amount < 1024 or unit == "TiB":
            if unit == "B" or amount >= 10 or amount == int(amount):
                return f"{amount:.0f} {unit}"
            return f"{amount:.1f} {unit}"
        amount /= 1024
    raise AssertionError("unreachable")
