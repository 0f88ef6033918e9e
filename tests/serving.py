"""Starting ``charlstm serve`` for a test: a real process on 127.0.0.1 and any free port, read
from its start line, stopped (SIGTERM, then kill) when the test ends."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

START = re.compile(r"at (http://127\.0\.0\.1:\d+);")
STARTUP_SECONDS = 120  # a first compile of the kernels on a fresh machine takes a while


class Server:
    """A ``charlstm serve`` process and everything it printed."""

    def __init__(self, run: Path, *args: str, env: dict[str, str] | None = None):
        command = [sys.executable, "-m", "charlstm", "serve", str(run), "--host", "127.0.0.1", "--port", "0", *args]
        self.proc = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env={**os.environ, "COLUMNS": "200", **(env or {})},
        )  # fmt: skip
        self.lines: list[str] = []
        self._ready = threading.Event()
        self.url = ""
        threading.Thread(target=self._read, daemon=True).start()
        if not self._ready.wait(STARTUP_SECONDS) or not self.url:
            self.stop()
            raise RuntimeError("the server did not start:\n" + "".join(self.lines))

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            found = START.search(line)
            if found and not self.url:
                self.url = found.group(1)
                self._ready.set()
        self._ready.set()

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def health(self) -> dict:
        return httpx.get(self.url + "/health", timeout=5).json()

    def wait_idle(self, seconds: float = 10.0) -> dict:
        """The health once no completion is active or queued (or after ``seconds``)."""
        deadline = time.monotonic() + seconds
        while True:
            state = self.health()
            if (state["active"] == 0 and state["queued"] == 0) or time.monotonic() > deadline:
                return state
            time.sleep(0.05)

    def rss(self) -> int:
        """The server's resident memory, in kB."""
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        return int(re.search(r"VmRSS:\s+(\d+)", status).group(1))

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode
