"""A real single-node SLURM cluster on loopback, for tests of the SLURM executor path.

Why a real one: the profile, the executor plugin and the workflow's resource declarations only
meet at `sbatch`/`srun`; mocks would not catch a rejected GPU request or a job that never ends.

The fixture installs Debian's `slurmctld slurmd slurm-client munge` when missing, writes
slurm.conf / gres.conf / cgroup.conf into a temporary folder (node `localhost` on 127.0.0.1, two
partitions `cpu` and `gpu`, eight fake A100s declared as GRES whose `File=` entries are symlinks
to /dev/null: file-less GRES counts are not scheduled), starts munged, slurmctld and slurmd in the
foreground as child processes and stops them by their process ids afterwards.

Facts this encodes:
- without slurmdbd the executor plugin must poll with `squeue`; squeue forgets finished jobs after
  `MinJobAge`, which must be >= 3 x the plugin's first status-check delay (we use 300 s vs 2 s);
- the slurm-jobstep plugin drops `SLURM_CONF` inside jobs, so the config must also be reachable
  at /etc/slurm/slurm.conf (a symlink); it is removed at teardown, or every later snakemake call
  waits 10 s on `scontrol`.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from debian import ensure_debian_packages

log = logging.getLogger(__name__)

SYSTEM_CONF = Path("/etc/slurm/slurm.conf")
PACKAGES = ["slurmctld", "slurmd", "slurm-client", "munge"]
BINARIES = ["munged", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "scancel", "sinfo"]
N_GPUS = 8
NODE_CPUS = 16  # more than the machine has (config_overrides): several small jobs may run together
NODE_MEM_MB = 64000


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ensure_installed() -> None:
    """Install the Debian SLURM packages once; skip the test when that is impossible."""
    ensure_debian_packages(PACKAGES, BINARIES)


def _release_system_conf() -> None:
    """Remove a stale /etc/slurm/slurm.conf symlink left by a crashed earlier run."""
    if SYSTEM_CONF.is_symlink():
        target = Path(os.readlink(SYSTEM_CONF))
        pid_file = target.parent / "slurmctld.pid"
        alive = False
        if target.exists() and pid_file.exists():
            try:
                os.kill(int(pid_file.read_text().strip()), 0)
                alive = True
            except (ValueError, ProcessLookupError, PermissionError):
                alive = False
        if alive:
            pytest.skip(f"another test SLURM cluster owns {SYSTEM_CONF} (-> {target})")
        SYSTEM_CONF.unlink()
    elif SYSTEM_CONF.exists():
        pytest.skip(f"{SYSTEM_CONF} is a real SLURM config; refusing to replace it")


@dataclass
class LocalSlurm:
    """Paths, environment and helpers of the running test cluster."""

    root: Path
    env: dict = field(default_factory=dict)
    processes: list = field(default_factory=list)

    @property
    def conf(self) -> Path:
        return self.root / "slurm.conf"

    def run(self, *command: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
        result = subprocess.run(command, capture_output=True, text=True, env=self.env, timeout=timeout)
        if check and result.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed ({result.returncode}): {result.stderr}\n{self.logs()}")
        return result

    def logs(self) -> str:
        """Tails of the daemon logs, for assertion messages."""
        parts = []
        for name in ("slurmctld.log", "slurmd.log", "munged.log"):
            path = self.root / name
            if path.exists():
                parts.append(f"--- {name}\n" + "\n".join(path.read_text(errors="replace").splitlines()[-30:]))
        return "\n".join(parts)

    def jobs(self) -> list[dict]:
        """Every job slurmctld still remembers (finished ones for MinJobAge seconds)."""
        fmt = "%i|%j|%T|%P|%b|%C|%m|%k"
        out = self.run("squeue", "-h", "-t", "all", "-o", fmt).stdout
        keys = ["id", "name", "state", "partition", "gres", "cpus", "mem", "comment"]
        return [dict(zip(keys, line.split("|"))) for line in out.splitlines() if line.strip()]

    def job_info(self, job_id: str) -> str:
        return self.run("scontrol", "show", "job", "-d", str(job_id)).stdout

    def wait(self, predicate, timeout: float, what: str, interval: float = 0.5):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(interval)
        raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}\n{self.logs()}")


def write_configs(root: Path) -> dict:
    """slurm.conf, gres.conf, cgroup.conf, munge key and fake GPU devices under `root`."""
    for sub in ("state", "spool", "munge", "devices"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    os.chmod(root / "munge", 0o700)
    key = root / "munge" / "munge.key"
    key.write_bytes(os.urandom(1024))
    os.chmod(key, 0o600)
    devices = []
    for i in range(N_GPUS):
        device = root / "devices" / f"nvidia{i}"
        device.symlink_to("/dev/null")
        devices.append(device)
    socket_path = root / "munge" / "munge.socket.2"
    ports = {"ctld": _free_port(), "slurmd": _free_port()}
    (root / "slurm.conf").write_text(
        f"""# generated by tests/slurm/cluster.py: one node on loopback, fake A100s
