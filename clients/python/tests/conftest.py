"""The live stack the tests talk to, started through the product itself: `bus local up
--state-dir` in a temporary directory (Podman's API service, bus-runner with the generated
`dev` account plus bob's below, busd), with HOME, the config dir, busd's socket and its log in
that directory too; tokens for alice, bob and carol from `bus-runner token`. `bus local down
--state-dir` stops what it started, by PID.

The binaries come from $BUS_BIN_DIR, else target/debug (`cargo build --workspace --bins`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List

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


def gone(pid: int) -> bool:
    """Whether `pid` has exited (a zombie counts)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(") ", 1)[1].startswith("Z")
    except (FileNotFoundError, IndexError):
        return True


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Stack:
    dir: Path
    origin: str
    socket: Path
    tokens: Dict[str, str]
    up_args: List[str]

    @property
    def state(self) -> Path:
        """`bus local`'s state directory."""
        return self.dir / "local"

    def local_env(self) -> Dict[str, str]:
        """The environment of `bus local`: everything it writes stays in the stack's dir."""
        return {
            "PATH": os.environ.get("PATH", ""),
            "HOME": str(self.dir / "home"),
            "BUS_CONFIG_DIR": str(self.dir / "config"),
            "XDG_STATE_HOME": str(self.dir / "xdg-state"),
            "BUS_SOCKET": str(self.socket),
            "BUS_LOCAL_STATE_DIR": str(self.state),
            "BUS_LOG": "warn",
        }

    def local(self, *args: str) -> str:
        """`bus local ARGS`; its stdout, or a failure with its stderr."""
        out = subprocess.run(
            [str(binary("bus")), "local", *args], env=self.local_env(),
            stdin=subprocess.DEVNULL, capture_output=True, text=True,
        )
        if out.returncode != 0:
            raise RuntimeError(f"bus local {' '.join(args)} failed: {out.stderr}")
        return out.stdout

    def env(self) -> Dict[str, str]:
        """The environment a client of this stack's busd runs with."""
        env = dict(os.environ)
        env["BUS_SOCKET"] = str(self.socket)
        return env

    def busd_pid(self) -> int:
        status = json.loads(self.local("status", "-o", "json"))
        return next(c["pid"] for c in status["components"] if c["name"] == "busd")

    def start_busd(self) -> None:
        """`bus local up` again: it reuses Podman and the runner and starts busd."""
        self.local(*self.up_args)

    def stop_busd(self, *, kill: bool = False) -> None:
        """Stops busd by its PID: SIGTERM (a drained stop), or SIGKILL (a crash) with `kill`."""
        pid = self.busd_pid()
        os.kill(pid, signal.SIGKILL if kill else signal.SIGTERM)
        wait_until("busd's exit", 20, lambda: gone(pid))

    def spawn_busd(self, socket: Path, **extra_env: str) -> subprocess.Popen:
        """A busd of this stack's environment (plus ``extra_env``) on ``socket``."""
        env = {
            "PATH": os.environ.get("PATH", ""),
            "HOME": str(self.dir / "home"),
            "BUS_CONFIG_DIR": str(self.dir / "config"),
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

    def remove_containers(self) -> None:
        """Containers the runner left running (there is no next start to re-adopt them)."""
        runner_id = self.state / "runner" / "runner-id"
        if not runner_id.is_file():
            return
        podman = ["podman", "--url", f"unix://{self.state / 'podman.sock'}"]
        listed = subprocess.run(
            podman + ["ps", "-a", "-q", "--no-trunc", "--filter",
                      f"label=bus.runner={runner_id.read_text().strip()}"],
            capture_output=True, text=True,
        )
        for container in listed.stdout.split():
            subprocess.run(podman + ["rm", "-f", "--ignore", container], capture_output=True)


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
    bob_key = "bob-" + os.urandom(16).hex()
    config = tmp / "bob.toml"
    config.write_text(
        RUNNER_CONFIG.format(bob_key_hash=hashlib.sha256(bob_key.encode()).hexdigest())
    )
    listen = f"127.0.0.1:{free_port()}"
    stack = Stack(
        dir=tmp, origin=f"http://{listen}", socket=tmp / "run" / "busd.sock", tokens={},
        up_args=["up", "--listen", listen, "--runner-config", str(config)],
    )
    try:
        stack.local(*stack.up_args)
        stack.tokens = {
            name: mint(stack.state / "runner", name) for name in ("alice", "bob", "carol")
        }
        yield stack
    finally:
        stack.remove_containers()
        try:
            stack.local("down")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
