"""One edge on many cores: worker processes under a supervisor (``relay edge --workers``).

A floor below ``relay/edge/``: nothing here imports the edge. ``claims`` is the
supervisor's table of who holds which endpoint; ``channel`` carries its messages;
``handoff`` passes a visitor's socket between workers; ``supervisor`` runs the workers.
"""
