/** @bus/client against a live busd, bus-runner and Podman (see stack.ts). */
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { createInterface } from "node:readline";
import { after, before, test } from "node:test";
import { fileURLToPath } from "node:url";
import { status as Code } from "@grpc/grpc-js";
import {
  BusError,
  connect,
  CreateRunRequest,
  defaultSocketPath,
  GetRunRequest,
  ListRunsRequest,
  Metadata,
  RunRequest,
  RunState,
  StaleDaemonError,
  StopRunRequest,
  StreamLogsRequest,
  unary,
  type Bus,
  type LogChunk,
  type Run,
} from "@bus/client";
import { REPO, Stack, stop, waitForSocket } from "./stack.js";

const PACKAGE = join(dirname(fileURLToPath(import.meta.url)), "..", "..");
const EXAMPLES = join(PACKAGE, "dist", "examples");

let stack: Stack;
let bus: Bus;

before(async () => {
  stack = await Stack.start();
  // connect() with no socket finds it from the environment, as busd does.
  process.env.BUS_SOCKET = stack.socket;
  bus = await connect();
});

after(async () => {
  bus?.close();
  await stack?.stop();
});

function as(account: string): Metadata {
  const metadata = new Metadata();
  metadata.set("bus-token", stack.tokens[account]);
  return metadata;
}

function create(argv: string[], metadata?: Metadata): Promise<Run> {
  const request = CreateRunRequest.fromPartial({ spec: { argv } });
  return unary(bus.containers, bus.containers.createRun, request, metadata);
}

function readmeBlock(language: string): string {
  const readme = readFileSync(join(REPO, "docs", "clients.md"), "utf8");
  const section = readme.split("## Use from Python / TypeScript / Rust")[1];
  const part = section.split(`### ${language}`)[1];
  const match = /```\w*\n([\s\S]*?)```/.exec(part);
  assert.ok(match, `no code block under ### ${language}`);
  return match[1];
}

test("run sh -c 'printf OK' prints OK and exits 0", async () => {
  const request = RunRequest.fromPartial({ spec: { argv: ["sh", "-c", "printf OK"] } });
  const events = [];
  for await (const event of bus.containers.run(request)) events.push(event);
  assert.ok(events[0].accepted);
  const output = Buffer.concat(events.flatMap((e) => (e.output ? [e.output.data] : [])));
  const exited = events.flatMap((e) => (e.exited ? [e.exited] : []));
  assert.equal(output.toString(), "OK");
  assert.equal(exited.length, 1);
  assert.equal(exited[0].exitCode, 0);
  assert.equal(exited[0].state, RunState.RUN_STATE_EXITED);
});

test("the TypeScript example in docs/clients.md is examples/run.ts, and works", () => {
  assert.equal(readmeBlock("TypeScript"), readFileSync(join(PACKAGE, "examples", "run.ts"), "utf8"));
  let out = spawnSync(process.execPath, [join(EXAMPLES, "run.js")], { env: stack.env(), encoding: "utf8" });
  assert.equal(out.status, 0, out.stderr);
  assert.equal(out.stdout, "OK");
  out = spawnSync(process.execPath, [join(EXAMPLES, "run.js"), "sh", "-c", "echo hi; exit 3"], {
    env: stack.env(),
    encoding: "utf8",
  });
  assert.equal(out.status, 3, out.stderr);
  assert.equal(out.stdout, "hi\n");
});

test("follow a run's logs to the exit frame", async () => {
  const run = await create(["sh", "-c", "for i in 1 2 3; do echo line$i; sleep 0.2; done; exit 4"]);
  const chunks: LogChunk[] = [];
  const exited = [];
  for await (const event of bus.containers.streamLogs(StreamLogsRequest.fromPartial({ runId: run.id, follow: true }))) {
    if (event.output) chunks.push(event.output);
    if (event.exited) exited.push(event.exited);
  }
  assert.equal(Buffer.concat(chunks.map((c) => c.data)).toString(), "line1\nline2\nline3\n");
  assert.deepEqual(chunks.map((c) => c.seq), chunks.map((_, i) => i + 1));
  assert.equal(exited.length, 1);
  assert.equal(exited[0].exitCode, 4);
  assert.equal(exited[0].lastSeq, chunks.at(-1)!.seq);
});

test("resume with afterSeq: no duplicates, nothing lost", async () => {
  const run = await create(["sh", "-c", "for i in 1 2 3 4 5 6; do echo n$i; sleep 0.3; done"]);
  const first: LogChunk[] = [];
  const stream = bus.containers.streamLogs(StreamLogsRequest.fromPartial({ runId: run.id, follow: true }));
  stream.on("error", () => {}); // the cancel below surfaces as CANCELLED
  for await (const event of stream) {
    if (event.output) first.push(event.output);
    if (first.length === 2) break; // leaving the loop cancels the call
  }
  const rest: LogChunk[] = [];
  let exits = 0;
  const resumed = StreamLogsRequest.fromPartial({ runId: run.id, follow: true, afterSeq: first[1].seq });
  for await (const event of bus.containers.streamLogs(resumed)) {
    if (event.output) rest.push(event.output);
    if (event.exited) exits += 1;
  }
  const all = [...first, ...rest];
  assert.deepEqual(all.map((c) => c.seq), all.map((_, i) => i + 1));
  assert.equal(Buffer.concat(all.map((c) => c.data)).toString(), [1, 2, 3, 4, 5, 6].map((i) => `n${i}\n`).join(""));
  assert.equal(exits, 1);
  const later = [];
  for await (const event of bus.containers.streamLogs(StreamLogsRequest.fromPartial({ runId: run.id, afterSeq: 3 }))) {
    if (event.output) later.push(event.output.seq);
  }
  assert.deepEqual(later, all.map((c) => c.seq).filter((s) => s > 3));
});

