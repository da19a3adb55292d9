"""Where a run is stored: its artefacts in the store, or spilled to local disk.

- ``artefacts.py``: the notebooks, the files the notebook wrote, job logs and
  ``result.json``, uploaded on every outcome, failures included;
- ``spill.py``: when the store does not answer, the run folder is kept locally and
  uploaded later by ``nbjobs retry-uploads``.

What a store is (a local folder or S3-compatible storage) is ``blocks/store.py``; how
a run folder is laid out, and its key in the store, is ``tasks/engine/layout.py``.
"""
