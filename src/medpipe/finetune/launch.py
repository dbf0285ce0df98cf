"""Multi-node finetuning: one launcher per node of a SLURM allocation, ``torchrun`` rendezvous on the first.

The finetune rule of a job with ``nodes: N > 1`` runs ``srun --nodes=N --ntasks-per-node=1
python -m medpipe.finetune.launch --nproc-per-node G -- finetune RUN ...``. Each of the N tasks (one
per node) execs ``torchrun --nnodes=N --nproc-per-node=G`` with c10d rendezvous at the allocation's
first node (``SLURM_JOB_NODELIST``) and the SLURM job id as the rendezvous id, so the N x G
processes form one process group (NCCL on GPUs). The global batch and with it the experiment do not
depend on N or G (:mod:`medpipe.finetune.batching`).

Site-specific NCCL settings go into the environment of the job (the profile's ``envvars`` or the
site's module), never into the code: e.g. ``NCCL_SOCKET_IFNAME`` (the interface of the nodes'
fast network, e.g. ``ib0``), ``NCCL_IB_HCA`` (which InfiniBand adapters), ``NCCL_DEBUG=INFO`` to
see the chosen transport in the job log (README "Multi-node finetuning").
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys

DEFAULT_PORT = 29500


def first_host(nodelist: str) -> str:
    """The first host of a SLURM node list (``scontrol show hostnames`` expands ``gpu[01-04]``)."""
    if "[" not in nodelist:
        return nodelist.split(",")[0]
    if not shutil.which("scontrol"):
        raise SystemExit(f"medpipe launch: cannot expand the node list {nodelist!r} without scontrol")
    result = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, check=True,
                            timeout=60)
    return result.stdout.split()[0]


def torchrun_argv(env, nproc_per_node: int, command: list[str], port: int = DEFAULT_PORT) -> list[str]:
    """The ``torchrun`` command of this node, from SLURM's variables of the allocation."""
    missing = [key for key in ("SLURM_JOB_ID", "SLURM_NNODES", "SLURM_JOB_NODELIST") if key not in env]
    if missing:
        raise SystemExit(f"medpipe launch: not inside a SLURM allocation ({', '.join(missing)} unset); "
                         "run it under srun --ntasks-per-node=1, or use torchrun --standalone on one node")
    nodes = int(env["SLURM_NNODES"])
    return [sys.executable, "-m", "torch.distributed.run", f"--nnodes={nodes}", f"--nproc-per-node={nproc_per_node}",
            "--rdzv-backend=c10d", f"--rdzv-endpoint={first_host(env['SLURM_JOB_NODELIST'])}:{port}",
            f"--rdzv-id=medpipe-{env['SLURM_JOB_ID']}", "--max-restarts=0", "-m", "medpipe", *command]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m medpipe.finetune.launch", description=__doc__.splitlines()[0])
    parser.add_argument("--nproc-per-node", type=int, required=True, help="processes (GPUs) per node")
    parser.add_argument("--port", type=int, default=int(os.environ.get("MEDPIPE_RDZV_PORT", DEFAULT_PORT)),
                        help="rendezvous port on the first node (env MEDPIPE_RDZV_PORT)")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- finetune RUN ... (the medpipe command)")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    argv = torchrun_argv(os.environ, args.nproc_per_node, command, args.port)
    print("medpipe launch:", " ".join(argv), file=sys.stderr, flush=True)
    os.execv(argv[0], argv)
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
