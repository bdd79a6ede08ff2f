"""Python client for busd, bus' local daemon.

busd serves gRPC on a private Unix socket and holds the account's token, so a client sends no
credentials::

    import bus_client
    from bus_client import containers_pb2 as pb

    with bus_client.connect() as channel:
        client = bus_client.ContainersStub(channel)
        print(client.GetStatus(pb.GetStatusRequest()).state)

- :func:`default_socket_path` finds the socket exactly as busd does.
- :func:`connect` opens a channel to it with the ``:authority`` busd's HTTP/2 stack accepts,
  and raises :class:`StaleDaemonError` for a busd older than this client (:data:`PROTOCOL`).
- :class:`BusError` carries busd's google.rpc error details (reason, guidance, help links);
  :func:`errors` converts a ``grpc.RpcError`` into one inside a ``with`` block.
"""

from bus_client._connect import (
    PROTOCOL,
    StaleDaemonError,
    config_dir,
    connect,
    default_socket_path,
)
from bus_client._errors import BusError, HelpLink, errors
from bus_client._gen.bus.containers.v1 import containers_pb2, containers_pb2_grpc
from bus_client._gen.bus.containers.v1.containers_pb2_grpc import ContainersStub
from bus_client._gen.bus.daemon.v1 import daemon_pb2, daemon_pb2_grpc
from bus_client._gen.bus.daemon.v1.daemon_pb2_grpc import DaemonStub

__all__ = [
    "PROTOCOL",
    "BusError",
    "ContainersStub",
    "DaemonStub",
    "HelpLink",
    "StaleDaemonError",
    "config_dir",
    "connect",
    "containers_pb2",
    "containers_pb2_grpc",
    "daemon_pb2",
    "daemon_pb2_grpc",
    "default_socket_path",
    "errors",
]