test("the follow-logs example resumes after busd restarts", async () => {
  const run = await create(["sh", "-c", "for i in $(seq 1 12); do echo tick$i; sleep 0.25; done"]);
  const follower = spawn(process.execPath, [join(EXAMPLES, "follow-logs.js"), run.id], { env: stack.env() });
  let stderr = "";
  follower.stderr.on("data", (d) => (stderr += d));
  const exit = new Promise<number | null>((r) => follower.once("exit", (code) => r(code)));
  const lines: string[] = [];
  const reader = createInterface({ input: follower.stdout });
  const closed = new Promise((r) => reader.once("close", r));
  const three = new Promise<void>((r) =>
    reader.on("line", (line) => {
      lines.push(line);
      if (lines.length === 3) r();
    }),
  );
  try {
    await three;
    // The connection breaks: busd dies and a new one comes up on the same socket.
    await stack.stopBusd("SIGKILL");
    await new Promise((r) => setTimeout(r, 500));
    await stack.startBusd();
    assert.equal(await exit, 0, stderr);
  } finally {
    if (follower.exitCode === null) follower.kill("SIGKILL");
  }
  await closed;
  assert.deepEqual(lines, [...Array.from({ length: 12 }, (_, i) => `tick${i + 1}`), "[exit 0]"]);
  assert.match(stderr, /\[reconnecting after seq/);
  // Our own channel reconnects to the new busd too.
  bus.close();
  bus = await connect();
});

test("another account's run is NOT_FOUND", async () => {
  const theirs = await create(["true"], as("carol"));
  const error = await unary(bus.containers, bus.containers.getRun, GetRunRequest.fromPartial({ runId: theirs.id })).then(
    () => assert.fail("GetRun of carol's run succeeded for alice"),
    (e: unknown) => e,
  );
  assert.ok(error instanceof BusError);
  assert.equal(error.code, Code.NOT_FOUND);
  assert.ok(error.reason, "ErrorInfo.reason is decoded");
  assert.equal(error.domain, "containers.bus");
});

test("billing_required: the guidance link is on the error", async () => {
  const error = await create(["true"], as("bob")).then(
    () => assert.fail("bob's run started without billing"),
    (e: unknown) => e,
  );
  assert.ok(error instanceof BusError);
  assert.equal(error.code, Code.FAILED_PRECONDITION);
  assert.equal(error.reason, "BILLING_REQUIRED");
  assert.ok(error.guidance);
  assert.match(error.helpUrl ?? "", /^https?:\/\//);
  assert.ok(error.preconditionViolations.length > 0);
});

test("the socket is found as busd finds it", () => {
  assert.equal(defaultSocketPath({ BUS_SOCKET: "/s/x.sock", XDG_RUNTIME_DIR: "/r" }), "/s/x.sock");
  assert.equal(defaultSocketPath({ BUS_SOCKET: "", XDG_RUNTIME_DIR: "/r", HOME: "/h" }), "/r/bus/busd.sock");
  assert.equal(defaultSocketPath({ HOME: "/h" }), "/h/.config/bus/run/busd.sock");
  assert.equal(defaultSocketPath({ XDG_CONFIG_HOME: "/x", HOME: "/h" }), "/x/bus/run/busd.sock");
  assert.equal(defaultSocketPath({ BUS_CONFIG_DIR: "/c", HOME: "/h" }), "/c/run/busd.sock");
});

test("connect() names the socket when busd is absent", async () => {
  await assert.rejects(connect({ socketPath: "/nonexistent/busd.sock", timeoutMs: 500 }), /\/nonexistent\/busd\.sock/);
});

test("connect() rejects a busd older than the client", async () => {
  // A busd "from before an upgrade": debug builds of busd take this revision instead.
  const socket = join(stack.dir, "old", "busd.sock");
  const old = stack.spawnBusd(socket, { BUSD_PROTOCOL_OVERRIDE: "0" });
  try {
    await waitForSocket("the old busd", socket, 20_000);
    await assert.rejects(connect({ socketPath: socket }), (error: unknown) => {
      assert.ok(error instanceof StaleDaemonError, String(error));
      assert.equal(error.busdProtocol, 0);
      assert.equal(error.pid, old.pid);
      assert.match(error.message, /bus daemon restart/);
      return true;
    });
  } finally {
    await stop(old);
  }
  // The current busd passes.
  (await connect({ socketPath: stack.socket })).close();
});

test("a named run with a published port and an identity, through the stubs", async () => {
  const request = CreateRunRequest.fromPartial({
    spec: {
      argv: ["sh", "-c", "exec httpd -f -p 8080"],
      name: "ts-web",
      participant: "ann",
      role: "agent",
      ports: [{ containerPort: 8080 }],
    },
    waitReady: true,
  });
  const run = await unary(bus.containers, bus.containers.createRun, request);
  try {
    assert.equal(run.state, RunState.RUN_STATE_RUNNING);
    assert.equal(run.profile, "service");
    assert.ok(run.ports[0].hostPort > 0);
    const got = await unary(
      bus.containers,
      bus.containers.getRun,
      GetRunRequest.fromPartial({ runId: "ts-web" }),
    );
    assert.deepEqual([got.id, got.participant, got.role], [run.id, "ann", "agent"]);
    const listed = await unary(
      bus.containers,
      bus.containers.listRuns,
      ListRunsRequest.fromPartial({ states: [RunState.RUN_STATE_RUNNING], role: "agent" }),
    );
    assert.deepEqual(
      listed.runs.map((r) => r.id),
      [run.id],
    );
  } finally {
    await unary(
      bus.containers,
      bus.containers.stopRun,
      StopRunRequest.fromPartial({ runId: run.id, force: true }),
    );
  }
});
