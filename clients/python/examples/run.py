import sys
import bus_client
from bus_client import containers_pb2 as pb

with bus_client.connect() as channel, bus_client.errors():
    containers = bus_client.ContainersStub(channel)
    spec = pb.RunSpec(argv=sys.argv[1:] or ["sh", "-c", "printf OK"])
    output = b""
    for event in containers.Run(pb.RunRequest(spec=spec)):
        if event.HasField("output"):
            output += event.output.data
        elif event.HasField("exited"):
            sys.stdout.buffer.write(output)
            # No exit code: the run failed to start or was lost (`exited.reason` says).
            exited = event.exited
            sys.exit(exited.exit_code if exited.HasField("exit_code") else 125)
