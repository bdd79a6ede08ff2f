/**
 * TypeScript client for busd, bus' local daemon: the generated `bus.containers.v1` and
 * `bus.daemon.v1` clients (ts-proto over @grpc/grpc-js) on busd's Unix socket.
 *
 * - {@link defaultSocketPath} finds the socket exactly as busd does.
 * - {@link connect} opens one channel to it and returns both clients on it; it rejects a busd
 *   older than this client ({@link PROTOCOL}) with a {@link StaleDaemonError}.
 * - {@link BusError} carries busd's google.rpc details (reason, guidance, help links).
 * - {@link unary} turns a callback-style unary call into a promise that rejects with a BusError.
 */
import { homedir } from "node:os";
import { join } from "node:path";
import { Channel, credentials, Metadata, type CallOptions, type ClientUnaryCall, type ServiceError } from "@grpc/grpc-js";
import { ContainersClient } from "./gen/bus/containers/v1/containers.js";
import { DaemonClient } from "./gen/bus/daemon/v1/daemon.js";
import { BusError } from "./errors.js";

// `bus.containers.v1` at the top level; both packages also as namespaces.
export * from "./gen/bus/containers/v1/containers.js";
export * as containersV1 from "./gen/bus/containers/v1/containers.js";
export * as daemonV1 from "./gen/bus/daemon/v1/daemon.js";
export { DaemonClient } from "./gen/bus/daemon/v1/daemon.js";
export { BusError, type HelpLink } from "./errors.js";
export { Metadata } from "@grpc/grpc-js";

/** The environment variable that names busd's socket. */
export const SOCKET_ENV = "BUS_SOCKET";

type Env = Record<string, string | undefined>;
const get = (env: Env, name: string): string | undefined => env[name] || undefined;

/** bus' configuration directory: `$BUS_CONFIG_DIR`, else `$XDG_CONFIG_HOME/bus`, else `~/.config/bus`. */
export function configDir(env: Env = process.env): string {
  const configured = get(env, "BUS_CONFIG_DIR");
  if (configured) return configured;
  const xdg = get(env, "XDG_CONFIG_HOME");
  if (xdg) return join(xdg, "bus");
  const home = env === process.env ? get(env, "HOME") ?? homedir() : get(env, "HOME") ?? "/";
  return join(home, ".config", "bus");
}

/**
 * Where busd listens: `$BUS_SOCKET`, else `$XDG_RUNTIME_DIR/bus/busd.sock`, else
 * `<config dir>/run/busd.sock` (empty variables count as unset), exactly as busd decides.
 */
export function defaultSocketPath(env: Env = process.env): string {
  const socket = get(env, SOCKET_ENV);
  if (socket) return socket;
  const runtime = get(env, "XDG_RUNTIME_DIR");
  if (runtime) return join(runtime, "bus", "busd.sock");
  return join(configDir(env), "run", "busd.sock");
}

/** Both of busd's services on one channel. */
export interface Bus {
  containers: ContainersClient;
  daemon: DaemonClient;
  /** The socket this connects to. */
  socketPath: string;
  /** Closes the channel. */
  close(): void;
}

/**
 * The protocol revision this client speaks (busd's `DaemonInfo.protocol`). A busd reporting an
 * older one was started before an upgrade: {@link connect} rejects it.
 */
export const PROTOCOL = 1;

/** busd speaks an older protocol than this client; `bus daemon restart` replaces it. */
export class StaleDaemonError extends Error {
  constructor(
    readonly socketPath: string,
    readonly busdProtocol: number,
    readonly pid: number,
  ) {
    super(
      `busd (pid ${pid}) on ${socketPath} speaks protocol ${busdProtocol}, older than this ` +
        `client's ${PROTOCOL}: run \`bus daemon restart\``,
    );
    this.name = "StaleDaemonError";
  }
}

export interface ConnectOptions {
  /** The socket; default {@link defaultSocketPath}. */
  socketPath?: string;
  /** Wait this many ms for busd to answer (default 10000); 0 connects lazily. */
  timeoutMs?: number;
}

/**
 * Opens a channel to busd on its Unix socket, with the `localhost` authority busd's HTTP/2
 * stack accepts, and waits until busd answers (rejecting with an Error that names the socket
 * when it does not); then asks busd its protocol revision and rejects with a
 * {@link StaleDaemonError} when it is older than {@link PROTOCOL}. `timeoutMs: 0` connects
 * lazily and checks nothing.
 */
export async function connect(options: ConnectOptions = {}): Promise<Bus> {
  const socketPath = options.socketPath ?? defaultSocketPath();
  const channel = new Channel(`unix:${socketPath}`, credentials.createInsecure(), {
    "grpc.default_authority": "localhost",
  });
  const shared = { channelOverride: channel };
  const target = `unix:${socketPath}`;
  const containers = new ContainersClient(target, credentials.createInsecure(), shared);
  const daemon = new DaemonClient(target, credentials.createInsecure(), shared);
  const bus: Bus = { containers, daemon, socketPath, close: () => channel.close() };
  const timeoutMs = options.timeoutMs ?? 10_000;
  if (timeoutMs > 0) {
    try {
      await new Promise<void>((resolve, reject) =>
        containers.waitForReady(Date.now() + timeoutMs, (error) => (error ? reject(error) : resolve())),
      );
    } catch {
      bus.close();
      throw new Error(`busd is not answering on ${socketPath}: start it with \`bus daemon start\``);
    }
    let info;
    try {
      info = await unary(daemon, daemon.getInfo, {}, new Metadata(), { deadline: Date.now() + timeoutMs });
    } catch (error) {
      bus.close();
      throw new Error(`busd on ${socketPath} does not answer: run \`bus daemon restart\` (${String(error)})`);
    }
    if (info.protocol < PROTOCOL) {
      bus.close();
      throw new StaleDaemonError(socketPath, info.protocol, info.pid);
    }
  }
  return bus;
}

type UnaryMethod<Req, Res> = (
  request: Req,
  metadata: Metadata,
  options: Partial<CallOptions>,
  callback: (error: ServiceError | null, response: Res) => void,
) => ClientUnaryCall;

/**
 * Calls a unary method and resolves with its response, or rejects with a {@link BusError}:
 * `await unary(bus.containers, bus.containers.getRun, { runId })`.
 */
export function unary<Req, Res>(
  client: object,
  method: UnaryMethod<Req, Res>,
  request: Req,
  metadata: Metadata = new Metadata(),
  options: Partial<CallOptions> = {},
): Promise<Res> {
  return new Promise((resolve, reject) => {
    method.call(client, request, metadata, options, (error, response) =>
      error ? reject(BusError.from(error)) : resolve(response),
    );
  });
}
