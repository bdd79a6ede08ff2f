/**
 * The live stack the tests talk to, started through the product itself: `bus local up
 * --state-dir` in a temporary directory (Podman's API service, bus-runner with the generated
 * `dev` account plus bob's below, busd), with HOME, the config dir, busd's socket and its log
 * in that directory too; tokens for alice, bob and carol from `bus-runner token`. `bus local
 * down --state-dir` stops what it started, by PID.
 *
 * The binaries come from $BUS_BIN_DIR, else target/debug (`cargo build --workspace --bins`).
 */
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { createConnection, createServer } from "node:net";
import { existsSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

// dist/test/stack.js -> the repository root.
export const REPO = resolve(dirname(fileURLToPath(import.meta.url)), "../../../..");
const BIN_DIR = process.env.BUS_BIN_DIR || join(REPO, "target", "debug");
const ALL_SCOPES = "container:read container:run container:delete";

function binary(name: string): string {
  const path = join(BIN_DIR, name);
  if (!existsSync(path)) throw new Error(`${path} is missing: run \`cargo build --workspace --bins\` first`);
  return path;
}

function answers(path: string): Promise<boolean> {
  return new Promise((done) => {
    const socket = createConnection(path);
    socket.once("connect", () => (socket.destroy(), done(true)));
    socket.once("error", () => done(false));
  });
}

export async function waitForSocket(what: string, path: string, limitMs: number): Promise<void> {
  const deadline = Date.now() + limitMs;
  let pause = 5;
  while (!(await answers(path))) {
    if (Date.now() > deadline) throw new Error(`${what} was not ready within ${limitMs} ms`);
    await new Promise((r) => setTimeout(r, pause));
    pause = Math.min(pause * 2, 100);
  }
}

/** SIGTERM (or SIGKILL), then SIGKILL if it has not gone within 5 s; by PID. */
export async function stop(child: ChildProcess, signal: NodeJS.Signals = "SIGTERM"): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const gone = new Promise((r) => child.once("exit", r));
  child.kill(signal);
  const timer = setTimeout(() => child.kill("SIGKILL"), 5000);
  await gone;
  clearTimeout(timer);
}

/** Whether `pid` has exited (a zombie counts). */
function gone(pid: number): boolean {
  try {
    return readFileSync(`/proc/${pid}/stat`, "utf8").split(") ").pop()!.startsWith("Z");
  } catch {
    return true;
  }
}

function freePort(): Promise<number> {
  return new Promise((done, fail) => {
    const server = createServer();
    server.once("error", fail);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address() as { port: number };
      server.close(() => done(port));
    });
  });
}

function mint(stateDir: string, account: string): string {
  const out = spawnSync(
    binary("bus-runner"),
    ["token", "--state-dir", stateDir, "--account", account, "--resources", ALL_SCOPES],
    { encoding: "utf8" },
  );
  if (out.status !== 0) throw new Error(`bus-runner token failed: ${out.stderr}`);
  return out.stdout.trim();
}

export class Stack {
  tokens: Record<string, string> = {};
  private constructor(
    readonly dir: string,
    readonly origin: string,
    readonly socket: string,
    private readonly upArgs: string[],
  ) {}

  static async start(): Promise<Stack> {
    const dir = mkdtempSync(join(tmpdir(), "bus-node-test-"));
    // bob's account must set up billing before any run; alice and carol are not listed, so
    // they get the built-in `local` plan (billing active).
    const bobKeyHash = createHash("sha256").update(`bob-${randomBytes(16).toString("hex")}`).digest("hex");
    const config = join(dir, "bob.toml");
    writeFileSync(
      config,
      `[plans.team]\n\n[[accounts]]\nid = "bob"\napi_key_sha256 = "${bobKeyHash}"\nplan = "team"\n` +
        `billing = "required"\nresources = ["container:read", "container:run", "container:delete"]\n`,
    );
    const listen = `127.0.0.1:${await freePort()}`;
    const stack = new Stack(dir, `http://${listen}`, join(dir, "run", "busd.sock"), [
      "up",
      "--listen",
      listen,
      "--runner-config",
      config,
    ]);
    try {
      stack.local(...stack.upArgs);
      for (const account of ["alice", "bob", "carol"]) {
        stack.tokens[account] = mint(join(stack.state, "runner"), account);
      }
    } catch (error) {
      await stack.stop();
      throw error;
    }
    return stack;
  }

