"""Worker (and sink) processes run as children, restarted when they exit: start, stop, kill.

A worker does not exit on its own (a failed runtime loop starts again inside the process), but
a machine or a process can always die: transactions keep that safe (what the dead process had
not committed is aborted and redone by the next owner), and a supervisor starts the process
again, as systemd, Kubernetes or compose's ``restart:`` do in production and this class does
for the demo and the tests.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Mapping, Sequence


class WorkerProcess:
    """One ``agentstream worker`` (or other long-running ``agentstream ARGS``) child process.

    With ``restart`` (the default) a process that exits on its own is started again; ``stop``
    and ``kill`` end it for good. ``restarts`` counts the restarts.
    """

    def __init__(
        self,
        log_file: Path,
        env: Mapping[str, str] | None = None,
        web_port: int | None = None,
        args: Sequence[str] = ("worker",),
        restart: bool = True,
    ) -> None:
        self.log_file = log_file
        self.args = list(args)
        self.env = {**os.environ, **(env or {})}
        if web_port is not None:
            self.env["AGENTSTREAM_WEB_PORT"] = str(web_port)
        self.restart = restart
        self.restarts = 0
        self.proc: subprocess.Popen | None = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()

    def _spawn(self) -> None:
        with open(self.log_file, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "streams", *self.args], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self.env, start_new_session=True
            )

    def _watch(self, proc: subprocess.Popen) -> None:
        proc.wait()
        with self._lock:
            if self._stopping.is_set() or self.proc is not proc:
                return
            self.restarts += 1
            self._spawn()
            threading.Thread(target=self._watch, args=(self.proc,), daemon=True).start()

    def start(self) -> "WorkerProcess":
        """Start the process in the background (a worker joins the consumer group by itself)."""
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with self._lock:
            self._stopping.clear()
            self._spawn()
            if self.restart:
                threading.Thread(target=self._watch, args=(self.proc,), daemon=True).start()
        return self

    @property
    def pid(self) -> int | None:
        """The child's pid while it runs."""
        return self.proc.pid if self.proc and self.proc.poll() is None else None

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM, wait for a clean shutdown (SIGKILL after ``timeout``); return the exit code."""
        with self._lock:
            self._stopping.set()
            proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return proc.returncode

    def kill(self) -> None:
        """SIGKILL: a crash, with no chance to commit or leave the group (and no restart)."""
        with self._lock:
            self._stopping.set()
            proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    def log_tail(self, chars: int = 3000) -> str:
        """The end of the process's log, for error messages."""
        try:
            return self.log_file.read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return ""
