"""bus_client against a live busd, bus-runner and Podman (see conftest.py)."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest

import bus_client
from bus_client import containers_pb2 as pb

from conftest import REPO, Stack, stop_pid, socket_answers, wait_until

HERE = Path(__file__).resolve().parents[1]
EXAMPLES = HERE / "examples"


@pytest.fixture
def channel(stack: Stack, monkeypatch: pytest.MonkeyPatch):
    # connect() with no argument finds the socket from the environment, as busd does.
    monkeypatch.setenv("BUS_SOCKET", str(stack.socket))
    with bus_client.connect() as channel:
        yield channel


def as_account(stack: Stack, account: str):
    """Call metadata that makes busd use `account`'s token for this call."""
    return [("bus-token", stack.tokens[account])]


def create(channel, argv, metadata=None) -> pb.Run:
    spec = pb.RunSpec(argv=argv)
    return bus_client.ContainersStub(channel).CreateRun(
        pb.CreateRunRequest(spec=spec), metadata=metadata, timeout=60
    )


def logs(channel, run_id, **kw):
    request = pb.StreamLogsRequest(run_id=run_id, **kw)
    return bus_client.ContainersStub(channel).StreamLogs(request, timeout=60)


def readme_block(language: str) -> str:
    """The first fenced code block under `### <language>` in docs/clients.md's "Use from" section."""
    readme = (REPO / "docs" / "clients.md").read_text()
    section = readme.split("## Use from Python / TypeScript / Rust", 1)[1]
    part = section.split(f"### {language}", 1)[1]
    match = re.search(r"```\w*\n(.*?)```", part, re.S)
    assert match, f"no code block under ### {language}"
    return match.group(1)


def test_run_prints_ok_and_exits_zero(channel):
    events = list(
        bus_client.ContainersStub(channel).Run(
            pb.RunRequest(spec=pb.RunSpec(argv=["sh", "-c", "printf OK"])), timeout=60
        )
    )
    assert events[0].HasField("accepted")
    output = b"".join(e.output.data for e in events if e.HasField("output"))
    exited = [e.exited for e in events if e.HasField("exited")]
    assert output == b"OK"
    assert len(exited) == 1 and exited[0].exit_code == 0
    assert exited[0].state == pb.RUN_STATE_EXITED


def test_readme_example_is_examples_run_py_and_works(stack: Stack):
    script = EXAMPLES / "run.py"
    assert readme_block("Python") == script.read_text(), "docs/clients.md's Python example != examples/run.py"
    out = subprocess.run(
        [sys.executable, str(script)], env=stack.env(), capture_output=True, timeout=120
    )
    assert (out.returncode, out.stdout) == (0, b"OK"), out.stderr
    out = subprocess.run(
        [sys.executable, str(script), "sh", "-c", "echo hi; exit 3"],
        env=stack.env(), capture_output=True, timeout=120,
    )
    assert (out.returncode, out.stdout) == (3, b"hi\n"), out.stderr


def test_follow_logs_to_the_exit_frame(channel):
    run = create(channel, ["sh", "-c", "for i in 1 2 3; do echo line$i; sleep 0.2; done; exit 4"])
    chunks, exited = [], []
    for event in logs(channel, run.id, follow=True):
        if event.HasField("output"):
            chunks.append(event.output)
        elif event.HasField("exited"):
            exited.append(event.exited)
    assert b"".join(c.data for c in chunks) == b"line1\nline2\nline3\n"
    assert [c.seq for c in chunks] == list(range(1, len(chunks) + 1))
    assert len(exited) == 1
    assert exited[0].exit_code == 4 and exited[0].last_seq == chunks[-1].seq


def test_resume_with_after_seq_has_no_duplicates(channel):
    run = create(channel, ["sh", "-c", "for i in 1 2 3 4 5 6; do echo n$i; sleep 0.3; done"])
    # Follow, stop after the second chunk (as a closed IDE panel would), then resume.
    first = []
    stream = logs(channel, run.id, follow=True)
    for event in stream:
        if event.HasField("output"):
            first.append(event.output)
            if len(first) == 2:
                break
    stream.cancel()
    rest, exits = [], 0
    for event in logs(channel, run.id, follow=True, after_seq=first[-1].seq):
        if event.HasField("output"):
            rest.append(event.output)
        elif event.HasField("exited"):
            exits += 1
    seqs = [c.seq for c in first + rest]
    assert seqs == list(range(1, len(seqs) + 1)), seqs
    assert b"".join(c.data for c in first + rest) == b"".join(b"n%d\n" % i for i in range(1, 7))
    assert exits == 1
    # Without follow, after_seq of an ended run gives exactly the later chunks.
    later = [e.output.seq for e in logs(channel, run.id, after_seq=3) if e.HasField("output")]
    assert later == [s for s in seqs if s > 3]


