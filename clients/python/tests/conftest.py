"""The live stack the tests talk to, started the way tests/common/mod.rs does: a Podman API
service on a temporary socket (CONTAINERS_CONF=deploy/containers.conf), `bus-runner serve` on
127.0.0.1:0 with a config file, tokens from `bus-runner token`, and `busd` on a temporary
socket holding alice's token. Everything is stopped by PID.

The binaries come from $BUS_BIN_DIR, else target/debug (`cargo build --workspace --bins`).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Optional

import pytest

REPO = Path(__file__).resolve().parents[3]
BIN_DIR = Path(os.environ.get("BUS_BIN_DIR") or REPO / "target" / "debug")
ALL_SCOPES = "container:read container:run container:delete"

# bob's account must set up billing before any run; alice and carol are not listed, so they
# get the built-in `local` plan (billing active).
RUNNER_CONFIG = """
[plans.team]

[[accounts]]
id = "bob"
api_key_sha256 = "{bob_key_hash}"
plan = "team"
billing = "required"
resources = ["container:read", "container:run", "container:delete"]
"""


def binary(name: str) -> Path:
    path = BIN_DIR / name
    if not path.is_file():
        pytest.fail(f"{path} is missing: run `cargo build --workspace --bins` first")
    return path


def wait_until(what: str, limit: float, ready) -> None:
    deadline = time.monotonic() + limit
    pause = 0.005
    while not ready():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} was not ready within {limit} s")
        time.sleep(pause)
        pause = min(pause * 2, 0.1)


def socket_answers(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX) as s:
        try:
            s.connect(str(path))
            return True
        except OSError:
            return False


def stop_pid(proc: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL if it has not gone within 5 s; by PID, never by name."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class Stack:
    dir: Path
    origin: str
    socket: Path
    tokens: Dict[str, str]
    runner_state: Path
    engine_socket: Path
    procs: List[subprocess.Popen] = field(default_factory=list)
    busd: Optional[subprocess.Popen] = None

    def env(self) -> Dict[str, str]:
        """The environment a client of this stack's busd runs with."""
        env = dict(os.environ)
        env["BUS_SOCKET"] = str(self.socket)
        return env

    def start_busd(self) -> None:
        self.busd = self.spawn_busd(self.socket)
        wait_until("busd", 20, lambda: socket_answers(self.socket))

    def spawn_busd(self, socket: Path, **extra_env: str) -> subprocess.Popen:
        """A busd of this stack's environment (plus ``extra_env``) on ``socket``."""
        env = {
            "PATH": os.environ.get("PATH", ""),
            "HOME": str(self.dir / "home"),
            "BUS_CONFIG_DIR": str(self.dir / "home" / "config"),
            "BUS_AI_API_URL": self.origin,
            "BUS_AI_TOKEN": self.tokens["alice"],
            "BUS_LOG": "warn",
            **extra_env,
        }
        return subprocess.Popen(
            [str(binary("busd")), "--socket", str(socket), "--drain", "0s"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=open(self.dir / "busd.log", "ab"),
        )

    def stop_busd(self, *, kill: bool = False) -> None:
        """Stops busd by PID: SIGTERM (a drained stop), or SIGKILL (a crash) with `kill`."""
        if self.busd is not None:
            if kill:
                self.busd.kill()
                self.busd.wait()
            else:
                stop_pid(self.busd)
            self.busd = None


def mint(state_dir: Path, account: str, resources: str = ALL_SCOPES) -> str:
    out = subprocess.run(
        [str(binary("bus-runner")), "token", "--state-dir", str(state_dir),
         "--account", account, "--resources", resources],
        check=True, capture_output=True, text=True,
    )
    return out.stdout.strip()


@pytest.fixture(scope="session")
def stack() -> Iterator[Stack]:
    if shutil.which("podman") is None:
        pytest.fail("podman is missing: scripts/setup-engine installs it")
    tmp = Path(tempfile.mkdtemp(prefix="bus-pytest-"))
    procs: List[subprocess.Popen] = []
    stack: Optional[Stack] = None
    try:
        engine_socket = tmp / "podman.sock"
        engine = subprocess.Popen(
            ["podman", "system", "service", "--time=0", f"unix://{engine_socket}"],
            env={**os.environ, "CONTAINERS_CONF": str(REPO / "deploy" / "containers.conf")},
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        procs.append(engine)
        wait_until("podman's API service", 20, lambda: socket_answers(engine_socket))

        state = tmp / "runner"
        state.mkdir(mode=0o700)
        config = tmp / "runner.toml"
        bob_key = "bob-" + os.urandom(16).hex()
        config.write_text(
            RUNNER_CONFIG.format(bob_key_hash=hashlib.sha256(bob_key.encode()).hexdigest())
        )
        runner = subprocess.Popen(
            [str(binary("bus-runner")), "serve", "--config", str(config),
             "--listen", "127.0.0.1:0", "--engine", f"unix://{engine_socket}",
             "--state-dir", str(state)],
            env={**os.environ, "RUST_LOG": "warn"},
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=open(tmp / "runner.log", "ab"),
            text=True,
        )
        procs.append(runner)
        line = runner.stdout.readline().strip()
        if not line.startswith("listening on "):
            pytest.fail(f"bus-runner printed {line!r} instead of its address: "
                        f"{(tmp / 'runner.log').read_text()}")
        origin = "http://" + line.removeprefix("listening on ")
        tokens = {name: mint(state, name) for name in ("alice", "bob", "carol")}
        stack = Stack(
            dir=tmp, origin=origin, socket=tmp / "run" / "busd.sock", tokens=tokens,
            runner_state=state, engine_socket=engine_socket, procs=procs,
        )
        stack.start_busd()
        yield stack
    finally:
        if stack is not None:
            stack.stop_busd()
        for proc in reversed(procs[1:]):
            stop_pid(proc)
        runner_id = tmp / "runner" / "runner-id"
        if procs and runner_id.is_file():
            # Containers this runner left running (there is no next start to re-adopt them).
            podman = ["podman", "--url", f"unix://{tmp / 'podman.sock'}"]
            listed = subprocess.run(
                podman + ["ps", "-a", "-q", "--no-trunc", "--filter",
                          f"label=bus.runner={runner_id.read_text().strip()}"],
                capture_output=True, text=True,
            )
            for container in listed.stdout.split():
                subprocess.run(podman + ["rm", "-f", "--ignore", container],
                               capture_output=True)
        if procs:
            stop_pid(procs[0])
        shutil.rmtree(tmp, ignore_errors=True)
