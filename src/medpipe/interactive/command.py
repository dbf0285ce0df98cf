"""Command lines of the interactive stage: ``medpipe embed``, ``eval2d``, ``eval3d`` and ``eval3d-sam2``.

``embed`` fills the model's embedding cache with every image the evaluation of the dataset will
use, once; ``eval2d`` (one or more settings) and ``eval3d`` (one or more first-slice prompts) then
only run prompt encoder and mask decoder on it, so the pipeline can give every setting a job of its
own without encoding anything twice. All read the validated config snapshot, the dataset store
and its split table, and write tidy TSV tables atomically.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
import torch
from tqdm import tqdm

from medpipe.config import ConfigError, load_config
from medpipe.files import write_tsv
from medpipe.interactive import eval2d, grid
from medpipe.interactive.embeddings import EmbeddingCache, case_embeddings
from medpipe.interactive.predictor import BatchedPredictor
from medpipe.models.device import pick_device
from medpipe.models.sam import encoder_digest, load_model
from medpipe.models.specs import model_specs
from medpipe.splits import SplitError, split_case_ids
from medpipe.store import DatasetStore
from medpipe.tables import GRID

log = logging.getLogger(__name__)


def _common(parser) -> None:
    parser.add_argument("--config", required=True, help="validated config snapshot (YAML)")
    parser.add_argument("--model", required=True, help="model name (a key of `models` or `finetune.runs`)")
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--store", required=True, help="the dataset's zarr store")
    parser.add_argument("--splits", required=True, help="the dataset's split table (TSV)")
    parser.add_argument("--cache", required=True, help="embedding cache folder (zarr) of this model and dataset")
    parser.add_argument("--device", default="auto", help="cuda, cpu or auto (cuda when present)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")


def _setup(args):
    config = load_config(args.config)
    if args.threads:
        torch.set_num_threads(args.threads)
    specs = model_specs(config)
    if args.model not in specs:
        raise ConfigError(f"{args.config}: model {args.model!r} is not configured (known: {sorted(specs)})")
    spec, seed = specs[args.model], int(config["seed"])
    device = pick_device(args.device)
    sam = load_model(spec, seed, device)
    predictor = BatchedPredictor(sam, device, config["interactive"]["max_objects_per_call"])
    # keyed by the encoder's weights, so a finetune run with a frozen encoder can read its base's cache
    cache = EmbeddingCache(args.cache, spec.name, f"encoder-sha256:{encoder_digest(sam)}", predictor.img_size,
                           config["interactive"]["preprocess"])
    return config, predictor, cache, DatasetStore(args.store)


def add_embed_arguments(parser) -> None:
    _common(parser)


def run_embed(args) -> int:
    """Encode what the dataset's interactive roles will read: 3D val + test volumes, 2D images / slices."""
    config, predictor, cache, store = _setup(args)
    section = config["interactive"]
    if args.dataset not in config["datasets"]:
        raise ConfigError(f"{args.config}: dataset {args.dataset!r} is not configured")
    roles = config["datasets"][args.dataset].get("roles", [])
    if "interactive3d" in roles:
        volumes = split_case_ids(args.splits, args.dataset, "val") + split_case_ids(args.splits, args.dataset, "test")
        for case_id in tqdm(volumes, desc=f"embed {args.model}/{args.dataset} volumes", unit="volume"):
            case_embeddings(cache, predictor, store, case_id)
    n_images = 0
    if "interactive2d" in roles:
        for case_id in tqdm(split_case_ids(args.splits, args.dataset, section["split2d"]),
                            desc=f"embed {args.model}/{args.dataset} images", unit="case"):
            # drawing each image from the generator encodes it, or finds it in the cache
            n_images += sum(1 for _ in eval2d.images_of_case(predictor, cache, store, case_id,
                                                             section["min_object_px"]))
    log.info("%s: %d 2D images, %d encoder passes", cache.path, n_images, cache.computed)
    return 0


def add_eval2d_arguments(parser) -> None:
    _common(parser)
    parser.add_argument("--start", nargs="+", choices=eval2d.STARTS, help="override interactive.starts")
    parser.add_argument("--masks", nargs="+", choices=eval2d.MASKS, help="override interactive.masks")
    parser.add_argument("--out", required=True, help="per-image-and-class union Dice table (TSV; the paper's numbers)")
    parser.add_argument("--out-objects", required=True, help="per-object Dice table (TSV; for NoC)")


def run_eval2d(args) -> int:
    config, predictor, cache, store = _setup(args)
    section = config["interactive"]
    cases = split_case_ids(args.splits, args.dataset, section["split2d"])
    if not cases:
        raise SplitError(f"{args.splits}: dataset {args.dataset} has no {section['split2d']!r} cases")
    union, objects = eval2d.evaluate_dataset(
        predictor, cache, store, cases, args.model,
        starts=args.start or section["starts"], masks_settings=args.masks or section["masks"],
        seeds=section["seeds"], n_iterations=section["n_iterations"], min_object_px=section["min_object_px"],
    )
    write_tsv(union, args.out)
    write_tsv(objects, args.out_objects)
    log.info("%s: %d rows (%d per object), %d cases, %d encoder passes", args.out, len(union), len(objects),
             len(cases), cache.computed)
    return 0


