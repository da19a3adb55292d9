"""Numbers as a reader sees them: every digit, and a change with its sign.

One formatting for the history, the diff and the alerts: ``:g`` and ``.6g`` had cut
51675.5 to ``+51675.5``'s six digits and a million to ``1.23457e+06``.

Example:
    >>> number_text(1234567.0), number_text(51675.5), signed(-3), signed(0.25)
    ('1234567', '51675.5', '-3', '+0.25')
"""

from __future__ import annotations


def number_text(value: float) -> str:
    """A number at full precision, without a float's noise: ``51675.5``, ``1234567``,
    ``0.1``, ``1e-07``; never ``1.23457e+06``."""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int) or (
        isinstance(value, float) and value.is_integer() and abs(value) < 1e16
    ):
        return str(int(value))
    return repr(float(value))


def signed(delta: float) -> str:
    """A change at full precision, with its sign: ``+51675.5``, ``-3``, ``+1234567``."""
    return ("" if delta < 0 else "+") + number_text(delta)


__all__ = ["number_text", "signed"]
