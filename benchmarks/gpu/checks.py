"""Two GPU checks of benchmarks/gpu/run.py: a two-process data-parallel smoke and a kill-and-resume.

``ddp``: two processes on ONE device (gloo carries CUDA tensors; NCCL refuses two ranks on one
GPU) train the tiny SAM for a few Alg. 1 iterations with :func:`medpipe.finetune.distributed.average_gradients`
and fused AdamW; every rank must end with the same weights.

``resume``: ``medpipe finetune`` on a generated miniature corpus (tests/finetune_fixtures.py) runs
straight through, and again killed by SIGKILL after iteration 3 and resumed; reports whether the
weights are bit-identical (promised on CPU; on CUDA only up to reduction order, docs/reliability.md)
and the largest difference.

    python benchmarks/gpu/checks.py ddp --device cuda --json ddp.json
    python benchmarks/gpu/checks.py resume --device cuda --json resume.json
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, device_name: str, iterations: int, batch: int,
                result_path: str) -> None:
    from medpipe.finetune import distributed as D
    from medpipe.finetune.objective import alg1_loss
    from medpipe.models.attention import set_fused_attention
    from medpipe.models.sam import build_sam

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    device = torch.device(device_name)
    ctx = D.Context(rank, world, 0, device)
    torch.manual_seed(0)
    sam = build_sam("tiny").to(device).train()
    set_fused_attention(sam, True)
    optimizer = torch.optim.AdamW(sam.parameters(), lr=1e-4, fused=device.type == "cuda")
    rng = np.random.default_rng([rank, 1])
    losses, start = [], time.perf_counter()
    for iteration in range(iterations):
        images = torch.from_numpy(rng.normal(size=(batch, 3, 256, 256)).astype(np.float32)).to(device)
        masks = torch.zeros(batch, 2, 128, 128, device=device)
        for b in range(batch):
            for k in range(2):
                y, x = rng.integers(0, 80, size=2)
                masks[b, k, y: y + 30, x: x + 40] = 1
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
            out = alg1_loss(sam, sam.image_encoder(images), masks,
                            [np.random.default_rng([rank, iteration, b]) for b in range(batch)],
                            use_box=iteration % 2 == 1, use_mask=True, n_steps=2, box_distortion=0.025)
        out["loss"].backward()
        D.average_gradients(list(sam.parameters()), ctx)
        optimizer.step()
        losses.append(float(out["loss"].detach()))
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    flat = torch.cat([p.detach().reshape(-1).float() for p in sam.parameters()])
    reference = flat.clone()
    dist.broadcast(reference, src=0)
    divergence = (flat - reference).abs().max().reshape(1)
    dist.all_reduce(divergence, op=dist.ReduceOp.MAX)
    if rank == 0:
        Path(result_path).write_text(json.dumps({
            "check": "ddp", "backend": "gloo", "ranks": world, "device": str(device), "iterations": iterations,
            "rank0_losses": losses, "seconds": round(seconds, 3), "max_rank_divergence": float(divergence),
            "ok": bool(divergence.item() == 0 and np.all(np.isfinite(losses))),
            "torch": torch.__version__,
            "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None}, indent=2))
    dist.barrier()
    dist.destroy_process_group()


def ddp_check(device: str, iterations: int, batch: int, json_path: Path) -> int:
    import torch.multiprocessing as mp

    mp.spawn(_ddp_worker, args=(2, _free_port(), device, iterations, batch, str(json_path)), nprocs=2, join=True)
    result = json.loads(json_path.read_text())
    print(json.dumps(result, indent=2))
    return 0 if result["ok"] else 1


def _finetune(config, table, stores, out_dir, *extra) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "medpipe", "finetune", "t", "--config", str(config), "--corpus", str(table),
           "--stores", *map(str, stores), "--out-dir", str(out_dir), *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


def resume_check(device: str, json_path: Path) -> int:
    sys.path.insert(0, str(ROOT / "tests"))
    from finetune_fixtures import TINY_RUN, make_corpus, write_config

    if device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # the trainer takes the GPU whenever there is one
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        table, stores = make_corpus(tmp)
        config = write_config(tmp, {"t": TINY_RUN})
        start = time.perf_counter()
        straight = _finetune(config, table, stores, tmp / "straight")
        killed = _finetune(config, table, stores, tmp / "resumed", "--die-after", "3")
        resumed = _finetune(config, table, stores, tmp / "resumed")
        seconds = time.perf_counter() - start
        result = {"check": "resume", "device": device, "straight_rc": straight.returncode,
                  "killed_rc": killed.returncode, "resumed_rc": resumed.returncode, "seconds": round(seconds, 1),
                  "torch": torch.__version__}
        if straight.returncode == 0 and resumed.returncode == 0 and killed.returncode == -signal.SIGKILL:
            a = torch.load(tmp / "straight" / "latest.pt", weights_only=True, map_location="cpu")
            b = torch.load(tmp / "resumed" / "latest.pt", weights_only=True, map_location="cpu")
            diffs = {k: float((v.float() - b["model_state"][k].float()).abs().max())
                     for k, v in a["model_state"].items() if v.is_floating_point()}
            result.update(iterations=[a["iteration"], b["iteration"]],
                          bit_identical=all(torch.equal(v, b["model_state"][k]) for k, v in a["model_state"].items()),
                          max_abs_weight_difference=max(diffs.values()),
                          worst_tensor=max(diffs, key=diffs.get), ok=True)
        else:
            result.update(ok=False, stderr=(straight.stderr + killed.stderr + resumed.stderr)[-3000:])
    json_path.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 0 if result["ok"] else 1


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("check", choices=["ddp", "resume"])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--batch", type=int, default=2, help="ddp: images per rank")
    parser.add_argument("--json", required=True)
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda asked for, but torch sees no CUDA device")
    if args.check == "ddp":
        return ddp_check(args.device, args.iterations, args.batch, Path(args.json))
    return resume_check(args.device, Path(args.json))


if __name__ == "__main__":
    raise SystemExit(main())
