"""Run olah (the Hub mirror server from PyPI) offline over a folder of git repositories.

olah serves ``mirrors-path/models/<org>/<name>`` through the Hub's read API
(``/api/models/{repo}/revision/{rev}``, ``/api/models/{repo}/tree/{rev}``,
``/{repo}/resolve/{rev}/{file}``), which is what ``snapshot_download`` uses.
"""

from __future__ import annotations

import http.client
import socket
import subprocess
import sys
import time
from pathlib import Path

READY_PROBE = "/api/models/hf-soup-probe/none/revision/main"  # "/" answers 500 in olah 0.5.4


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def write_config(directory: Path, *, port: int, mirrors: Path, public_netloc: str, host: str = "127.0.0.1") -> Path:
    """Write olah's ``configs.toml`` (offline, no metadata cache) and return its path."""
    config = directory / "configs.toml"
    config.write_text(
        "[basic]\n"
        f'host = "{host}"\n'
        f"port = {port}\n"
        f'repos-path = "{(directory / "repos").as_posix()}"\n'
        f'mirrors-path = ["{mirrors.as_posix()}"]\n'
        'mirror-scheme = "http"\n'
        f'mirror-netloc = "{public_netloc}"\n'
        f'mirror-lfs-netloc = "{public_netloc}"\n'
        "metadata-cache-ttl = 0\n"
        "\n[accessibility]\n"
        "offline = true\n"
    )
    return config


class OlahProcess:
    """``python -m olah.server -c configs.toml`` as a child process; ``stop()`` ends it.

    >>> olah = OlahProcess(workdir, mirrors, public_netloc="127.0.0.1:8000").start()  # doctest: +SKIP
    """

    def __init__(self, workdir: Path, mirrors: Path, *, public_netloc: str, host: str = "127.0.0.1"):
        self.workdir = Path(workdir)
        self.mirrors = Path(mirrors)
        self.public_netloc = public_netloc
        self.host = host
        self.port: int | None = None
        self.process: subprocess.Popen | None = None

    @property
    def netloc(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self, timeout: float = 60.0) -> "OlahProcess":
        """Start olah on a free port and wait until it answers (a few tries if the port is taken)."""
        import importlib.util
        import shutil

        if importlib.util.find_spec("olah") is None:
            raise RuntimeError("the local Hub needs olah: pip install 'olah==0.5.4' (or pip install 'hf-soup[test]')")
        if shutil.which("git") is None:
            raise RuntimeError("the local Hub stores repos with git: install git")
        self.workdir.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            self.port = free_port(self.host)
            config = write_config(self.workdir, port=self.port, mirrors=self.mirrors,
                                  public_netloc=self.public_netloc, host=self.host)
            log = open(self.workdir / "olah.out", "ab")
            self.process = subprocess.Popen(
                [sys.executable, "-m", "olah.server", "-c", str(config), "--log-path", str(self.workdir / "logs")],
                cwd=self.workdir, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )
            log.close()
            if self._wait_ready(timeout):
                return self
            self.stop()
        raise RuntimeError(f"olah did not start; see {self.workdir / 'olah.out'}")

    def _wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            try:
                connection = http.client.HTTPConnection(self.host, self.port, timeout=2)
                connection.request("GET", READY_PROBE)
                connection.getresponse().read()
                connection.close()
                return True
            except OSError:
                time.sleep(0.05)
        return False

    def stop(self) -> None:
        """Terminate olah (kill it if it does not exit within 5 s)."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
