"""Command line of the finetune stage: ``medpipe finetune`` runs (or resumes) one configured run.

Launch it plainly (``medpipe finetune RUN ...``) for one process, or as
``torchrun --standalone --nproc_per_node=K -m medpipe finetune RUN --device cuda ...``
for K data-parallel processes (one per GPU; without ``--device cuda``, gloo processes on CPU).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
from pathlib import Path

from medpipe.config import load_config
from medpipe.run_settings import SettingsError, resolve_run
from medpipe.runlock import run_lock
from medpipe.store import DatasetStore

log = logging.getLogger(__name__)


def add_finetune_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="validated study config (YAML)")
    # positional: torchrun would take an option named --run for an abbreviation of its --run-path
    parser.add_argument("run", help="name of the run under finetune.runs")
    parser.add_argument("--corpus", required=True, help="corpus split table (corpus.tsv)")
    parser.add_argument("--stores", nargs="+", required=True, help="zarr stores of the corpus datasets")
    parser.add_argument("--out-dir", required=True, help="training folder (checkpoints, metrics)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="override knobs of this run (YAML values), e.g. iterations=10")
    parser.add_argument("--embedding-cache", default=None,
                        help="folder for a frozen image encoder's embeddings, shared by runs on the same encoder "
                             "(default: <results_dir>/finetune_embeddings; size: finetune.embedding_cache_gb)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="cuda: one GPU per process (NCCL), refused without a usable GPU; cpu: gloo processes")
    parser.add_argument("--die-after", type=int, default=None, help=argparse.SUPPRESS)  # fault injection (tests)


def store_map(paths) -> dict[str, str]:
    """Dataset name -> store path, read from each store's own metadata."""
    return {DatasetStore(path).name: str(path) for path in paths}


def run_finetune(args) -> int:
    import yaml

    from medpipe.finetune.finite import NonFiniteError
    from medpipe.finetune.trainer import train

    config = load_config(args.config)
    settings = resolve_run(config, args.run)
    for item in args.set:
        key, _, value = item.partition("=")
        if key not in settings:
            raise SettingsError(f"--set {item}: unknown knob {key!r}")
        settings = settings.replace(**{key: yaml.safe_load(value)})
    cache = args.embedding_cache or Path(config["results_dir"]) / "finetune_embeddings"
    # one trainer per run folder: rank 0 holds the lock (torchrun stops the other ranks when it exits)
    lock = run_lock(args.out_dir) if int(os.environ.get("RANK", "0")) == 0 else contextlib.nullcontext()
    try:
        with lock:
            summary = train(settings, args.corpus, store_map(args.stores), args.out_dir, int(config["seed"]),
                            die_after=args.die_after, embedding_cache=cache, device=args.device,
                            embedding_cache_bytes=float(config["finetune"]["embedding_cache_gb"]) * 1e9,
                            process_group_timeout_s=float(config["finetune"]["process_group_timeout_s"]))
    except NonFiniteError as exc:  # the run diverged (exit 1): its checkpoints keep the last good weights
        raise NonFiniteError(f"{args.out_dir}: {exc}") from exc
    if summary:
        log.info("finetune run %s done: best validation metric %s", summary["run"], summary["best_metric"])
    return 0
