"""A private single-node SLURM cluster on localhost, for tests that need a real scheduler.

Everything (configuration, state, spool, logs, pid files, the MariaDB data directory, the munge
key and socket) lives under one state directory; nothing is written to ``/etc/slurm``. Only when
that directory's path is too long for Unix sockets (over ~70 characters) do the sockets, pid files and
slurmd's spool go to a short temporary folder, removed by ``stop()``. It needs root and the Debian
packages ``slurmctld slurmd slurm-client munge slurmdbd mariadb-server``.
The settings follow the measured recipe in the design notes (shared/notes/slurm-local.md).

    with LocalSlurmCluster(tmp_path_factory.mktemp("slurm")) as cluster:
        for name, value in cluster.env.items():
            monkeypatch.setenv(name, value)
        ...  # sbatch, submitit, sacct and the jobs all talk to this cluster
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

BINARIES = ("slurmctld", "slurmd", "slurmdbd", "munged", "mariadb-install-db", "sacctmgr", "sbatch", "squeue",
            "sacct", "scontrol", "scancel", "sinfo")
_SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin", "/usr/local/sbin"])
# AF_UNIX paths are limited to 107 bytes; the longest socket is spool/localhost_<job id>.<step id>
_MAX_SOCKET_ROOT = 107 - len("/spool/localhost_67043328.4294967294")


def _which(name: str) -> str | None:
    """The full path of ``name`` on PATH or in the sbin folders, else None."""
    return shutil.which(name, path=_SEARCH_PATH)


def _tail(path: Path, lines: int = 30) -> str:
    """The last ``lines`` lines of a log file, or a note that it is missing."""
    if not path.exists():
        return f"({path} does not exist)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


class LocalSlurmCluster:
    """Start and stop munged, MariaDB, slurmdbd, slurmctld and slurmd, all rooted in ``state_dir``.

    ``env`` holds the variables clients (sbatch, squeue, sacct, submitit and the jobs) need.
    Only processes started by this object are ever signalled.
    """

    cluster_name = "ci"

    def __init__(self, state_dir: Path, *, slurmctld_port: int = 6817, slurmd_port: int = 6818,
                 slurmdbd_port: int = 6819, timeout_s: float = 60.0) -> None:
        self.state_dir = Path(state_dir).resolve()
        self.slurmctld_port, self.slurmd_port, self.slurmdbd_port = slurmctld_port, slurmd_port, slurmdbd_port
        self.timeout_s = timeout_s
        self.first_job_id = random.randint(1000, 900000)  # a reused folder never sees an old job id
        self.etc, self.log = self.state_dir / "etc", self.state_dir / "log"
        self.mysql = self.state_dir / "mysql"
        self._socket_root = self.state_dir  # holds run/ and spool/ (sockets); a short temp folder if too long
        self._procs: dict[str, tuple[subprocess.Popen[bytes], Path]] = {}  # name -> (process, its log file)

    @staticmethod
    def available() -> str | None:
        """None if this machine can run the cluster, else why not (a pytest skip reason)."""
        missing = [name for name in BINARIES if _which(name) is None]
        if _which("mariadbd") is None and _which("mysqld") is None:
            missing.append("mariadbd (or mysqld)")
        if missing:
            return ("missing " + ", ".join(missing) + "; apt-get install -y --no-install-recommends slurmctld slurmd "
                    "slurm-client munge slurmdbd mariadb-server")
        if os.geteuid() != 0:
            return "the local SLURM cluster must run as root"
        return None

    @property
    def slurm_conf(self) -> Path:
        """The cluster's ``slurm.conf``."""
        return self.etc / "slurm.conf"

    @property
    def run_dir(self) -> Path:
        """Sockets and pid files."""
        return self._socket_root / "run"

    @property
    def spool_dir(self) -> Path:
        """slurmd's spool folder (it holds one socket per job step)."""
        return self._socket_root / "spool"

    @property
    def munge_socket(self) -> Path:
        """The munge socket all daemons and clients use."""
        return self.run_dir / "munge.socket.2"

    @property
    def mysql_socket(self) -> Path:
        """The MariaDB socket slurmdbd connects through (MariaDB listens on no TCP port)."""
        return self.run_dir / "mysqld.sock"

    @property
    def env(self) -> dict[str, str]:
        """Environment variables that point SLURM clients, submitit and jobs at this cluster."""
        return {"SLURM_CONF": str(self.slurm_conf)}

    def __enter__(self) -> LocalSlurmCluster:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def start(self) -> None:
        """Write the configuration, start every daemon and wait until the node is idle.

        Raises RuntimeError with the tail of the relevant log when a step fails; whatever was
        started is stopped first.
        """
        if reason := self.available():
            raise RuntimeError(f"cannot start a local SLURM cluster: {reason}")
        if self._procs:
            raise RuntimeError("the local SLURM cluster is already started")
        try:
            self._write_config()
            self._start_munge()
            self._start_mariadb()
            self._spawn("slurmdbd", [_which("slurmdbd"), "-D"], {"MYSQL_UNIX_PORT": str(self.mysql_socket)})
            self._wait("sacctmgr add cluster", "slurmdbd",
                       lambda: self._ok("sacctmgr", "-i", "add", "cluster", self.cluster_name)
                       or self.cluster_name in self._out("sacctmgr", "-n", "-P", "list", "cluster", "format=cluster"))
            self._spawn("slurmctld", [_which("slurmctld"), "-D", "-i"])
            self._wait("scontrol ping", "slurmctld", lambda: "UP" in self._out("scontrol", "ping"))
            self._spawn("slurmd", [_which("slurmd"), "-D", "-N", "localhost"])
            self._wait("an idle node", "slurmd", lambda: self._out("sinfo", "-h", "-N", "-o", "%T") == "idle")
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Cancel all jobs, then TERM (and after 10 s KILL) each daemon this object started, newest first."""
        if "slurmctld" in self._procs and self._procs["slurmctld"][0].poll() is None:
            if job_ids := self._out("squeue", "-h", "-o", "%A").split():
                # submitit jobs ignore SIGTERM: KILL running ones at once, then cancel the pending ones
                self._ok("scancel", "--signal=KILL", "--full", *job_ids)
                self._ok("scancel", *job_ids)
                deadline = time.monotonic() + self.timeout_s
                while self._out("squeue", "-h", "-o", "%A") and time.monotonic() < deadline:
                    time.sleep(0.5)
        for name in reversed(list(self._procs)):
            proc, _ = self._procs.pop(name)
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)
        if self._socket_root != self.state_dir:
            shutil.rmtree(self._socket_root, ignore_errors=True)
            self._socket_root = self.state_dir

    def _write_config(self) -> None:
        """Create the folders, slurm.conf and slurmdbd.conf (mode 0600, as slurmdbd demands)."""
        if len(str(self.state_dir)) > _MAX_SOCKET_ROOT:
            self._socket_root = Path(tempfile.mkdtemp(prefix="slurm-"))
        for folder in (self.etc, self.log, self.run_dir, self.spool_dir, self.state_dir / "ctld"):
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        auth_info = f"AuthInfo=socket={self.munge_socket},cred_expire=10"
        s, log, run = self.state_dir, self.log, self.run_dir
        self.slurm_conf.write_text(f"""\
