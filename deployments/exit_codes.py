"""The exit codes of ``nbjobs``, one list for every way a command can end."""

EXIT_OK = 0  # the notebook ran to the end
EXIT_NOTEBOOK_FAILED = 1  # it raised, timed out or killed its kernel (partial notebook stored)
EXIT_BAD_INPUT = 2  # refused before any kernel started
EXIT_STORE_FAILED = 3  # the artefact store failed (the artefacts are in the spill folder)
EXIT_SERVER_FAILED = 4  # ours: the Prefect server, its worker, Slurm, an unexpected error
EXIT_INTERRUPTED = 130  # Ctrl-C: 128 + SIGINT, as shells report it
EXIT_BROKEN_PIPE = 141  # stdout closed early (`| head`): 128 + SIGPIPE, as shells report it
