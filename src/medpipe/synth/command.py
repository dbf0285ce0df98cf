"""Command line of ``medpipe synth``: generate one demo raw dataset."""

from __future__ import annotations

import argparse

from medpipe.synth.generate import KINDS, generate_dataset


def add_synth_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kind", required=True, choices=sorted([*KINDS, "sa_med2d"]),
                        help="modality kind to generate (sa_med2d: a corpus in SA-Med2D's layout, zipped)")
    parser.add_argument("--out", required=True, help="output folder (gets images/, labels/, manifest.json)")
    parser.add_argument("--seed", type=int, default=0, help="base seed; same seed and arguments give identical files")
    parser.add_argument("--patients", type=int, default=4, help="number of patients (p000, p001, ...)")
    parser.add_argument("--images-per-patient", type=int, default=3, help="images (2D) or volumes (3D) per patient")
    parser.add_argument(
        "--size",
        type=int,
        nargs="+",
        metavar="N",
        help="Y X for 2D kinds, Z Y X for 3D kinds (default: 128 128; ct 24 96 96; mri 20 96 96)",
    )


def run_synth(args: argparse.Namespace) -> int:
    if args.kind == "sa_med2d":  # the finetuning corpus as distributed: <out>/data.zip
        from medpipe.synth.sa_med2d import write_corpus

        write_corpus(args.out, args.patients * args.images_per_patient, seed=args.seed,
                     largest=(args.size or [96])[0], per_case=args.images_per_patient)
        return 0
    generate_dataset(args.out, args.kind, args.seed, args.patients, args.images_per_patient, args.size)
    return 0