def add_eval3d_arguments(parser) -> None:
    _common(parser)
    parser.add_argument("--out-dir", required=True, help="folder for grid.tsv, selected.tsv, test.tsv, oracle.tsv")
    parser.add_argument("--iou-thresholds", nargs="+", type=float, help="override the grid (e.g. one grid point)")
    parser.add_argument("--projections", nargs="+", help="override the grid")
    parser.add_argument("--box-extensions", nargs="+", type=float, help="override the grid")
    parser.add_argument("--grid-only", action="store_true", help="only evaluate the grid on validation volumes")
    parser.add_argument("--starts", nargs="+", choices=grid.STARTS_3D, help="override interactive.starts3d")


def run_eval3d(args) -> int:
    config, predictor, cache, store = _setup(args)
    section = config["interactive"]["grid3d"]
    points = grid.make_grid(args.iou_thresholds or section["iou_thresholds"],
                            args.projections or section["projections"],
                            args.box_extensions or section["box_extensions"])
    starts, seeds = args.starts or config["interactive"]["starts3d"], config["interactive"]["seeds"]
    settings = grid.Settings3D.from_config(config, args.dataset)
    out = Path(args.out_dir)
    val_cases = split_case_ids(args.splits, args.dataset, "val")
    test_cases = split_case_ids(args.splits, args.dataset, "test")
    if not val_cases:
        raise SplitError(f"{args.splits}: dataset {args.dataset} has no validation volumes for the 3D grid search")
    with_oracle = section["oracle"] and not args.grid_only
    frames = [grid.evaluate_split(predictor, cache, store, val_cases, "val", points, starts, seeds, args.model,
                                  settings)]
    if with_oracle:
        frames.append(grid.evaluate_split(predictor, cache, store, test_cases, "test", points, starts, seeds,
                                          args.model, settings))
    table = pd.concat(frames, ignore_index=True)
    write_tsv(table, out / "grid.tsv")
    if args.grid_only:
        return 0
    chosen = grid.select_setting(table[table["split"] == "val"])
    chosen.insert(0, "model", args.model)
    chosen.insert(1, "dataset", args.dataset)
    if with_oracle:
        test = table[table["split"] == "test"]
    else:  # only the chosen settings run on the test volumes
        test = pd.concat([
            grid.evaluate_split(predictor, cache, store, test_cases, "test",
                                grid.make_grid([r.iou_threshold], [r.projection], [r.box_extension]), [r.start], seeds,
                                args.model, settings)
            for r in chosen.itertuples()], ignore_index=True)
    write_tsv(chosen, out / "selected.tsv")
    write_tsv(grid.apply_selection(test, chosen), out / "test.tsv")
    oracle = (grid.oracle(test, settings.redraw) if with_oracle
              else test.iloc[:0].assign(result=grid.ORACLE_LABEL_REDRAWN if settings.redraw else grid.ORACLE_LABEL))
    write_tsv(oracle, out / "oracle.tsv")
    log.info("3D %s/%s: chose %s; %d encoder passes", args.model, args.dataset,
             chosen[["start", *GRID]].to_dict("records"), cache.computed)
    return 0


def add_eval3d_sam2_arguments(parser) -> None:
    parser.add_argument("--config", required=True, help="validated config snapshot (YAML)")
    parser.add_argument("--model", required=True, help="name of the SAM2 model (a key of `interactive.sam2`)")
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--store", required=True, help="the dataset's zarr store")
    parser.add_argument("--splits", required=True, help="the dataset's split table (TSV)")
    parser.add_argument("--out", required=True, help="result table (TSV)")
    parser.add_argument("--device", default="auto", help="cuda, cpu or auto (cuda when present)")


def run_eval3d_sam2(args) -> int:
    from medpipe.interactive.sam2_baseline import build_video_predictor, evaluate_split

    config = load_config(args.config)
    section = config["interactive"]
    models = section["sam2"]
    if args.model not in models:
        raise ConfigError(f"{args.config}: SAM2 model {args.model!r} is not in interactive.sam2 ({sorted(models)})")
    spec = models[args.model]
    predictor = build_video_predictor(spec["config"], spec.get("checkpoint"), pick_device(args.device),
                                      config["seed"], section["trusted_sam2_configs"])
    table = evaluate_split(predictor, DatasetStore(args.store), split_case_ids(args.splits, args.dataset, "test"),
                           "test", section["starts3d"], section["seeds"], args.model,
                           grid.Settings3D.from_config(config, args.dataset), section["preprocess"])
    write_tsv(table, args.out)
    log.info("SAM2 %s/%s: %d rows, mean Dice %.3f", args.model, args.dataset, len(table), table["dice"].mean())
    return 0
