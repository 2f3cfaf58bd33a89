"""A throwaway one-node SLURM cluster on this machine, for tests/test_slurm.py.

    python tests/slurm_cluster.py start     # install (apt) if missing, configure, start, wait until idle
    python tests/slurm_cluster.py status    # what runs, sinfo
    python tests/slurm_cluster.py stop      # cancel its jobs, stop exactly the daemons `start` started
    python tests/slurm_cluster.py profile DIR   # write the test profile (profiles/slurm adapted) to DIR

Debian's `slurmctld`, `slurmd`, `slurm-client` and `munge` packages (installed with apt-get when
missing; needs root). One node named after this host's short hostname, on loopback, with all its
CPUs and most of its memory, two partitions on it (`cpu`, the default, and `gpu`: no GPUs and no
gres, so jobs must not ask for any), consumable cores and memory, no accounting (no slurmdbd: `sacct`
does not work, the Snakemake plugin must poll with `squeue`). The configuration goes to
/etc/slurm/slurm.conf, because job steps (srun inside a job) ignore SLURM_CONF; a slurm.conf that
this script did not write is never overwritten. munged runs on its own socket, and everything else
(state, spool, logs, pids) lives under /var/spool/srnet-slurm. The pids (with their start times)
of the daemons that `start` launched are recorded in state.json there; `stop` signals those and
nothing else. Every wait is bounded; a failure raises ClusterError with the daemon logs' tail.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
SLURM_CONF = Path("/etc/slurm/slurm.conf")
BASE = Path("/var/spool/srnet-slurm")
STATE_FILE = BASE / "state.json"
MUNGE_DIR = BASE / "munge"
MUNGE_SOCKET = MUNGE_DIR / "munge.socket"
MARKER = "# Written by srnet tests/slurm_cluster.py (a throwaway test cluster); safe to delete."
PACKAGES = ["slurmctld", "slurmd", "slurm-client", "munge"]
BINARIES = ["slurmctld", "slurmd", "sbatch", "squeue", "sinfo", "scontrol", "scancel", "srun", "munged", "munge"]
CPU_PARTITION = "cpu"
GPU_PARTITION = "gpu"
START_TIMEOUT_S = 60
DAEMONS = ("munged", "slurmctld", "slurmd")  # start order; stopped in reverse


class ClusterError(RuntimeError):
    """The cluster could not be set up or started (logs attached)."""


class ClusterUnavailable(ClusterError):
    """This machine cannot host the test cluster at all (not root, no apt-get, a foreign slurm.conf)."""


# ---------------------------------------------------------------------------------------- helpers

def node_name() -> str:
    return socket.gethostname().split(".")[0]


def _run(cmd: list[str], timeout: float = 30, check: bool = True, **kw) -> subprocess.CompletedProcess:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    except subprocess.TimeoutExpired as exc:
        raise ClusterError(f"{' '.join(cmd)}: no answer within {timeout:.0f} s{_logs_tail()}") from exc
    if check and proc.returncode != 0:
        raise ClusterError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return proc


def _tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(text[-lines:])


def _logs_tail() -> str:
    parts = []
    for path in sorted(BASE.glob("*.log")) if BASE.is_dir() else []:
        tail = _tail(path)
        if tail:
            parts.append(f"--- {path} (tail) ---\n{tail}")
    return ("\n" + "\n".join(parts)) if parts else ""


def _start_time(pid: int) -> str | None:
    """The process's start time (clock ticks since boot), to tell it from a later process with its pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    if fields[0] == "Z":  # a zombie is as good as gone
        return None
    return fields[19]


