"""busd seen by a stock gRPC client: Python grpcio, grpcio-health-checking and
grpcio-reflection from PyPI, none of our code and none of our checked-in stubs: stubs are
generated here from proto/ alone (grpcio-tools), and every channel uses grpcio's default
options, so the `:authority` is whatever grpc-core sends for the target.

    .venv-ci/bin/python cli/tests/stock_grpc.py SOCKET_PATH PROTO_DIR

Prints one line per finding and exits 0 when every expectation holds, 1 (with the reason on
stderr) when one does not. Run by cli/tests/stock_grpc.rs; scripts/setup-python makes the venv.
"""

import importlib
import os
import queue
import sys
import tempfile
import time
import urllib.parse

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


def generate_stubs(proto_dir):
    """Python stubs for busd's protos, made now from proto/ by grpcio-tools."""
    from grpc_tools import protoc
    import grpc_tools

    out = tempfile.mkdtemp(prefix="stock-grpc-stubs-")
    protos = []
    for root, _, files in os.walk(proto_dir):
        protos += [os.path.join(root, f) for f in files if f.endswith(".proto")]
    well_known = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    args = ["protoc", f"-I{proto_dir}", f"-I{well_known}", f"--python_out={out}", f"--grpc_python_out={out}"]
    if protoc.main(args + protos) != 0:
        fail(f"grpcio-tools could not compile {proto_dir}")
    sys.path.insert(0, out)
    return {
        name: importlib.import_module(f"bus.containers.v1.{name}")
        for name in ["containers_pb2", "containers_pb2_grpc", "exec_pb2", "exec_pb2_grpc"]
    }


def channels(socket_path):
    """The ways a stock client reaches busd: default options on both `unix:` spellings, and the
    authority set to the socket path as grpc-core sends it, raw and percent-encoded."""
    encoded = urllib.parse.quote(socket_path, safe="")
    return [
        ("unix:PATH", f"unix:{socket_path}", []),
        ("unix://PATH", f"unix://{socket_path}", []),
        ("authority=raw path", f"unix:{socket_path}", [("grpc.default_authority", socket_path)]),
        ("authority=encoded path", f"unix:{socket_path}", [("grpc.default_authority", encoded)]),
    ]


def run_to_exit(pb, stub):
    """Run streams accepted, output and exited; returns (run id, chunks, exited)."""
    spec = pb["containers_pb2"].RunSpec(argv=["sh", "-c", "printf one; sleep 0.3; printf two; sleep 0.3; printf three; exit 3"])
    run_id, chunks, exited = None, [], None
    for event in stub.Run(pb["containers_pb2"].RunRequest(spec=spec), timeout=60):
        kind = event.WhichOneof("event")
        if kind == "accepted":
            run_id = event.accepted.id
        elif kind == "output":
            chunks.append((event.output.seq, event.output.data))
        elif kind == "exited":
            exited = event.exited
    if run_id is None or exited is None:
        fail(f"Run did not stream accepted and exited (run {run_id}, exited {exited})")
    return run_id, chunks, exited


def logs_after(pb, stub, run_id, after_seq):
    request = pb["containers_pb2"].StreamLogsRequest(run_id=run_id, after_seq=after_seq)
    chunks, exited = [], None
    for event in stub.StreamLogs(request, timeout=30):
        kind = event.WhichOneof("event")
        if kind == "output":
            chunks.append((event.output.seq, event.output.data))
        elif kind == "exited":
            exited = event.exited
    return chunks, exited


def wait_running(pb, stub, run_id):
    running = pb["containers_pb2"].RunState.Value("RUN_STATE_RUNNING")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        run = stub.GetRun(pb["containers_pb2"].GetRunRequest(run_id=run_id), timeout=TIMEOUT)
        if run.state == running:
            return
        time.sleep(0.1)
    fail(f"run {run_id} did not reach RUNNING")


