// TypeScript client for plugind, the plugincontrol daemon.
//
//   const pc = createClient("unix:///run/plugind/plugind.sock");
//   for await (const p of listPlugins(pc.control, { view: PluginView.BASIC })) { ... }
//   for await (const ev of watchHealth(pc.control, { signal })) { ... }
//   pc.close();
//
// The message types and service descriptors are generated from proto/ by
// buf with protoc-gen-es (src/gen, re-exported here).
import type * as http2 from "node:http2";
import * as net from "node:net";
import { createClient as createConnectClient, Code, ConnectError, type Client, type Interceptor, type Transport } from "@connectrpc/connect";
import { createGrpcTransport, Http2SessionManager } from "@connectrpc/connect-node";
import { PluginControlService, PluginView } from "./gen/plugincontrol/v1/control_pb.js";
import type { PluginStatus } from "./gen/plugincontrol/v1/spec_pb.js";
import { PluginGatewayService } from "./gen/plugincontrol/v1/gateway_pb.js";
import { FleetService } from "./gen/plugincontrol/v1/fleet_pb.js";
import { HealthEventType, HealthView, type HealthEvent } from "./gen/plugincontrol/v1/health_pb.js";

export * from "./gen/plugincontrol/v1/candidate_pb.js";
export * from "./gen/plugincontrol/v1/control_pb.js";
export * from "./gen/plugincontrol/v1/gateway_pb.js";
export * from "./gen/plugincontrol/v1/fleet_pb.js";
export * from "./gen/plugincontrol/v1/health_pb.js";
export * from "./gen/plugincontrol/v1/spec_pb.js";
export { PanicDetailSchema, type PanicDetail } from "./gen/plugincontrol/plugin/v1/plugin_pb.js";
export { Code, ConnectError } from "@connectrpc/connect";

/** Options of createClient. */
export interface ClientOptions {
  /**
   * Sent as "authorization: Bearer <token>" with every call (plugind
   * --auth-file). Over TCP, plugind requires TLS for it (or loopback).
   */
  token?: string;
  /**
   * TLS for a tcp:// address (plugind --tls-cert/--tls-key): the connection
   * is HTTPS/2 and the server's certificate is verified against ca (the
   * system roots when unset). cert and key (PEM) are the client certificate
   * plugind requires with --tls-client-ca (mTLS).
   */
  tls?: TLSOptions;
  /**
   * Interval of HTTP/2 keepalive pings on an idle connection (default 30s).
   * At least 5000: plugind closes connections that ping more often
   * (GOAWAY too_many_pings).
   */
  pingIntervalMs?: number;
}

/** TLS settings of a tcp:// connection. */
export interface TLSOptions {
  /** CA certificates (PEM) that sign plugind's certificate. */
  ca?: string | Buffer;
  /** Client certificate (PEM), with key, for mTLS. */
  cert?: string | Buffer;
  /** Private key (PEM) of cert. */
  key?: string | Buffer;
  /** Name the server certificate must carry (default: the address's host). */
  serverName?: string;
}

/** The shortest keepalive ping interval plugind accepts (ms). */
export const MIN_PING_INTERVAL_MS = 5_000;

/** A connection to one plugind. */
export interface PlugindClient {
  /** Load, Reload, Unload, ListPlugins, Health, WatchHealth. */
  control: Client<typeof PluginControlService>;
  /** Invoke. */
  gateway: Client<typeof PluginGatewayService>;
  /**
   * The fleet (a plugind started with --fleet-etcd; others answer
   * FailedPrecondition): ListNodes, FleetStatus, ApplyFleetPlugin,
   * DeleteFleetPlugin, StartRollout, GetRollout, Pause/Resume/AbortRollout.
   */
  fleet: Client<typeof FleetService>;
  /** Closes the HTTP/2 connection; calls in flight fail. */
  close(): void;
}

/**
 * Parses a daemon address, as the Go client and pluginctl accept it:
 * "unix:///abs/path.sock", "unix:/abs/path.sock", "unix:relative.sock" or
 * "tcp://host:port".
 */
export function parseAddr(addr: string): { baseUrl: string; socketPath?: string } {
  if (addr.startsWith("unix:")) {
    let p = addr.slice("unix:".length);
    if (p.startsWith("//")) p = p.slice(2);
    if (p === "") throw new Error(`bad address "${addr}": empty socket path`);
    // The authority is only sent as :authority; the socket does the routing.
    return { baseUrl: "http://localhost", socketPath: p };
  }
  if (addr.startsWith("tcp://")) {
    const hp = addr.slice("tcp://".length);
    if (!/^(\[[^\]]+\]|[^:/]+):\d+$/.test(hp)) throw new Error(`bad address "${addr}": want tcp://host:port`);
    return { baseUrl: `http://${hp}` };
  }
  throw new Error(`bad address "${addr}": want unix:///abs/path, unix:relative/path or tcp://host:port`);
}

/**
 * Creates a client of the daemon at addr over gRPC: HTTP/2 on a unix socket,
 * or on TCP (plaintext on loopback, or TLS with options.tls). The connection
 * is made by the first call.
 */
