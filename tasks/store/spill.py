"""When the store does not answer: keep a run's artefacts on local disk, upload them later.

``spill_run`` moves the run folder into the spill folder with a manifest of where it
was going; ``nbjobs retry-uploads`` calls ``retry_spilled_uploads``.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel

from notebook_jobs.blocks.keys import safe_key
from notebook_jobs.tasks.engine.layout import (
    MAIN_ARTEFACTS,
    RESULT_NAME,
    SPILL_MANIFEST,
    spill_root,
)
from notebook_jobs.tasks.models import Artefacts, NotebookResult
from notebook_jobs.tasks.store.artefacts import (
    RunFolder,
    artefacts_from,
    display_files,
    displays_from,
    result_document,
    upload_run_folder,
)


class SpillManifest(BaseModel):
    """``spill.json``: where a spilled run's artefacts go once the store answers."""

    store: str
    prefix: str
    files: list[str]
    workdir: str
    logs: dict[str, str]
    reason: str

    def folder(self, path: Path) -> RunFolder:
        """The spilled run's folder at ``path``, with the job logs kept in it."""
        return RunFolder(
            path=path,
            prefix=self.prefix,
            files=tuple(self.files),
            workdir_name=self.workdir,
            logs={name: Path(kept) for name, kept in self.logs.items()},
        )


def spill_run(folder: RunFolder, *, store_spec: str, reason: str) -> tuple[Path, Artefacts]:
    """Keep a run's artefacts in the local spill folder until ``nbjobs retry-uploads``.

    Args:
        folder: The run's folder; it is moved, and its job logs copied, into the spill
            folder.
        store_spec: The store it was going to (``open_store``'s spec).
        reason: Why it could not go there, kept in the manifest.

    Returns:
        The spill folder and the artefacts' local locations (for the result).
    """
    import shutil

    target = spill_root() / folder.prefix.replace("/", "__")
    target.parent.mkdir(parents=True, exist_ok=True)
    if folder.path.resolve() != target.resolve():
        shutil.rmtree(target, ignore_errors=True)
        shutil.move(str(folder.path), str(target))
    kept_logs: dict[str, str] = {}
    for name, path in folder.logs.items():
        if path.is_file():
            copy = target / "logs" / name
            copy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, copy)
            kept_logs[name] = str(copy)
    manifest = SpillManifest(
        store=store_spec,
        prefix=folder.prefix,
        files=list(folder.files),
        workdir=folder.workdir_name,
        logs=kept_logs,
        reason=reason,
    )
    (target / SPILL_MANIFEST).write_text(manifest.model_dump_json(indent=2))
    spilled = manifest.folder(target)
    located = [
        (what, str(target / name), str(target / name))
        for what, name in MAIN_ARTEFACTS.items()
        if (target / name).exists()
    ]
    located += [
        (f"files:{f}", str(spilled.workdir / f), str(spilled.workdir / f)) for f in spilled.files
    ]
    located += [(f"logs:{name}", "", path) for name, path in kept_logs.items()]
    located += [(f"displays:{p.name}", str(p), str(p)) for p in display_files(target)]
    result = target / RESULT_NAME
    artefacts = artefacts_from(
        located,
        prefix=str(target),
        result=(str(result), result.as_uri()),
        link=lambda path: Path(path).as_uri(),
    )
    artefacts.displays = displays_from(target, located, lambda path: Path(path).as_uri())
    return target, artefacts


def retry_spilled_uploads() -> list[tuple[Path, str | None]]:
    """Upload every spilled run to its store; return each folder and its error (or None).

    A run that uploads is removed from the spill folder, and its ``result.json`` in the
    store names the store's locations.
    """
    import shutil

    from notebook_jobs.blocks.store import open_store

    outcomes: list[tuple[Path, str | None]] = []
    root = spill_root()
    for folder in sorted(root.glob("*")) if root.exists() else []:
        manifest_path = folder / SPILL_MANIFEST
        if not manifest_path.exists():
            continue
        try:
            manifest = SpillManifest.model_validate_json(manifest_path.read_text())
            store = open_store(manifest.store)
            artefacts = upload_run_folder(store, manifest.folder(folder))
            spilled = NotebookResult.model_validate_json((folder / RESULT_NAME).read_text())
            notes = [note for note in spilled.notes if "spill" not in note]
            result = spilled.model_copy(
                update={
                    "artefacts": artefacts,
                    "notes": [*notes, "artefacts uploaded later by nbjobs retry-uploads"],
                }
            )
            store.put_bytes(safe_key(manifest.prefix, RESULT_NAME), result_document(result))
        except Exception as error:  # keep it spilled; report and go on with the others
            outcomes.append((folder, f"{type(error).__name__}: {error}"))
            continue
        shutil.rmtree(folder, ignore_errors=True)
        outcomes.append((folder, None))
    return outcomes