def test_follow_example_resumes_after_busd_restarts(stack: Stack, channel):
    run = create(channel, ["sh", "-c", "for i in $(seq 1 12); do echo tick$i; sleep 0.25; done"])
    follower = subprocess.Popen(
        [sys.executable, str(EXAMPLES / "follow_logs.py"), run.id],
        env=stack.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        assert follower.stdout is not None
        seen = [follower.stdout.readline() for _ in range(3)]
        assert seen == [b"tick1\n", b"tick2\n", b"tick3\n"]
        # The connection breaks: busd dies and a new one comes up on the same socket.
        stack.stop_busd(kill=True)
        time.sleep(0.5)
        stack.start_busd()
        rest, err = follower.communicate(timeout=60)
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.wait()
    assert follower.returncode == 0, err
    lines = (b"".join(seen) + rest).decode().splitlines()
    assert lines == [f"tick{i}" for i in range(1, 13)] + ["[exit 0]"]
    assert "[reconnecting after seq" in err.decode(), err


def test_foreign_run_is_not_found(stack: Stack, channel):
    theirs = create(channel, ["true"], metadata=as_account(stack, "carol"))
    with pytest.raises(bus_client.BusError) as caught, bus_client.errors():
        bus_client.ContainersStub(channel).GetRun(pb.GetRunRequest(run_id=theirs.id), timeout=30)
    error = caught.value
    assert error.code == grpc.StatusCode.NOT_FOUND
    assert error.reason, "ErrorInfo.reason is decoded"
    assert error.domain == "containers.bus"


def test_billing_required_error_has_a_guidance_link(stack: Stack, channel):
    with pytest.raises(bus_client.BusError) as caught, bus_client.errors():
        create(channel, ["true"], metadata=as_account(stack, "bob"))
    error = caught.value
    assert error.code == grpc.StatusCode.FAILED_PRECONDITION
    assert error.reason == "BILLING_REQUIRED"
    assert error.guidance
    assert error.help_url and error.help_url.startswith("http"), error.help_links
    assert error.precondition_violations


def test_socket_path_is_found_as_busd_finds_it():
    path = bus_client.default_socket_path
    assert str(path({"BUS_SOCKET": "/s/x.sock", "XDG_RUNTIME_DIR": "/r"})) == "/s/x.sock"
    assert str(path({"BUS_SOCKET": "", "XDG_RUNTIME_DIR": "/r", "HOME": "/h"})) == "/r/bus/busd.sock"
    assert str(path({"HOME": "/h"})) == "/h/.config/bus/run/busd.sock"
    assert str(path({"XDG_CONFIG_HOME": "/x", "HOME": "/h"})) == "/x/bus/run/busd.sock"
    assert str(path({"BUS_CONFIG_DIR": "/c", "HOME": "/h"})) == "/c/run/busd.sock"


def test_connect_names_the_socket_when_busd_is_absent(tmp_path):
    with pytest.raises(ConnectionError, match="does not exist"):
        bus_client.connect(tmp_path / "nothing.sock", timeout=0.5)


def test_connect_refuses_a_busd_older_than_the_client(stack: Stack, tmp_path):
    # A busd "from before an upgrade": debug builds of busd take this revision instead.
    socket = tmp_path / "old" / "busd.sock"
    old = stack.spawn_busd(socket, BUSD_PROTOCOL_OVERRIDE="0")
    try:
        wait_until("the old busd", 20, lambda: socket_answers(socket))
        with pytest.raises(bus_client.StaleDaemonError, match="bus daemon restart") as caught:
            bus_client.connect(socket)
        assert caught.value.busd_protocol == 0
        assert caught.value.pid == old.pid
    finally:
        stop_pid(old)
    # The current busd passes.
    with bus_client.connect(stack.socket) as channel:
        assert channel is not None


def test_named_runs_with_ports_and_identity_through_the_stubs(channel):
    stub = bus_client.ContainersStub(channel)
    spec = pb.RunSpec(
        argv=["sh", "-c", "exec httpd -f -p 8080"],
        name="py-web",
        participant="ann",
        role="agent",
        ports=[pb.PortMapping(container_port=8080)],
    )
    run = stub.CreateRun(pb.CreateRunRequest(spec=spec, wait_ready=True), timeout=90)
    try:
        assert run.state == pb.RUN_STATE_RUNNING
        assert run.profile == "service"
        assert run.ports[0].container_port == 8080 and run.ports[0].host_port > 0
        assert run.ports[0].host_ip == "127.0.0.1"
        # The name stands for the run wherever an id does.
        got = stub.GetRun(pb.GetRunRequest(run_id="py-web"), timeout=30)
        assert (got.id, got.participant, got.role) == (run.id, "ann", "agent")
        listed = stub.ListRuns(
            pb.ListRunsRequest(states=[pb.RUN_STATE_RUNNING], participant="ann"), timeout=30
        )
        assert [r.id for r in listed.runs] == [run.id]
        # A second live run cannot take the name.
        with pytest.raises(grpc.RpcError) as err:
            stub.CreateRun(pb.CreateRunRequest(spec=pb.RunSpec(argv=["true"], name="py-web")), timeout=30)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert run.id in err.value.details()
    finally:
        stub.StopRun(pb.StopRunRequest(run_id=run.id, force=True), timeout=30)