def _wait(predicate, timeout: float, what: str, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise ClusterError(f"timed out after {timeout:.0f} s waiting for {what}{_logs_tail()}")


def _read_state() -> dict:
    try:
        return json.loads(STATE_FILE.read_text())
    except (OSError, ValueError):
        return {}


def _alive(entry: dict) -> bool:
    return _start_time(entry["pid"]) == entry["start_time"]


def running() -> bool:
    """Are the daemons recorded by `start` all still running?"""
    state = _read_state()
    return bool(state) and all(name in state and _alive(state[name]) for name in DAEMONS)


# ----------------------------------------------------------------------------------- installation

def missing_binaries() -> list[str]:
    return [b for b in BINARIES if shutil.which(b, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin") is None]


def ensure_installed() -> None:
    """apt-get install the Debian packages when a binary is missing (root only)."""
    if not missing_binaries():
        return
    if os.geteuid() != 0:
        raise ClusterUnavailable(f"SLURM is not installed ({', '.join(missing_binaries())} missing) and this is not root")
    if shutil.which("apt-get") is None:
        raise ClusterUnavailable(f"SLURM is not installed ({', '.join(missing_binaries())} missing) and there is no apt-get")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    # No init system here, but keep package scripts from starting the stock services in any case.
    policy = Path("/usr/sbin/policy-rc.d")
    own_policy = not policy.exists()
    if own_policy:
        policy.write_text("#!/bin/sh\n# temporary, tests/slurm_cluster.py\nexit 101\n")
        policy.chmod(0o755)
    try:
        cmd = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *PACKAGES]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
        if proc.returncode != 0:  # package lists missing or stale: update once, retry
            subprocess.run(["apt-get", "update", "-q"], capture_output=True, text=True, env=env, timeout=600)
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
        if proc.returncode != 0:
            raise ClusterUnavailable(f"apt-get install {' '.join(PACKAGES)} failed:\n{proc.stdout[-1500:]}{proc.stderr[-1500:]}")
    except subprocess.TimeoutExpired as exc:
        raise ClusterError(f"apt-get did not finish in time: {exc}") from exc
    finally:
        if own_policy:
            policy.unlink(missing_ok=True)
    if missing_binaries():
        raise ClusterError(f"installed {' '.join(PACKAGES)}, yet {', '.join(missing_binaries())} are missing")


def _ensure_munge_key() -> None:
    key = Path("/etc/munge/munge.key")
    if key.exists():
        return
    if shutil.which("mungekey"):
        _run(["mungekey", "--create", "--keyfile", str(key)])
    else:
        key.parent.mkdir(parents=True, exist_ok=True)
        key.write_bytes(os.urandom(128))
    shutil.chown(key, "munge", "munge")
    key.chmod(0o600)


# ---------------------------------------------------------------------------------- configuration

def real_memory_mb() -> int:
    """What the node offers jobs: the machine's memory less 10 % (at least 1 GiB) for the system."""
    total_kb = int(next(line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines()
                        if line.startswith("MemTotal:")))
    total_mb = total_kb // 1024
    return max(512, total_mb - max(1024, total_mb // 10))


def slurm_conf_text() -> str:
    node = node_name()
    return f"""{MARKER}
ClusterName=srnet-test
SlurmctldHost={node}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort=6817
SlurmdPort=6818
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={MUNGE_SOCKET}
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
ReturnToService=2
SlurmdParameters=config_overrides
StateSaveLocation={BASE}/ctld
SlurmdSpoolDir={BASE}/slurmd
SlurmctldPidFile={BASE}/slurmctld.pid
SlurmdPidFile={BASE}/slurmd.pid
SlurmctldLogFile={BASE}/slurmctld.log
SlurmdLogFile={BASE}/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# No accounting: no slurmdbd, sacct cannot answer; finished jobs stay visible to squeue for MinJobAge s.
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MinJobAge=1800
SlurmctldTimeout=30
SlurmdTimeout=60
InactiveLimit=0
KillWait=10
Waittime=0
NodeName={node} NodeAddr=127.0.0.1 CPUs={os.cpu_count() or 1} RealMemory={real_memory_mb()} State=UNKNOWN
PartitionName={CPU_PARTITION} Nodes={node} Default=YES MaxTime=INFINITE State=UP
PartitionName={GPU_PARTITION} Nodes={node} MaxTime=INFINITE State=UP
"""


def write_config() -> None:
    if SLURM_CONF.exists() and MARKER not in SLURM_CONF.read_text(errors="replace"):
        raise ClusterUnavailable(f"{SLURM_CONF} exists and was not written by this script; not touching a real SLURM setup")
    SLURM_CONF.parent.mkdir(parents=True, exist_ok=True)
    text = slurm_conf_text()
    if not SLURM_CONF.exists() or SLURM_CONF.read_text() != text:
        tmp = SLURM_CONF.with_name(SLURM_CONF.name + ".srnet-tmp")
        tmp.write_text(text)
        tmp.replace(SLURM_CONF)
    for sub in ("ctld", "slurmd"):
        (BASE / sub).mkdir(parents=True, exist_ok=True)
    MUNGE_DIR.mkdir(parents=True, exist_ok=True)
    BASE.chmod(0o755)
    shutil.chown(MUNGE_DIR, "munge", "munge")
    MUNGE_DIR.chmod(0o755)


# ---------------------------------------------------------------------------------- start / stop

def _spawn(name: str, cmd: list[str], **kw) -> dict:
    out = open(BASE / f"{name}.out.log", "ab")
    try:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, close_fds=True, **kw)
    finally:
        out.close()
    time.sleep(0.2)
    start_time = _start_time(proc.pid)
    if start_time is None or proc.poll() is not None:
        raise ClusterError(f"{name} exited at once ({proc.poll()}){_logs_tail()}")
    return {"pid": proc.pid, "start_time": start_time, "cmd": cmd}


def _quiet(cmd: list[str], **kw) -> subprocess.CompletedProcess | None:
    """Run a probe; None when it hangs (15 s) or its program is missing."""
    try:
        return subprocess.run(cmd, capture_output=True, timeout=15, **kw)
    except (subprocess.TimeoutExpired, OSError):
        return None


def _munge_ok() -> bool:
    enc = _quiet(["munge", "-n", "-S", str(MUNGE_SOCKET)])
    if enc is None or enc.returncode != 0:
        return False
    dec = _quiet(["unmunge", "-S", str(MUNGE_SOCKET)], input=enc.stdout)
    return dec is not None and dec.returncode == 0


def _ping_ok() -> bool:
    proc = _quiet(["scontrol", "ping"], text=True)
    return proc is not None and proc.returncode == 0 and "UP" in proc.stdout


def node_states() -> list[str]:
    proc = _quiet(["sinfo", "-h", "-o", "%T"], text=True)
    return proc.stdout.split() if proc is not None and proc.returncode == 0 else []


def _idle() -> bool:
    states = node_states()
    return bool(states) and all(s.rstrip("*~#!%$@^-") == "idle" for s in states)


def _record(state: dict) -> None:
    tmp = STATE_FILE.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=1))
    tmp.replace(STATE_FILE)


def start(timeout: float = START_TIMEOUT_S) -> bool:
    """Install, configure and start the cluster, and wait until its node is idle.

    Returns True if this call started the daemons, False if a cluster started earlier by this script
    was already running (then the caller should not stop it).
    """
    if os.geteuid() != 0:
        raise ClusterUnavailable("starting slurmctld/slurmd/munged needs root")
    ensure_installed()
    if running():
        write_config()
        _wait(_idle, timeout, "the node to be idle (sinfo -h -o %T)")
        return False
    if _read_state():  # a previous run's leftovers (some daemon died): stop what is left of it
        stop()
    write_config()
    _ensure_munge_key()
    for log in BASE.glob("*.log"):
        log.unlink()
    state: dict = {"node": node_name(), "started": time.time()}
    try:
        state["munged"] = _spawn("munged", [
            shutil.which("munged", path="/usr/sbin:/sbin:/usr/bin") or "munged", "--foreground",
            f"--socket={MUNGE_SOCKET}", f"--pid-file={MUNGE_DIR}/munged.pid",
            f"--log-file={BASE}/munged.log", f"--seed-file={MUNGE_DIR}/munged.seed",
        ], user="munge", group="munge")
        _record(state)
        _wait(_munge_ok, 20, "munged to answer (munge -n | unmunge)")
        state["slurmctld"] = _spawn("slurmctld", [shutil.which("slurmctld", path="/usr/sbin:/sbin") or "slurmctld",
                                                  "-D", "-c", "-i", "-f", str(SLURM_CONF)])
        _record(state)
        _wait(_ping_ok, timeout, "slurmctld to answer (scontrol ping)")
        state["slurmd"] = _spawn("slurmd", [shutil.which("slurmd", path="/usr/sbin:/sbin") or "slurmd",
                                            "-D", "-N", node_name(), "-f", str(SLURM_CONF)])
        _record(state)
        _wait(_idle, timeout, "the node to be idle (sinfo -h -o %T)")
        for name in DAEMONS:
            if not _alive(state[name]):
                raise ClusterError(f"{name} died during start-up{_logs_tail()}")
    except BaseException:
        stop()
        raise
    return True


def _stop_pid(entry: dict, timeout: float = 15) -> None:
    if not _alive(entry):
        return
    pid = entry["pid"]
    for sig, wait_s in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            try:  # reap it if it is our own child (started by start() in this process)
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
            if not _alive(entry):
                return
            time.sleep(0.2)
    raise ClusterError(f"pid {pid} ({entry['cmd'][0]}) would not stop")


def cancel_jobs(timeout: float = 30) -> None:
    """Cancel every job of the test cluster (only its own jobs can be there) and wait for them to leave."""
    def active() -> list[str]:
        proc = _quiet(["squeue", "-h", "-o", "%i", "-t", "PENDING,RUNNING,SUSPENDED,COMPLETING,CONFIGURING"], text=True)
        return proc.stdout.split() if proc is not None and proc.returncode == 0 else []
    jobs = active()
    if not jobs:
        return
    _quiet(["scancel", *jobs])
    deadline = time.monotonic() + timeout
    while active() and time.monotonic() < deadline:
        time.sleep(0.5)


def stop() -> None:
    """Cancel the cluster's jobs, then stop the daemons recorded in the state file, and nothing else."""
    state = _read_state()
    if not state:
        return
    if all(name in state and _alive(state[name]) for name in DAEMONS):
        cancel_jobs()
    errors = []
    for name in reversed(DAEMONS):
        if name in state:
            try:
                _stop_pid(state[name])
            except ClusterError as exc:
                errors.append(str(exc))
    if errors:
        raise ClusterError("; ".join(errors))
    STATE_FILE.unlink(missing_ok=True)
    # Our slurm.conf goes too: while it names a controller that is gone, every `scontrol` (which the
    # SLURM executor plugin runs on import, i.e. at every Snakemake start) waits ~9 s for it.
    if SLURM_CONF.exists() and MARKER in SLURM_CONF.read_text(errors="replace"):
        SLURM_CONF.unlink()


def status() -> str:
    state = _read_state()
    lines = [f"{name}: pid {state[name]['pid']} {'running' if _alive(state[name]) else 'gone'}"
             for name in DAEMONS if name in state] or ["not started by this script"]
    proc = _quiet(["sinfo"], text=True)
    if proc is not None:
        lines.append((proc.stdout or proc.stderr).rstrip())
    return "\n".join(lines)


# -------------------------------------------------------------------------------- the test profile

GPU_RULES = ("pretrain_fgsn", "extract_features", "train_registration", "register")
THREADED_RULES = ("pretrain_fgsn", "extract_features", "fit_codebook", "train_registration")  # threads: 2


def derived_profile(fast_polling: bool = True) -> dict:
    """profiles/slurm adapted to this cluster: its partition names, no account, no GPUs (gpu=0, no
    gres), memory requests capped at half the node, runtimes at an hour, quick status polling, and
    the SLURM logs of successful jobs kept (the test's evidence that jobs went through SLURM)."""
    profile = yaml.safe_load((REPO / "profiles/slurm/config.yaml").read_text())
    defaults = profile.get("default-resources") or {}
    set_resources = profile.get("set-resources") or {}
    site_cpu = defaults.get("slurm_partition", CPU_PARTITION)
    site_gpu = next((r["slurm_partition"] for name, r in set_resources.items()
                     if name in GPU_RULES and r.get("slurm_partition") not in (None, site_cpu)
                     and " " not in str(r["slurm_partition"])), GPU_PARTITION)
    partitions = {site_cpu: CPU_PARTITION, site_gpu: GPU_PARTITION}
    half_node = real_memory_mb() // 2

    def adapt(resources: dict) -> dict:
        out = {k: v for k, v in resources.items() if k not in ("slurm_account", "slurm_extra", "gres", "gpu_model")}
        if "slurm_partition" in out:  # plain names are mapped; an expression is kept as it is
            out["slurm_partition"] = partitions.get(out["slurm_partition"], out["slurm_partition"])
        if "mem_mb" in out:
            out["mem_mb"] = min(int(out["mem_mb"]), half_node)
        if "runtime" in out:
            out["runtime"] = min(int(out["runtime"]), 60)
        return out

    profile["default-resources"] = adapt(defaults)
    profile["set-resources"] = {name: adapt(res) for name, res in set_resources.items()}
    for name in GPU_RULES:  # the rules' own gpu=1 would make the plugin ask for --gpus=1
        profile["set-resources"].setdefault(name, {})["gpu"] = 0
    # Every rule on one CPU: on a 2-CPU node a 2-thread job holds the whole node, so the nine feature
    # extractions would run one after the other while one-CPU jobs run two at a time.
    if (os.cpu_count() or 1) <= 2:
        profile["set-threads"] = {name: 1 for name in THREADED_RULES}
    profile["latency-wait"] = 10
    profile["slurm-keep-successful-logs"] = True
    if fast_polling:
        profile["slurm-init-seconds-before-status-checks"] = 1
        profile["seconds-between-status-checks"] = 2
    return profile


def write_test_profile(folder: Path, **kw) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(
        "# Generated by tests/slurm_cluster.py from profiles/slurm for the one-node test cluster.\n"
        + yaml.safe_dump(derived_profile(**kw), sort_keys=False))
    return folder


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("start", "stop", "status", "profile"):
        print(__doc__)
        return 2
    try:
        if argv[0] == "start":
            started = start()
            print(("started" if started else "already running") + f"; node {node_name()}: {' '.join(node_states())}")
        elif argv[0] == "stop":
            stop()
            print("stopped")
        elif argv[0] == "status":
            print(status())
        else:
            if len(argv) != 2:
                print("usage: python tests/slurm_cluster.py profile DIR")
                return 2
            print(write_test_profile(Path(argv[1])) / "config.yaml")
    except ClusterError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
