"""A small process supervisor for the four services: start each, restart one that exits (say, SIGKILLed).

Used by `bench/chaos.py` and `bench/soak.py`; follows `deploy/local/services.sh` conventions (one process
per service, JSON logs appended to `<log_dir>/<name>.log`, readiness on `/readyz`). It only ever signals
the processes it started itself.

    sup = Supervisor({"fetcher": env, ...}, log_dir)
    await sup.start_all(); ...; await sup.kill("linker"); ...; await sup.stop_all()
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Child:
    name: str
    env: dict[str, str]
    port: int
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0
    exits: list[int] = field(default_factory=list)


def ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
            return bool(r.status == 200)
    except OSError:
        return False


class Supervisor:
    def __init__(
        self, children: dict[str, tuple[dict[str, str], int]], log_dir: Path, *, restart_delay: float = 0.5
    ):
        self.children = {n: Child(n, env, port) for n, (env, port) in children.items()}
        self.log_dir = log_dir
        self.restart_delay = restart_delay
        self.kills = 0
        self.restarts = 0
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        log_dir.mkdir(parents=True, exist_ok=True)

    def _spawn(self, c: Child) -> None:
        log = (self.log_dir / f"{c.name}.log").open("ab")
        c.proc = subprocess.Popen(  # noqa: S603 (our own interpreter and module)
            [sys.executable, "-m", f"services.{c.name}"],
            cwd=ROOT,
            env=c.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # the terminal's Ctrl-C reaches the supervisor only
        )
        log.close()
        c.starts += 1

    async def wait_ready(self, name: str, timeout: float = 90.0) -> bool:  # noqa: ASYNC109
        c = self.children[name]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if await asyncio.to_thread(ready, c.port):
                return True
            await asyncio.sleep(0.3)
        return False

    async def start_all(self) -> None:
        for c in self.children.values():
            self._spawn(c)
        for name in self.children:
            if not await self.wait_ready(name):
                tail = (self.log_dir / f"{name}.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{name} not ready in 90 s; log tail:\n{tail}")
        self._task = asyncio.create_task(self._watch(), name="supervisor")

    async def _watch(self) -> None:
        while not self._stopping:
            for c in self.children.values():
                if c.proc is not None and c.proc.poll() is not None and not self._stopping:
                    c.exits.append(c.proc.returncode)
                    await asyncio.sleep(self.restart_delay)
                    if self._stopping:
                        return
                    self._spawn(c)
                    self.restarts += 1
            await asyncio.sleep(0.2)

    def pid(self, name: str) -> int | None:
        c = self.children[name]
        return c.proc.pid if c.proc is not None and c.proc.poll() is None else None

    def kill(self, name: str) -> bool:
        """SIGKILL the service's current process (the watcher restarts it)."""
        c = self.children[name]
        if c.proc is None or c.proc.poll() is not None:
            return False
        c.proc.send_signal(signal.SIGKILL)
        self.kills += 1
        return True

    async def stop_all(self, timeout: float = 30.0) -> None:  # noqa: ASYNC109
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        live = [c.proc for c in self.children.values() if c.proc is not None and c.proc.poll() is None]
        for p in live:
            p.terminate()
        deadline = time.monotonic() + timeout
        for p in live:
            while p.poll() is None and time.monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.1)
            if p.poll() is None:
                p.kill()
                p.wait()
