"""Secret parameters: references to Secret blocks, and masking their values.

A parameter is secret when the caller sends a reference instead of a value,
``{"$secret": "warehouse-password"}`` (``nbjobs run -s password warehouse-password``),
or when the notebook's ``parameters`` cell declares it with a ``# secret`` comment
(``# secret: warehouse-password`` also names the block used when no reference is sent).

The value reaches the kernel only: the injected cell that every stored copy shows
assigns ``MASK``, and the cell the kernel runs (kept in memory, never written, and
run without IPython's history) assigns the value. Every output is scanned for the
value, in the forms a notebook prints it (as is, as ``repr``, as JSON and HTML-escaped),
and masked before anything is stored, logged or published. Pure and Prefect-free: the Slurm job
masks with the same code.
"""

from __future__ import annotations

import html
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from notebook_jobs.blocks.exceptions import SecretParameterError
from notebook_jobs.tasks.engine.parameters import parameters_cell_source, parse_parameters

if TYPE_CHECKING:  # nbformat is not imported by `nbjobs run`'s client side
    from nbformat import NotebookNode

SECRET_KEY = "$secret"  # {"$secret": "block-name"}
MASK = "********"
MIN_MASKED_CHARS = 4  # a shorter value would mask every occurrence of a common word
MAX_MASKED_FILE_BYTES = 50_000_000  # larger files a notebook writes are not scanned
_DECLARED = re.compile(r"^secret\b\s*(?::\s*(?P<rest>.*))?$", re.I)
_BLOCK_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_TEXT_MIME = re.compile(
    r"^(text/|image/svg\+xml|application/(json|javascript|.*\+json|.*\+xml|xml))"
)


def secret_reference(value: Any) -> str | None:
    """The Secret block a parameter value refers to, or ``None`` for a plain value.

    Example:
        >>> secret_reference({"$secret": "warehouse-password"})
        'warehouse-password'
    """
    if isinstance(value, dict) and len(value) == 1 and SECRET_KEY in value:
        block = value[SECRET_KEY]
        return block if isinstance(block, str) and block else None
    return None


def reference(block: str) -> dict[str, str]:
    """The parameter value that refers to a Secret block."""
    return {SECRET_KEY: block}


def secret_declaration(comment: str) -> tuple[bool, str | None]:
    """Whether a parameter's comment declares it secret, and the block it names.

    ``# secret``, ``# secret: the warehouse password`` (a help text) and
    ``# secret: warehouse-password`` (one word after the colon: a block's name).

    Example:
        >>> secret_declaration("secret: warehouse-password")
        (True, 'warehouse-password')
    """
    match = _DECLARED.match((comment or "").strip())
    if not match:
        return False, None
    rest = (match.group("rest") or "").strip()
    return True, rest if _BLOCK_NAME.match(rest) else None


def declared_secrets(nb: dict[str, Any]) -> dict[str, str | None]:
    """Names the ``parameters`` cell declares secret (``# secret``), with their block if named.

    Example:
        >>> declared_secrets(nb)  # password = ""  # secret: warehouse-password
        {'password': 'warehouse-password'}
    """
    source = parameters_cell_source(nb)
    found: dict[str, str | None] = {}
    for item in parse_parameters(source or "") or []:
        secret, block = secret_declaration(item.get("help") or "")
        if secret:
            found[item["name"]] = block
    return found


def refuse_plain_secrets(nb: dict[str, Any], parameters: dict[str, Any]) -> None:
    """Refuse a value sent for a name the notebook declares secret.

    Checked by ``nbjobs run`` before any flow run exists (the value would be stored in
    its parameters), and again by the run.

    Raises:
        SecretParameterError: Says how to send a Secret block's name instead.
    """
    for name in declared_secrets(nb):
        if name in parameters and secret_reference(parameters[name]) is None:
            raise SecretParameterError(
                f"parameter {name!r} is declared secret in the notebook: send the name of a "
                f"Secret block holding it, not the value (nbjobs run -s {name} BLOCK; over "
                f'HTTP "{name}": {{"$secret": "BLOCK"}})',
                parameter=name,
            )


def _text(value: Any) -> str:
    return "".join(value) if isinstance(value, list) else str(value or "")