ClusterName={self.cluster_name}
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
SlurmctldPort={self.slurmctld_port}
SlurmdPort={self.slurmd_port}
AuthType=auth/munge
CredType=cred/munge
{auth_info}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort={self.slurmdbd_port}
# connections to slurmdbd take their munge socket from here, not from AuthInfo
AccountingStoragePass={self.munge_socket}
# submitit jobs ignore SIGTERM: a cancelled job is killed after KillWait s (default 30)
KillWait=5
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
MailProg=/bin/true
FirstJobId={self.first_job_id}
StateSaveLocation={s / "ctld"}
SlurmdSpoolDir={self.spool_dir}
SlurmctldPidFile={run / "slurmctld.pid"}
SlurmdPidFile={run / "slurmd.pid"}
SlurmctldLogFile={log / "slurmctld.log"}
SlurmdLogFile={log / "slurmd.log"}
NodeName=localhost NodeAddr=127.0.0.1 CPUs={len(os.sched_getaffinity(0))} RealMemory=2000 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
""")
        dbd_conf = self.etc / "slurmdbd.conf"
        dbd_conf.touch(mode=0o600)
        dbd_conf.chmod(0o600)
        dbd_conf.write_text(f"""\
AuthType=auth/munge
{auth_info}
DbdAddr=127.0.0.1
DbdHost=localhost
DbdPort={self.slurmdbd_port}
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=root
StorageLoc=slurm_acct_db
LogFile={log / "slurmdbd.log"}
PidFile={run / "slurmdbd.pid"}
""")

    def _start_munge(self) -> None:
        """Start munged as root with a fresh key; --force accepts a socket folder only root can reach."""
        key = self.etc / "munge.key"
        key.touch(mode=0o600)
        key.chmod(0o600)
        key.write_bytes(os.urandom(128))
        self._spawn("munged", [_which("munged"), "-F", "--force", f"--socket={self.munge_socket}",
                               f"--key-file={key}", f"--pid-file={self.run_dir / 'munged.pid'}",
                               f"--seed-file={self.state_dir / 'munged.seed'}"])
        self._wait("the munge socket", "munged", self.munge_socket.exists)

    def _start_mariadb(self) -> None:
        """Install a database into ``state_dir/mysql`` and serve it on a socket only (no network)."""
        log = self.mysql / "mariadb.err"
        if not (self.mysql / "mysql").is_dir():
            result = subprocess.run(
                [_which("mariadb-install-db"), "--no-defaults", "--user=root", f"--datadir={self.mysql}",
                 "--auth-root-authentication-method=socket", "--skip-test-db"],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=self.timeout_s, check=False)
            if result.returncode:
                raise RuntimeError(f"mariadb-install-db failed:\n{result.stdout.decode(errors='replace')[-3000:]}")
        self._spawn("mariadbd", [_which("mariadbd") or _which("mysqld"), "--no-defaults", "--user=root",
                                 f"--datadir={self.mysql}", f"--socket={self.mysql_socket}", "--skip-networking",
                                 f"--pid-file={self.run_dir / 'mariadbd.pid'}", f"--log-error={log}"], log=log)
        self._wait("the MariaDB socket", "mariadbd", self.mysql_socket.exists)

    def _spawn(self, name: str, argv: list[str | None], extra_env: dict[str, str] | None = None,
               log: Path | None = None) -> None:
        """Run a daemon in the foreground as our child; its output goes to ``log/<name>.out``."""
        out = self.log / f"{name}.out"
        with out.open("ab") as sink:
            proc = subprocess.Popen([str(a) for a in argv], stdin=subprocess.DEVNULL, stdout=sink, stderr=sink,
                                    env={**os.environ, **self.env, **(extra_env or {})}, start_new_session=True)
        self._procs[name] = (proc, log or self.log / f"{name}.log")

    def _wait(self, what: str, daemon: str, ready: Callable[[], bool], timeout_s: float | None = None) -> None:
        """Poll ``ready()`` until true; fail early if ``daemon`` died, or after the timeout."""
        deadline = time.monotonic() + (timeout_s or self.timeout_s)
        proc, log = self._procs[daemon]
        while not ready():
            if proc.poll() is not None or time.monotonic() > deadline:
                state = f"exited with {proc.returncode}" if proc.poll() is not None else "timed out"
                raise RuntimeError(
                    f"local SLURM cluster: waiting for {what}, {daemon} {state}.\n"
                    f"--- {log}:\n{_tail(log)}\n--- {self.log / (daemon + '.out')}:\n"
                    f"{_tail(self.log / (daemon + '.out'))}")
            time.sleep(0.2)

    def _run(self, *argv: str) -> subprocess.CompletedProcess[str]:
        """Run a SLURM client against this cluster (bounded to 30 s)."""
        try:
            return subprocess.run([_which(argv[0]) or argv[0], *argv[1:]], capture_output=True, text=True,
                                  env={**os.environ, **self.env}, timeout=30, check=False)
        except subprocess.TimeoutExpired:
            return subprocess.CompletedProcess(argv, 124, "", "timed out")

    def _ok(self, *argv: str) -> bool:
        """Whether a client command succeeded."""
        return self._run(*argv).returncode == 0

    def _out(self, *argv: str) -> str:
        """A client command's stripped stdout ('' when it failed)."""
        result = self._run(*argv)
        return result.stdout.strip() if result.returncode == 0 else ""