def exec_round_trip(pb, exec_stub, run_id):
    """`cat` in the run: what goes to its stdin comes back on stdout, then exit 0."""
    e = pb["exec_pb2"]
    requests = queue.Queue()
    requests.put(e.ExecRequest(start=e.ExecStart(run_id=run_id, argv=["cat"], stdin=True)))

    def outgoing():
        while True:
            item = requests.get()
            if item is None:
                return
            yield item

    out, exit_code = b"", None
    for response in exec_stub.Exec(outgoing(), timeout=60):
        kind = response.WhichOneof("msg")
        if kind == "started":
            requests.put(e.ExecRequest(stdin=b"ping from a stock client\n"))
            requests.put(e.ExecRequest(close_stdin=e.CloseStdin()))
        elif kind == "stdout":
            out += response.stdout.data
        elif kind == "exit":
            exit_code = response.exit.exit_code
    requests.put(None)
    return out, exit_code


def not_found_details(pb, stub):
    """A missing run: NOT_FOUND with google.rpc ErrorInfo and LocalizedMessage."""
    from google.rpc import error_details_pb2, status_pb2

    try:
        stub.GetRun(pb["containers_pb2"].GetRunRequest(run_id="r-00000000000000000000000000"), timeout=TIMEOUT)
    except grpc.RpcError as error:
        code = error.code().name
        raw = dict(error.trailing_metadata() or ()).get("grpc-status-details-bin")
        if raw is None:
            fail(f"{code} carries no grpc-status-details-bin")
        status = status_pb2.Status.FromString(raw)
        info, message = None, None
        for detail in status.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
            elif detail.Is(error_details_pb2.LocalizedMessage.DESCRIPTOR):
                message = error_details_pb2.LocalizedMessage()
                detail.Unpack(message)
        if info is None or message is None or not message.message:
            fail(f"{code}: ErrorInfo {info}, LocalizedMessage {message}")
        return code, info.reason, message.message
    fail("GetRun of a missing run succeeded")


def calls(pb, label, channel):
    """Every kind of call a client makes, on one channel."""
    health = health_pb2_grpc.HealthStub(channel)
    reply = health.Check(health_pb2.HealthCheckRequest(), timeout=TIMEOUT)
    print(f"{label}: health {health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)}")
    services = sorted(ProtoReflectionDescriptorDatabase(channel).get_services())
    print(f"{label}: reflection lists Containers: {'bus.containers.v1.Containers' in services}")
    stub = pb["containers_pb2_grpc"].ContainersStub(channel)
    status = stub.GetStatus(pb["containers_pb2"].GetStatusRequest(), timeout=TIMEOUT)
    print(f"{label}: GetStatus state={status.state}")

    run_id, chunks, exited = run_to_exit(pb, stub)
    output = b"".join(data for _, data in chunks)
    print(f"{label}: Run output={output.decode()} exit={exited.exit_code}")
    if len(chunks) >= 2:
        after = chunks[0][0]
        later, end = logs_after(pb, stub, run_id, after)
        want = [c for c in chunks if c[0] > after]
        same = later == want and end is not None and end.exit_code == exited.exit_code
        print(f"{label}: StreamLogs after_seq matches Run: {same}")
    else:
        fail(f"the run's output came as {len(chunks)} chunk(s); StreamLogs after_seq needs 2")

    created = stub.CreateRun(
        pb["containers_pb2"].CreateRunRequest(spec=pb["containers_pb2"].RunSpec(argv=["sleep", "60"])),
        timeout=TIMEOUT,
    )
    try:
        wait_running(pb, stub, created.id)
        out, code = exec_round_trip(pb, pb["exec_pb2_grpc"].ExecStub(channel), created.id)
        print(f"{label}: Exec stdout={out.decode().strip()} exit={code}")
    finally:
        stub.DeleteRun(pb["containers_pb2"].DeleteRunRequest(run_id=created.id), timeout=TIMEOUT)


def main():
    if len(sys.argv) != 3:
        fail("usage: stock_grpc.py SOCKET_PATH PROTO_DIR")
    socket_path, proto_dir = sys.argv[1], sys.argv[2]
    pb = generate_stubs(proto_dir)
    target = f"unix:{socket_path}"
    with grpc.insecure_channel(target) as channel:
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
        code, reason, next_step = not_found_details(pb, pb["containers_pb2_grpc"].ContainersStub(channel))
        print(f"missing run: {code} reason={reason} next step: {next_step}")

    for label, target, options in channels(socket_path):
        with grpc.insecure_channel(target, options=options) as channel:
            calls(pb, label, channel)

    print("ok")


if __name__ == "__main__":
    try:
        main()
    except grpc.RpcError as error:
        fail(f"call failed: {error.code().name}: {error.details()}")