export function createClient(addr: string, options: ClientOptions = {}): PlugindClient {
  const { transport, close } = newTransport(addr, options, []);
  return {
    control: createConnectClient(PluginControlService, transport),
    gateway: createConnectClient(PluginGatewayService, transport),
    fleet: createConnectClient(FleetService, transport),
    close,
  };
}

/** Options of createPluginTransport. */
export interface PluginTransportOptions extends ClientOptions {
  /**
   * The plugin every call is for, sent in the "plugincontrol-plugin" header:
   * needed on the daemon's shared TCP endpoint (plugind --endpoint-listen),
   * not on a plugin's own unix socket.
   */
  plugin?: string;
}

/** A transport to one plugin's own API. */
export interface PluginTransport {
  /** Hand it to createClient of @connectrpc/connect with the plugin's service. */
  transport: Transport;
  /** Closes the HTTP/2 connection; calls in flight fail. */
  close(): void;
}

/**
 * Creates a gRPC transport to a plugin's own API at its endpoint
 * (PluginStatus.endpoint, stable across reloads), for a client generated from
 * the plugin's protos:
 *
 *   const { plugins } = await pc.control.listPlugins({});
 *   const kv = plugins.find((p) => p.name === "kv")!;
 *   const pt = createPluginTransport(kv.endpoint);
 *   const client = createClient(KV, pt.transport); // createClient of @connectrpc/connect
 */
export function createPluginTransport(endpoint: string, options: PluginTransportOptions = {}): PluginTransport {
  const extra: Interceptor[] = [];
  const plugin = options.plugin;
  if (plugin !== undefined) {
    extra.push((next) => (req) => {
      req.header.set("plugincontrol-plugin", plugin);
      return next(req);
    });
  }
  return newTransport(endpoint, options, extra);
}

function newTransport(addr: string, options: ClientOptions, extra: Interceptor[]): PluginTransport {
  const parsed = parseAddr(addr);
  const pingIntervalMs = options.pingIntervalMs ?? 30_000;
  if (pingIntervalMs < MIN_PING_INTERVAL_MS) {
    throw new Error(`pingIntervalMs ${pingIntervalMs}: plugind accepts keepalive pings every ${MIN_PING_INTERVAL_MS}ms at most`);
  }
  let baseUrl = parsed.baseUrl;
  let sessionOptions: http2.ClientSessionOptions | http2.SecureClientSessionOptions = {};
  if (parsed.socketPath !== undefined) {
    if (options.tls !== undefined) throw new Error(`tls is for tcp:// addresses, not ${addr}`);
    const socketPath = parsed.socketPath;
    sessionOptions = { createConnection: () => net.connect(socketPath) };
  } else if (options.tls !== undefined) {
    baseUrl = baseUrl.replace(/^http:/, "https:");
    const t = options.tls;
    sessionOptions = { ca: t.ca, cert: t.cert, key: t.key, servername: t.serverName };
  }
  const sessionManager = new Http2SessionManager(baseUrl, { pingIntervalMs, pingTimeoutMs: 10_000 }, sessionOptions);
  const interceptors: Interceptor[] = [retryRefused, ...extra];
  const token = options.token;
  if (token !== undefined) {
    interceptors.push((next) => (req) => {
      req.header.set("authorization", `Bearer ${token}`);
      return next(req);
    });
  }
  return { transport: createGrpcTransport({ baseUrl, sessionManager, interceptors }), close: () => sessionManager.abort() };
}

/**
 * retryRefused sends a unary call again when the server refused its HTTP/2
 * stream (REFUSED_STREAM): the server did not process it, so sending it
 * again is safe for any method. A daemon that drains its connections (a
 * reload in place, a shutdown) refuses the streams that raced its GOAWAY;
 * grpc-go's clients retry those by themselves, Node's HTTP/2 client does
 * not. At most three attempts; the retry goes to a new connection.
 */
const retryRefused: Interceptor = (next) => async (req) => {
  if (req.stream) return next(req);
  for (let attempt = 1; ; attempt++) {
    try {
      return await next(req);
    } catch (e) {
      const err = ConnectError.from(e);
      if (attempt >= 3 || !/REFUSED_STREAM/.test(err.rawMessage)) throw e;
    }
  }
};

/**
 * Lists plugins, sorted by name, following ListPlugins' pages to the last
 * (a page holds at most 4 MiB; a daemon with many plugins at the spec limits
 * needs several). view defaults to the full status; PluginView.BASIC leaves
 * out the specs.
 *
 *   for await (const p of listPlugins(pc.control, { view: PluginView.BASIC })) console.log(p.name, p.state);
 */
export async function* listPlugins(
  control: Client<typeof PluginControlService>,
  req: { view?: PluginView; names?: string[]; pageSize?: number; signal?: AbortSignal } = {},
): AsyncGenerator<PluginStatus> {
  let pageToken = "";
  for (;;) {
    const res = await control.listPlugins(
      { view: req.view ?? PluginView.UNSPECIFIED, names: req.names ?? [], pageSize: req.pageSize ?? 0, pageToken },
      { signal: req.signal },
    );
    yield* res.plugins;
    if (res.nextPageToken === "") return;
    pageToken = res.nextPageToken;
  }
}