  /** `bus local`'s state directory. */
  get state(): string {
    return join(this.dir, "local");
  }

  /** The environment of `bus local`: everything it writes stays in the stack's dir. */
  private localEnv(): NodeJS.ProcessEnv {
    return {
      PATH: process.env.PATH ?? "",
      HOME: join(this.dir, "home"),
      BUS_CONFIG_DIR: join(this.dir, "config"),
      XDG_STATE_HOME: join(this.dir, "xdg-state"),
      BUS_SOCKET: this.socket,
      BUS_LOCAL_STATE_DIR: this.state,
      BUS_LOG: "warn",
    };
  }

  /** `bus local ARGS`: its stdout, or an error with its stderr. */
  local(...args: string[]): string {
    const out = spawnSync(binary("bus"), ["local", ...args], { env: this.localEnv(), encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] });
    if (out.status !== 0) throw new Error(`bus local ${args.join(" ")} failed: ${out.stderr}`);
    return out.stdout;
  }

  /** The environment a client of this stack's busd runs with. */
  env(): NodeJS.ProcessEnv {
    return { ...process.env, BUS_SOCKET: this.socket };
  }

  private busdPid(): number {
    const status = JSON.parse(this.local("status", "-o", "json"));
    return status.components.find((c: { name: string }) => c.name === "busd").pid;
  }

  /** `bus local up` again: it reuses Podman and the runner and starts busd. */
  async startBusd(): Promise<void> {
    this.local(...this.upArgs);
  }

  /** Stops busd by its PID: SIGTERM (a drained stop), or SIGKILL (a crash). */
  async stopBusd(signal: NodeJS.Signals = "SIGTERM"): Promise<void> {
    const pid = this.busdPid();
    process.kill(pid, signal);
    const deadline = Date.now() + 20_000;
    while (!gone(pid)) {
      if (Date.now() > deadline) throw new Error(`busd (pid ${pid}) did not exit within 20 s`);
      await new Promise((r) => setTimeout(r, 20));
    }
  }

  /** A busd of this stack's environment (plus `extraEnv`) on `socket`. */
  spawnBusd(socket: string, extraEnv: Record<string, string> = {}): ChildProcess {
    return spawn(binary("busd"), ["--socket", socket, "--drain", "0s"], {
      env: {
        PATH: process.env.PATH ?? "",
        HOME: join(this.dir, "home"),
        BUS_CONFIG_DIR: join(this.dir, "config"),
        BUS_AI_API_URL: this.origin,
        BUS_AI_TOKEN: this.tokens.alice,
        BUS_LOG: "warn",
        ...extraEnv,
      },
      stdio: ["ignore", "ignore", openSync(join(this.dir, "busd.log"), "a")],
    });
  }

  async stop(): Promise<void> {
    const idFile = join(this.state, "runner", "runner-id");
    if (existsSync(idFile)) {
      // Containers the runner left running (there is no next start to re-adopt them).
      const podman = ["--url", `unix://${join(this.state, "podman.sock")}`];
      const label = `label=bus.runner=${readFileSync(idFile, "utf8").trim()}`;
      const listed = spawnSync("podman", [...podman, "ps", "-a", "-q", "--no-trunc", "--filter", label], { encoding: "utf8" });
      for (const id of (listed.stdout ?? "").split(/\s+/).filter(Boolean)) {
        spawnSync("podman", [...podman, "rm", "-f", "--ignore", id], { stdio: "ignore" });
      }
    }
    try {
      this.local("down");
    } finally {
      rmSync(this.dir, { recursive: true, force: true });
    }
  }
}
