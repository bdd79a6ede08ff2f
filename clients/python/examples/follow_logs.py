"""Follows a run's output the way an IDE panel does: print what exists, then what comes, until
the run's exit frame; when the connection to busd breaks (busd restarted, socket gone for a
moment), reconnect and resume after the last seq seen, so nothing is shown twice or lost.

    python examples/follow_logs.py RUN_ID

Prints the output as it arrives, a line `[exit N]` at the end, and exits with the run's exit
code. Reconnects are reported on stderr.
"""

from __future__ import annotations

import sys
import time
from typing import Callable

import grpc

import bus_client
from bus_client import containers_pb2 as pb

# Errors after which following again makes sense: busd or its upstream went away for a moment.
RECONNECT = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED, grpc.StatusCode.UNKNOWN}


def follow(
    run_id: str,
    on_output: Callable[[pb.LogChunk], None],
    *,
    after_seq: int = 0,
    attempts: int = 20,
) -> pb.RunExited:
    """Streams `run_id`'s output to `on_output` from `after_seq` on, and returns its exit frame."""
    failures = 0
    while True:
        try:
            with bus_client.connect(timeout=5) as channel:
                containers = bus_client.ContainersStub(channel)
                request = pb.StreamLogsRequest(run_id=run_id, follow=True, after_seq=after_seq)
                for event in containers.StreamLogs(request):
                    if event.HasField("output"):
                        after_seq = event.output.seq
                        failures = 0
                        on_output(event.output)
                    elif event.HasField("gap"):
                        after_seq = event.gap.first_available_seq - 1
                    elif event.HasField("exited"):
                        return event.exited
        except (grpc.RpcError, ConnectionError) as error:
            code = error.code() if isinstance(error, grpc.Call) else grpc.StatusCode.UNAVAILABLE
            failures += 1
            if code not in RECONNECT or failures >= attempts:
                if isinstance(error, grpc.RpcError):
                    raise bus_client.BusError.from_rpc_error(error) from error
                raise
            print(f"[reconnecting after seq {after_seq}: {code.name}]", file=sys.stderr, flush=True)
            time.sleep(min(0.1 * 2**failures, 2.0))


def main() -> int:
    if len(sys.argv) != 2:
        print("usage: follow_logs.py RUN_ID", file=sys.stderr)
        return 2

    def show(chunk: pb.LogChunk) -> None:
        out = sys.stdout if chunk.stream != pb.STD_STREAM_STDERR else sys.stderr
        out.buffer.write(chunk.data)
        out.flush()

    try:
        exited = follow(sys.argv[1], show)
    except bus_client.BusError as error:
        print(f"follow_logs: {error}", file=sys.stderr)
        return 1
    if not exited.HasField("exit_code"):
        # The run failed to start or was lost: no exit code, a reason.
        print(f"[ended without an exit code: {exited.reason}]", flush=True)
        return 125
    print(f"[exit {exited.exit_code}]", flush=True)
    return exited.exit_code


if __name__ == "__main__":
    sys.exit(main())