/** Options of watchHealth. */
export interface WatchHealthOptions {
  /** Plugins to watch; empty or unset means all. */
  names?: string[];
  /** Resume after this revision; 0 (default) starts with a snapshot. */
  sinceRevision?: bigint;
  /**
   * How much of each plugin's health the events carry: HealthView.COMPACT
   * sends only name, state, generation and revision (default: full).
   */
  view?: HealthView;
  /** Ends the iteration (without an error) when aborted. */
  signal?: AbortSignal;
  /** First reconnect delay, doubled per failure (default 100ms). */
  backoffInitialMs?: number;
  /** Longest reconnect delay (default 5s). */
  backoffMaxMs?: number;
  /** Called before each reconnect, with the error that ended the stream. */
  onReconnect?: (err: ConnectError, retryInMs: number) => void;
}

/** Codes after which reopening the stream may help. */
const retryable = new Set<Code>([Code.Unavailable, Code.ResourceExhausted, Code.Internal, Code.Unknown, Code.Aborted, Code.DeadlineExceeded]);

/**
 * Streams the daemon's health events (snapshot or replay, SYNCED, then live
 * CHANGED, REMOVED and BOOKMARK events) and, when the stream breaks,
 * reconnects with backoff and resumes after the last revision it saw. After a
 * reconnect the daemon replays what was missed, or sends a snapshot flagged
 * `reset` that replaces everything known before (see HealthEvent.reset).
 * Errors reconnecting cannot fix (a bad name, authentication) are thrown.
 */
export async function* watchHealth(
  control: Client<typeof PluginControlService>,
  options: WatchHealthOptions = {},
): AsyncGenerator<HealthEvent, void, undefined> {
  const initial = options.backoffInitialMs ?? 100;
  const maxDelay = options.backoffMaxMs ?? 5_000;
  let since = options.sinceRevision ?? 0n;
  let delay = initial;
  const signal = options.signal;
  for (;;) {
    let received = 0;
    try {
      for await (const resp of control.watchHealth({ names: options.names ?? [], sinceRevision: since, view: options.view ?? HealthView.UNSPECIFIED }, { signal })) {
        const ev = resp.event;
        if (ev === undefined) continue;
        received++;
        since = advanceRevision(since, ev);
        yield ev;
      }
      // The daemon ended the stream: reconnect like after Unavailable.
    } catch (e) {
      if (signal?.aborted) return;
      const err = ConnectError.from(e);
      if (!retryable.has(err.code)) throw err;
      if (received > 0) delay = initial;
      if (errorReason(err) === "DAEMON_RELOADING") {
        // The daemon reloads in place: its next image takes the new stream
        // within a few hundred milliseconds (the connection waits in the
        // socket's backlog). Nothing went wrong: no onReconnect, no backoff.
        await sleep(10, signal);
        continue;
      }
      options.onReconnect?.(err, delay);
    }
    if (signal?.aborted) return;
    await sleep(delay, signal);
    if (signal?.aborted) return;
    delay = Math.min(delay * 2, maxDelay);
  }
}

/**
 * The reason of the google.rpc.ErrorInfo an error of the daemon carries
 * (such as "PLUGIN_NOT_FOUND", or "DAEMON_RELOADING" for a stream the daemon
 * ended to reload itself in place); "" without one.
 */
export function errorReason(err: ConnectError): string {
  for (const d of err.details) {
    // Details the client did not decode arrive as their type name and bytes.
    if ("type" in d && d.type === "google.rpc.ErrorInfo" && d.value instanceof Uint8Array) return firstStringField(d.value);
  }
  return "";
}

// firstStringField reads field 1 (a string: ErrorInfo.reason) of an
// encoded message.
function firstStringField(b: Uint8Array): string {
  let i = 0;
  const varint = (): number => {
    let v = 0;
    for (let shift = 0; i < b.length; shift += 7) {
      const x = b[i++];
      v += (x & 0x7f) * 2 ** shift;
      if (x < 0x80) break;
    }
    return v;
  };
  while (i < b.length) {
    const key = varint();
    const field = Math.floor(key / 8);
    switch (key & 7) {
      case 0:
        varint();
        break;
      case 1:
        i += 8;
        break;
      case 2: {
        const n = varint();
        if (field === 1) return new TextDecoder().decode(b.subarray(i, i + n));
        i += n;
        break;
      }
      case 5:
        i += 4;
        break;
      default:
        return "";
    }
  }
  return "";
}

/**
 * The revision a watcher is at after ev: SYNCED and BOOKMARK carry exactly
 * that revision (trusted even when it went back, after a daemon restart);
 * other events only move it forward.
 */
export function advanceRevision(last: bigint, ev: HealthEvent): bigint {
  if (ev.type === HealthEventType.SYNCED || ev.type === HealthEventType.BOOKMARK) return ev.revision;
  return ev.revision > last ? ev.revision : last;
}

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const t = setTimeout(done, ms);
    function done() {
      clearTimeout(t);
      signal?.removeEventListener("abort", done);
      resolve();
    }
    signal?.addEventListener("abort", done, { once: true });
  });
}