ClusterName=medpipetest
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={ports['ctld']}
SlurmdPort={ports['slurmd']}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={socket_path}
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
GresTypes=gpu
MinJobAge=300
ReturnToService=2
KillWait=5
SlurmdParameters=config_overrides
NodeName=localhost NodeAddr=127.0.0.1 CPUs={NODE_CPUS} RealMemory={NODE_MEM_MB} Gres=gpu:a100:{N_GPUS} State=UNKNOWN
PartitionName=cpu Nodes=localhost Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=localhost MaxTime=INFINITE State=UP
"""
    )
    (root / "gres.conf").write_text(
        "".join(f"NodeName=localhost Name=gpu Type=a100 File={d}\n" for d in devices)
    )
    (root / "cgroup.conf").write_text(
        "# no cgroups in the test container: task/none, proctrack/linuxproc\n"
        "CgroupPlugin=autodetect\nConstrainDevices=no\nConstrainCores=no\nConstrainRAMSpace=no\n"
    )
    return {"socket": socket_path, "key": key}


def start_cluster(root: Path) -> LocalSlurm:
    ensure_installed()
    _release_system_conf()
    paths = write_configs(root)
    env = {**os.environ, "SLURM_CONF": str(root / "slurm.conf")}
    for var in [v for v in env if v.startswith("SLURM_") and v != "SLURM_CONF"]:
        env.pop(var)  # a test run inside a SLURM job must not leak its job into ours
    cluster = LocalSlurm(root=root, env=env)
    sbin = "/usr/sbin"
    munged = [
        f"{sbin}/munged", "-F", "-f", f"--socket={paths['socket']}", f"--key-file={paths['key']}",
        f"--pid-file={root}/munge/munged.pid", f"--log-file={root}/munged.log",
        f"--seed-file={root}/munge/munged.seed",
    ]
    try:
        cluster.processes.append(subprocess.Popen(munged, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT))
        cluster.wait(paths["socket"].exists, 20, "munged socket")
        SYSTEM_CONF.parent.mkdir(parents=True, exist_ok=True)
        SYSTEM_CONF.symlink_to(cluster.conf)
        for daemon in ([f"{sbin}/slurmctld", "-D", "-i", "-f", str(cluster.conf)],
                       [f"{sbin}/slurmd", "-D", "-N", "localhost", "-f", str(cluster.conf)]):
            with open(root / f"{Path(daemon[0]).name}.stdout", "w") as out:
                cluster.processes.append(subprocess.Popen(daemon, env=env, stdout=out, stderr=subprocess.STDOUT))

        def node_idle():
            result = cluster.run("sinfo", "-h", "-N", "-o", "%T", check=False)
            return result.returncode == 0 and result.stdout.split() and all(
                s.rstrip("*") in ("idle", "mixed", "allocated") for s in result.stdout.split())

        cluster.wait(node_idle, 60, "the node to become idle")
        log.info("test SLURM cluster up in %s (slurmctld port from %s)", root, cluster.conf)
    except BaseException:
        stop_cluster(cluster)
        raise
    return cluster


def stop_cluster(cluster: LocalSlurm) -> None:
    """Cancel leftover jobs, stop the daemons we started (by pid) and release /etc/slurm/slurm.conf."""
    if any(p.poll() is None for p in cluster.processes[1:]):
        subprocess.run(["scancel", "--full", "-u", "root"], env=cluster.env, capture_output=True, timeout=30)
    for process in reversed(cluster.processes):
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
    cluster.processes.clear()
    log.info("test SLURM cluster in %s stopped", cluster.root)
    if SYSTEM_CONF.is_symlink() and Path(os.readlink(SYSTEM_CONF)) == cluster.conf:
        SYSTEM_CONF.unlink()


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """A running single-node SLURM cluster; stopped, and /etc/slurm/slurm.conf removed, afterwards."""
    cluster = start_cluster(tmp_path_factory.mktemp("slurm"))
    try:
        yield cluster
    finally:
        stop_cluster(cluster)
