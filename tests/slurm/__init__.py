"""A throwaway single-node SLURM cluster for the test suite (see `cluster.py`)."""