def _leaves(value: Any) -> list[str]:
    """The strings a secret value holds (a Secret block may hold a JSON object)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [text for item in value.values() for text in _leaves(item)]
    if isinstance(value, list):
        return [text for item in value for text in _leaves(item)]
    return [str(value)] if value is not None else []


class RunSecrets:
    """The secret values of one run, and the real source of its injected cell.

    Its ``repr`` never shows a value. ``sources`` maps a cell's position in the staged
    notebook to the source the kernel runs instead of the masked one it shows.
    """

    def __init__(self, values: dict[str, Any], sources: dict[int, str] | None = None) -> None:
        self.values = values  # parameter name -> resolved value
        self.sources = sources or {}
        forms: set[str] = set()
        for value in values.values():
            texts = _leaves(value) + ([] if isinstance(value, str) else [json.dumps(value)])
            for text in texts:
                if len(text) < MIN_MASKED_CHARS:
                    continue
                forms |= {
                    text,
                    repr(text)[1:-1],
                    json.dumps(text)[1:-1],
                    html.escape(text),  # pandas' to_html, an f-string in HTML(...)
                    html.escape(text, quote=False),
                }
        # longest first: a value that contains another is masked whole
        self._forms = sorted(forms, key=len, reverse=True)
        self.unmasked = [
            name
            for name, value in values.items()
            if any(len(text) < MIN_MASKED_CHARS for text in _leaves(value))
        ]

    def __repr__(self) -> str:
        return f"RunSecrets({', '.join(sorted(self.values))})"

    def __bool__(self) -> bool:
        return bool(self.values)

    def mask(self, text: str) -> str:
        """``text`` with every form of every value replaced by ``MASK``."""
        for form in self._forms:
            if form in text:
                text = text.replace(form, MASK)
        return text

    def mask_value(self, value: Any) -> Any:
        """A JSON value with every string in it masked (keys too)."""
        if isinstance(value, str):
            return self.mask(value)
        if isinstance(value, list):
            return [self.mask_value(item) for item in value]
        if isinstance(value, dict):
            return {self.mask(str(k)): self.mask_value(v) for k, v in value.items()}
        return value

    def mask_cell(self, cell: NotebookNode) -> None:
        """Mask a cell's outputs in place (text of every kind; images are left as they are).

        Consecutive stream outputs of one name are joined first (as Jupyter shows them):
        output written by a subprocess arrives in pipe-sized pieces that may cut a value.
        """
        outputs = cell.get("outputs", [])
        joined: list[Any] = []
        for output in outputs:
            previous = joined[-1] if joined else None
            if (
                output.get("output_type") == "stream"
                and previous is not None
                and previous.get("output_type") == "stream"
                and previous.get("name") == output.get("name")
            ):
                previous["text"] = _text(previous.get("text")) + _text(output.get("text"))
                continue
            joined.append(output)
        if len(joined) != len(outputs):
            cell["outputs"] = joined
        for output in joined:
            if "text" in output:
                output["text"] = self.mask_value(output["text"])
            if "evalue" in output:
                output["evalue"] = self.mask(output["evalue"])
                output["traceback"] = self.mask_value(output.get("traceback", []))
            data = output.get("data")
            if isinstance(data, dict):
                for mime in list(data):
                    if _TEXT_MIME.match(mime):
                        data[mime] = self.mask_value(data[mime])

    def mask_notebook(self, nb: NotebookNode) -> None:
        """Mask every cell's outputs in place."""
        if not self._forms:
            return
        for cell in nb.cells:
            if cell.cell_type == "code":
                self.mask_cell(cell)

    def mask_file(self, path: Path) -> bool:
        """Mask a file in place, byte for byte; ``True`` if it held a value.

        Binary files are masked too where the value's UTF-8 bytes appear as they are.
        """
        if not self._forms or path.stat().st_size > MAX_MASKED_FILE_BYTES:
            return False
        data = path.read_bytes()
        masked = data
        for form in self._forms:  # bytes: a file in another encoding keeps ASCII values
            masked = masked.replace(form.encode(), MASK.encode())
        if masked == data:
            return False
        path.write_bytes(masked)
        return True

    def to_json(self) -> str:
        """What a Slurm job needs to run and mask (written 0600, deleted when read)."""
        return json.dumps(
            {"values": self.values, "sources": {str(k): v for k, v in self.sources.items()}}
        )

    @classmethod
    def from_json(cls, text: str) -> RunSecrets:
        """The secrets a Slurm job read from its folder (``to_json``'s document)."""
        data = json.loads(text)
        return cls(data["values"], {int(k): v for k, v in data["sources"].items()})


__all__ = [
    "MASK",
    "SECRET_KEY",
    "RunSecrets",
    "declared_secrets",
    "reference",
    "refuse_plain_secrets",
    "secret_reference",
]
