"""Finding busd's socket and opening a channel to it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Optional, Sequence, Tuple, Union

import grpc

#: The environment variable that names busd's socket.
SOCKET_ENV = "BUS_SOCKET"

#: The protocol revision this client speaks (busd's ``DaemonInfo.protocol``). A busd reporting
#: an older one was started before an upgrade: :func:`connect` refuses it.
PROTOCOL = 1


class StaleDaemonError(ConnectionError):
    """busd speaks an older protocol than this client: it was started before an upgrade.
    ``bus daemon restart`` replaces it."""

    def __init__(self, path: Path, busd_protocol: int, pid: int) -> None:
        self.busd_protocol = busd_protocol
        self.pid = pid
        super().__init__(
            f"busd (pid {pid}) on {path} speaks protocol {busd_protocol}, older than this "
            f"client's {PROTOCOL}: run `bus daemon restart`"
        )

# grpc-core >= 1.57 sends the socket path as the HTTP/2 `:authority` on `unix:` targets, which
# busd's HTTP/2 stack (h2) refuses before busd sees the call; grpc-go and tonic send "localhost".
_OPTIONS: Sequence[Tuple[str, Union[str, int]]] = (("grpc.default_authority", "localhost"),)


def _get(env: Mapping[str, str], name: str) -> Optional[str]:
    value = env.get(name)
    return value if value else None


def config_dir(env: Optional[Mapping[str, str]] = None) -> Path:
    """bus' configuration directory: ``$BUS_CONFIG_DIR``, else ``$XDG_CONFIG_HOME/bus``, else
    ``~/.config/bus``."""
    env = os.environ if env is None else env
    configured = _get(env, "BUS_CONFIG_DIR")
    if configured:
        return Path(configured)
    xdg = _get(env, "XDG_CONFIG_HOME")
    if xdg:
        return Path(xdg) / "bus"
    return Path(_get(env, "HOME") or "/") / ".config" / "bus"


def default_socket_path(env: Optional[Mapping[str, str]] = None) -> Path:
    """Where busd listens: ``$BUS_SOCKET``, else ``$XDG_RUNTIME_DIR/bus/busd.sock``, else
    ``<config dir>/run/busd.sock`` (empty variables count as unset), exactly as busd decides."""
    env = os.environ if env is None else env
    socket = _get(env, SOCKET_ENV)
    if socket:
        return Path(socket)
    runtime = _get(env, "XDG_RUNTIME_DIR")
    if runtime:
        return Path(runtime) / "bus" / "busd.sock"
    return config_dir(env) / "run" / "busd.sock"


def connect(
    socket_path: Union[str, "os.PathLike[str]", None] = None,
    *,
    timeout: Optional[float] = 10.0,
    options: Sequence[Tuple[str, Union[str, int]]] = (),
) -> grpc.Channel:
    """Opens a gRPC channel to busd on its Unix socket (default: :func:`default_socket_path`).

    The channel sets ``grpc.default_authority`` to ``localhost``. With ``timeout`` (seconds; the
    default) it waits until busd answers and raises :class:`ConnectionError` naming the socket
    when it does not, then asks busd its protocol revision and raises
    :class:`StaleDaemonError` when busd's is older than :data:`PROTOCOL`; ``timeout=None``
    connects lazily and checks nothing. Use it as a context manager, or call ``close()``.
    """
    path = Path(socket_path) if socket_path is not None else default_socket_path()
    channel = grpc.insecure_channel(f"unix:{path}", options=[*_OPTIONS, *options])
    if timeout is not None:
        try:
            grpc.channel_ready_future(channel).result(timeout=timeout)
        except grpc.FutureTimeoutError:
            channel.close()
            hint = "" if path.exists() else " (the socket does not exist)"
            raise ConnectionError(
                f"busd is not answering on {path}{hint}: start it with `bus daemon start`"
            ) from None
        from bus_client._gen.bus.daemon.v1 import daemon_pb2, daemon_pb2_grpc

        try:
            info = daemon_pb2_grpc.DaemonStub(channel).GetInfo(
                daemon_pb2.GetInfoRequest(), timeout=timeout
            )
        except grpc.RpcError as e:
            channel.close()
            raise ConnectionError(
                f"busd on {path} does not answer: run `bus daemon restart` ({e.code().name})"
            ) from None
        if info.protocol < PROTOCOL:
            channel.close()
            raise StaleDaemonError(path, info.protocol, info.pid)
    return channel
