/**
 * The live stack the tests talk to, started the way tests/common/mod.rs does: a Podman API
 * service on a temporary socket (CONTAINERS_CONF=deploy/containers.conf), `bus-runner serve` on
 * 127.0.0.1:0 with a config file, tokens from `bus-runner token`, and `busd` on a temporary
 * socket holding alice's token. Everything is stopped by PID.
 *
 * The binaries come from $BUS_BIN_DIR, else target/debug (`cargo build --workspace --bins`).
 */
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { createConnection } from "node:net";
import { existsSync, mkdirSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { createInterface } from "node:readline";
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
  busd?: ChildProcess;
  private constructor(
    readonly dir: string,
    readonly origin: string,
    readonly socket: string,
    readonly tokens: Record<string, string>,
    private readonly engine: ChildProcess,
    private readonly runner: ChildProcess,
  ) {}

  static async start(): Promise<Stack> {
    const dir = mkdtempSync(join(tmpdir(), "bus-node-test-"));
    const engineSocket = join(dir, "podman.sock");
    const engine = spawn("podman", ["system", "service", "--time=0", `unix://${engineSocket}`], {
      env: { ...process.env, CONTAINERS_CONF: join(REPO, "deploy", "containers.conf") },
      stdio: "ignore",
    });
    await waitForSocket("podman's API service", engineSocket, 20_000);
    const state = join(dir, "runner");
    mkdirSync(state, { mode: 0o700 });
    // bob's account must set up billing before any run; alice and carol are not listed, so
    // they get the built-in `local` plan (billing active).
    const bobKeyHash = createHash("sha256").update(`bob-${randomBytes(16).toString("hex")}`).digest("hex");
    const config = join(dir, "runner.toml");
    writeFileSync(
      config,
      `[plans.team]\n\n[[accounts]]\nid = "bob"\napi_key_sha256 = "${bobKeyHash}"\nplan = "team"\n` +
        `billing = "required"\nresources = ["container:read", "container:run", "container:delete"]\n`,
    );
    const runner = spawn(
      binary("bus-runner"),
      ["serve", "--config", config, "--listen", "127.0.0.1:0", "--engine", `unix://${engineSocket}`, "--state-dir", state],
      { env: { ...process.env, RUST_LOG: "warn" }, stdio: ["ignore", "pipe", openSync(join(dir, "runner.log"), "a")] },
    );
    const lines = createInterface({ input: runner.stdout! });
    const line: string = await new Promise((r) => lines.once("line", r));
    lines.close();
    if (!line.startsWith("listening on ")) {
      throw new Error(`bus-runner printed ${JSON.stringify(line)}: ${readFileSync(join(dir, "runner.log"), "utf8")}`);
    }
    const tokens = Object.fromEntries(["alice", "bob", "carol"].map((a) => [a, mint(state, a)]));
    const stack = new Stack(dir, `http://${line.slice("listening on ".length)}`, join(dir, "run", "busd.sock"), tokens, engine, runner);
    await stack.startBusd();
    return stack;
  }

  /** The environment a client of this stack's busd runs with. */
  env(): NodeJS.ProcessEnv {
    return { ...process.env, BUS_SOCKET: this.socket };
  }

  async startBusd(): Promise<void> {
    this.busd = this.spawnBusd(this.socket);
    await waitForSocket("busd", this.socket, 20_000);
  }

  /** A busd of this stack's environment (plus `extraEnv`) on `socket`. */
  spawnBusd(socket: string, extraEnv: Record<string, string> = {}): ChildProcess {
    return spawn(binary("busd"), ["--socket", socket, "--drain", "0s"], {
      env: {
        PATH: process.env.PATH ?? "",
        HOME: join(this.dir, "home"),
        BUS_CONFIG_DIR: join(this.dir, "home", "config"),
        BUS_AI_API_URL: this.origin,
        BUS_AI_TOKEN: this.tokens.alice,
        BUS_LOG: "warn",
        ...extraEnv,
      },
      stdio: ["ignore", "ignore", openSync(join(this.dir, "busd.log"), "a")],
    });
  }

  /** Stops busd by PID: SIGTERM (a drained stop), or SIGKILL (a crash). */
  async stopBusd(signal: NodeJS.Signals = "SIGTERM"): Promise<void> {
    if (this.busd) await stop(this.busd, signal);
    this.busd = undefined;
  }

  async stop(): Promise<void> {
    await this.stopBusd();
    await stop(this.runner);
    const idFile = join(this.dir, "runner", "runner-id");
    if (existsSync(idFile)) {
      // Containers this runner left running (there is no next start to re-adopt them).
      const podman = ["--url", `unix://${join(this.dir, "podman.sock")}`];
      const label = `label=bus.runner=${readFileSync(idFile, "utf8").trim()}`;
      const listed = spawnSync("podman", [...podman, "ps", "-a", "-q", "--no-trunc", "--filter", label], { encoding: "utf8" });
      for (const id of (listed.stdout ?? "").split(/\s+/).filter(Boolean)) {
        spawnSync("podman", [...podman, "rm", "-f", "--ignore", id], { stdio: "ignore" });
      }
    }
    await stop(this.engine);
    rmSync(this.dir, { recursive: true, force: true });
  }
}
