"""Start, track and stop the stack's server processes, leaving none behind.

Each server runs in its own process group with its output in a log file. Two
guards keep a crashed run from leaving orphans that hold ports:

- processes started for a test session get ``PR_SET_PDEATHSIG`` = SIGKILL, so
  the kernel kills them when the pytest process dies, however it dies;
- every started process is recorded in ``<state>/procs.json`` with its command
  start time, so ``stack-down`` (or the next run's reaper) can kill exactly
  those processes, and never a stranger that reused a PID.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

_PR_SET_PDEATHSIG = 1


class StartError(RuntimeError):
    """A component did not start; the message names it and carries its log's tail."""


_HANDED_OUT: set[int] = set()
_HANDED_OUT_LOCK = threading.Lock()


def free_port() -> int:
    """A currently free TCP port on 127.0.0.1 (the OS picks it), never one this process
    was given before.

    Ports are picked before the services that bind them start (a stack picks all of
    its ports first), and the OS readily hands the same free port out twice: 500 picks
    gave 487 distinct ports here, and a CI run once gave Kafka the port etcd then took.
    """
    with _HANDED_OUT_LOCK:
        for _ in range(1000):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.bind(("127.0.0.1", 0))
                port = int(sock.getsockname()[1])
            if port not in _HANDED_OUT:
                _HANDED_OUT.add(port)
                return port
    raise RuntimeError("no free TCP port left that this process was not given already")


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something accepts TCP connections on host:port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def tail(path: Path, lines: int = 40) -> str:
    """The last lines of a log file (for error messages)."""
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:])


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: ask the kernel to SIGKILL us when
    # the parent (the pytest process) dies, so a crashed test run leaves nothing.
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


# PR_SET_PDEATHSIG fires when the *thread* that forked the child exits, not the
# process. Components start from short-lived worker threads, so every tied child
# is forked from this one long-lived thread instead, which ends only with the
# interpreter.
_SPAWNER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hftpipe-spawner")


@dataclass
class ProcRecord:
    """What ``procs.json`` keeps about one started process."""

    name: str
    pid: int
    start_ticks: int
    log: str
    ports: list[int]


def start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot, or None if gone or a zombie.

    A PID plus its start time identifies a process for good (the command line
    does not: redis-server rewrites its own).
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    fields = stat.rsplit(")", 1)[1].split()
    # fields[0] is the state (field 3 of proc(5)); starttime is field 22.
    return None if fields[0] in {"Z", "X"} else int(fields[19])


def alive(record: ProcRecord) -> bool:
    """Whether the recorded process still runs (same PID *and* same start time)."""
    return start_ticks(record.pid) == record.start_ticks


class ProcessTable:
    """The processes of one stack, persisted in ``<state_dir>/procs.json``."""

    def __init__(self, state_dir: Path, *, tie_to_parent: bool) -> None:
        self.state_dir = state_dir
        self.log_dir = state_dir / "logs"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._file = state_dir / "procs.json"
        self._tie = tie_to_parent
        self._popen: dict[str, subprocess.Popen[bytes]] = {}
        self._lock = threading.Lock()  # components start in parallel threads

    def records(self) -> list[ProcRecord]:
        """Every process recorded so far (alive or not)."""
        if not self._file.exists():
            return []
        return [ProcRecord(**r) for r in json.loads(self._file.read_text())]

    def _save(self, records: list[ProcRecord]) -> None:
        tmp = self._file.with_suffix(".tmp")
        tmp.write_text(json.dumps([asdict(r) for r in records], indent=2))
        tmp.replace(self._file)

    def start(
        self,
        name: str,
        cmd: Sequence[str],
        *,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        ports: Sequence[int] = (),
        inherit_env: bool = True,
    ) -> ProcRecord:
        """Start ``cmd`` in its own process group, output to ``logs/<name>.log``.

        ``inherit_env=False`` starts from ``env`` alone (a pod's environment must not
        pick up the test process's variables).
        """
        taken = [port for port in ports if port_open(port)]
        if taken:
            # Said here: the service itself would only exit 1, often before it logs.
            raise StartError(
                f"{name}: port {', '.join(map(str, taken))} on 127.0.0.1 is already in use "
                "by another process; stop it (make stack-down) or let the stack pick again"
            )
        log_path = self.log_dir / f"{name}.log"
        with log_path.open("ab") as log_file:
            proc = _SPAWNER.submit(
                subprocess.Popen,
                list(cmd),
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env={**(os.environ if inherit_env else {}), **(env or {})},
                cwd=cwd,
                start_new_session=True,
                preexec_fn=_die_with_parent if self._tie else None,
            ).result()
        record = ProcRecord(name, proc.pid, start_ticks(proc.pid) or -1, str(log_path), list(ports))
        with self._lock:
            self._popen[name] = proc
            self._save([r for r in self.records() if r.name != name] + [record])
        return record

    def exited(self, name: str) -> int | None:
        """The exit code if the named process (started by us) has exited."""
        proc = self._popen.get(name)
        return None if proc is None else proc.poll()

    def wait_until(
        self,
        name: str,
        ready: Callable[[], bool],
        *,
        timeout: float,
        what: str,
        interval: float = 0.2,
    ) -> None:
        """Poll ``ready()`` until true; fail fast if the process exits, with its log tail."""
        log_path = self.log_dir / f"{name}.log"
        deadline = time.monotonic() + timeout
        last_error: BaseException | None = None
        while time.monotonic() < deadline:
            code = self.exited(name)
            if code is not None:
                raise StartError(
                    f"{name} exited with code {code} before it was ready ({what}).\n"
                    f"--- last lines of {log_path} ---\n{tail(log_path)}"
                )
            try:
                if ready():
                    return
            except Exception as exc:  # noqa: BLE001 - readiness probes fail in many ways until up
                last_error = exc
            time.sleep(interval)
        raise StartError(
            f"{name} was not ready after {timeout:.0f} s ({what}; last probe error: "
            f"{last_error!r}).\n--- last lines of {log_path} ---\n{tail(log_path)}"
        )

    def stop(self, name: str, grace: float = 20.0) -> int | None:
        """SIGTERM the named process group, SIGKILL it after ``grace``; its exit code."""
        proc = self._popen.get(name)
        if proc is None or proc.poll() is not None:
            return None if proc is None else proc.returncode
        _signal_group(proc.pid, signal.SIGTERM)
        try:
            return proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            _signal_group(proc.pid, signal.SIGKILL)
            return proc.wait(timeout=5)

    def stop_all(self, grace: float = 20.0) -> list[str]:
        """SIGTERM every recorded process group, SIGKILL what is left after ``grace``.

        Stops in reverse start order (the API server before etcd, say), returns
        the names that had to be killed.
        """
        records = [r for r in reversed(self.records()) if alive(r)]
        for record in records:
            _signal_group(record.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(alive(r) for r in records):
            for proc in self._popen.values():
                proc.poll()  # reap our own children so they do not linger as zombies
            time.sleep(0.1)
        killed = []
        for record in records:
            if alive(record):
                killed.append(record.name)
                _signal_group(record.pid, signal.SIGKILL)
        for proc in self._popen.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        self._save([])
        return killed


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)
