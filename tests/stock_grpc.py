"""busd seen by a stock gRPC client: Python grpcio, grpcio-health-checking and
grpcio-reflection from PyPI, none of our code and none of our generated stubs.

    .venv-ci/bin/python tests/stock_grpc.py SOCKET_PATH

Prints one line per finding and exits 0 when every expectation holds, 1 (with the reason on
stderr) when one does not. Run by tests/stock_grpc.rs; scripts/setup-python makes the venv.
"""

import sys

import grpc
from google.protobuf import descriptor_pool, message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

TIMEOUT = 10  # seconds, per call

EXPECTED_SERVICES = [
    "bus.containers.v1.Containers",
    "bus.daemon.v1.Daemon",
    "grpc.health.v1.Health",
]
EXPECTED_METHODS = ["GetStatus", "Run", "CreateRun", "GetRun", "ListRuns", "DeleteRun", "StreamLogs"]


def fail(why):
    print(f"stock_grpc.py: {why}", file=sys.stderr)
    sys.exit(1)


def unary(channel, pool, method, request_fields=None):
    """Calls a unary method knowing only its full name, with messages built from reflection."""
    service_name, method_name = method.rsplit("/", 1)
    service = pool.FindServiceByName(service_name)
    desc = service.methods_by_name[method_name]
    request_cls = message_factory.GetMessageClass(desc.input_type)
    response_cls = message_factory.GetMessageClass(desc.output_type)
    call = channel.unary_unary(
        f"/{service_name}/{method_name}",
        request_serializer=request_cls.SerializeToString,
        response_deserializer=response_cls.FromString,
    )
    return call(request_cls(**(request_fields or {})), timeout=TIMEOUT)


# grpc-core >= 1.57 sends the socket path, %-encoded, as `:authority` on `unix:` targets
# (grpc/grpc#38142); h2 under tonic rejects that as malformed and resets the stream with
# PROTOCOL_ERROR before busd sees the call (hyperium/h2#487). grpc-go and tonic send
# "localhost"; Python, C++, Ruby and PHP clients must set it themselves.
OPTIONS = [("grpc.default_authority", "localhost")]


def default_authority(target):
    """What happens with a channel on default options: reported, not required."""
    with grpc.insecure_channel(target) as channel:
        try:
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=TIMEOUT)
            return "accepted"
        except grpc.RpcError as error:
            return f"rejected ({error.code().name}: {error.details()})"


def main():
    if len(sys.argv) != 2:
        fail("usage: stock_grpc.py SOCKET_PATH")
    target = f"unix:{sys.argv[1]}"
    print(f"default authority: {default_authority(target)}")
    with grpc.insecure_channel(target, options=OPTIONS) as channel:
        try:
            grpc.channel_ready_future(channel).result(timeout=TIMEOUT)
        except grpc.FutureTimeoutError:
            fail(f"no gRPC server answered on {target}")

        # grpc.health.v1: the server as a whole, and the Containers service by name.
        health = health_pb2_grpc.HealthStub(channel)
        for service in ["", "bus.containers.v1.Containers"]:
            reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=TIMEOUT)
            status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
            print(f"health {service or '(server)'}: {status}")
            if status != "SERVING":
                fail(f"health of {service!r} is {status}, expected SERVING")

        # grpc.reflection.v1alpha: list the services, then resolve Containers to its methods.
        database = ProtoReflectionDescriptorDatabase(channel)
        services = sorted(database.get_services())
        for service in services:
            print(f"service: {service}")
        missing = [s for s in EXPECTED_SERVICES if s not in services]
        if missing:
            fail(f"reflection does not list {missing}; it lists {services}")

        pool = descriptor_pool.DescriptorPool(database)
        containers = pool.FindServiceByName("bus.containers.v1.Containers")
        methods = [m.name for m in containers.methods]
        for method in containers.methods:
            streaming = " (server streaming)" if method.server_streaming else ""
            print(
                f"method: bus.containers.v1.Containers/{method.name}"
                f" {method.input_type.name} -> {method.output_type.name}{streaming}"
            )
        missing = [m for m in EXPECTED_METHODS if m not in methods]
        if missing:
            fail(f"bus.containers.v1.Containers lacks {missing}; it has {methods}")

        # Real calls with messages built only from the reflected descriptors: busd holds the
        # token and the upstream, the stock client sends nothing but the request.
        info = unary(channel, pool, "bus.daemon.v1.Daemon/GetInfo")
        print(f"daemon: identity={info.identity}")
        status = unary(channel, pool, "bus.containers.v1.Containers/GetStatus")
        print(f"runner: state={status.state}")
        if status.state != "ready":
            fail(f"GetStatus answered state={status.state!r}, expected 'ready'")

    print("ok")


if __name__ == "__main__":
    try:
        main()
    except grpc.RpcError as error:
        fail(f"call failed: {error.code().name}: {error.details()}")
