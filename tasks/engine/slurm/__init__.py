"""Where Slurm is spoken to, from the submitting machine and on the node.

- ``script.py``: the batch script a run's job is submitted with;
- ``commands.py``: sbatch, sacct, squeue, scontrol and scancel, and what they print;
- ``watch.py``: following a submitted job, cancelling it, collecting what it left;
- ``job.py``: the job itself on a node (``python -m notebook_jobs.tasks.engine.slurm.job``).

What a cluster is (partition, limits, container) is the ``SlurmCluster`` block in
``blocks/slurm.py``; ``tasks/slurm_executor.py``'s ``SlurmExecutor`` puts these together.
"""
