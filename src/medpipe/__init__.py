"""medpipe: the MedicoSAM study as a Snakemake pipeline."""

__version__ = "0.1.0"
