"""Worker (and sink) processes run as children (for the demo and the tests): start, stop, kill."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Mapping, Sequence


class WorkerProcess:
    """One ``agentstream worker`` (or other long-running ``agentstream ARGS``) child process with its own log file."""

    def __init__(self, log_file: Path, env: Mapping[str, str] | None = None, web_port: int | None = None, args: Sequence[str] = ("worker",)) -> None:
        self.log_file = log_file
        self.args = list(args)
        self.env = {**os.environ, **(env or {})}
        if web_port is not None:
            self.env["AGENTSTREAM_WEB_PORT"] = str(web_port)
        self.proc: subprocess.Popen | None = None

    def start(self) -> "WorkerProcess":
        """Start the worker in the background (it joins the consumer group by itself)."""
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "streams", *self.args], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self.env, start_new_session=True
            )
        return self

    @property
    def pid(self) -> int | None:
        """The child's pid while it runs."""
        return self.proc.pid if self.proc and self.proc.poll() is None else None

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM, wait for a clean shutdown (SIGKILL after ``timeout``); return the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL: a crash, with no chance to commit or leave the group."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def log_tail(self, chars: int = 3000) -> str:
        """The end of the worker's log, for error messages."""
        try:
            return self.log_file.read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return ""
