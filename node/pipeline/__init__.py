"""On-arrival work: actions.py (the registry of actions), worker.py (the process that runs them)."""
