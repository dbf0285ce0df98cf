"""Data stage: raw files -> zarr dataset stores (``ingest``) -> split tables (``medpipe.splits``).

``command`` holds the ``medpipe ingest`` / ``split`` / ``split-corpus`` command lines; generating
the demo's raw files is ``medpipe.synth``.
"""
