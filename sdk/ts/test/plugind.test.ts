// Tests of the TypeScript client against the real plugind: built from this
// repository with `go build` (or taken from $PLUGIND_BIN_DIR, holding
// plugind and plugins/), started on a unix socket and on loopback TCP.
import { test, before, after } from "node:test";
import * as assert from "node:assert/strict";
import { spawn, execFileSync, type ChildProcess } from "node:child_process";
import * as fs from "node:fs";
import * as net from "node:net";
import * as os from "node:os";
import * as path from "node:path";
import { fileURLToPath } from "node:url";
import { createClient as createServiceClient } from "@connectrpc/connect";
import { TickerService } from "../src/gen/plugincontrol/example/v1/ticker_pb.js";
import {
  createClient,
  createPluginTransport,
  listPlugins,
  watchHealth,
  Code,
  ConnectError,
  CandidateFailureSchema,
  CandidateStage,
  HealthEventType,
  HealthView,
  PluginState,
  PluginView,
  type PluginStatus,
  BakeResult,
  type HealthEvent,
  type PlugindClient,
  type ClientOptions,
} from "../src/index.js";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../../..");
let bins = "";
let tmp = "";

before(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), "pc-ts-"));
  if (process.env.PLUGIND_BIN_DIR) {
    bins = process.env.PLUGIND_BIN_DIR;
    return;
  }
  bins = path.join(tmp, "bin");
  execFileSync("go", ["build", "-o", bins + "/", "./cmd/plugind", "./internal/testbin/etcd"], { cwd: root, stdio: "inherit" });
  execFileSync("go", ["build", "-o", path.join(bins, "plugins") + "/", "./examples/plugins/...", "./test/plugins/..."], { cwd: root, stdio: "inherit" });
});

after(() => {
  fs.rmSync(tmp, { recursive: true, force: true });
});

interface Daemon {
  proc: ChildProcess;
  addr: string;
  stop(): Promise<void>;
  /** What plugind wrote to its stderr so far. */
  stderr(): string;
}

// startDaemon runs plugind with echo loaded and waits until echo serves (as
// a client with clientOptions sees it). More flags go in extraArgs.
async function startDaemon(stateDir: string, listen?: string, extraArgs: string[] = [], clientOptions: ClientOptions = {}): Promise<Daemon> {
  const sock = path.join(stateDir, "plugind.sock");
  const addr = listen ?? "unix://" + sock;
  const args = ["--plugin-dir", path.join(bins, "plugins"), "--state-dir", stateDir, "--load", "echo", "--listen", addr, ...extraArgs];
  // Plaintext loopback TCP without tokens is refused unless asked for.
  if (addr.startsWith("tcp://") && extraArgs.length === 0) args.push("--insecure-tcp");
  const proc = spawn(path.join(bins, "plugind"), args, { stdio: ["ignore", "ignore", "pipe"] });
  let stderr = "";
  proc.stderr!.on("data", (b: Buffer) => (stderr += b.toString()));
  const exited = new Promise<void>((resolve) => proc.once("exit", () => resolve()));
  const stop = async () => {
    if (proc.exitCode === null && proc.signalCode === null) proc.kill("SIGTERM");
    await exited;
  };
  const c = createClient(addr, clientOptions);
  try {
    const deadline = Date.now() + 20_000;
    for (;;) {
      try {
        const { plugins } = await c.control.listPlugins({}, { timeoutMs: 1000 });
        if (plugins.some((p) => p.name === "echo" && p.state === PluginState.SERVING)) break;
      } catch {
        // not up yet
      }
      if (Date.now() > deadline || proc.exitCode !== null) {
        await stop();
        throw new Error(`plugind did not come up on ${addr}:\n${stderr}`);
      }
      await new Promise((r) => setTimeout(r, 50));
    }
  } finally {
    c.close();
  }
  return { proc, addr, stop, stderr: () => stderr };
}

// freePort is a port of 127.0.0.1 that was free a moment ago, picked below
// Linux's ephemeral range (32768 and up): a port from that range, closed
// again, can go to any process's next outgoing connection before the
// daemon or etcd binds it (internal/etcdtest.FreePort says more).
async function freePort(): Promise<number> {
  for (let i = 0; i < 200; i++) {
    const port = 10000 + Math.floor(Math.random() * 22768);
    const free = await new Promise<boolean>((resolve) => {
      const srv = net.createServer();
      srv.once("error", () => resolve(false));
      srv.listen(port, "127.0.0.1", () => srv.close(() => resolve(true)));
    });
    if (free) return port;
  }
  throw new Error("no free port in [10000, 32768) on 127.0.0.1 after 200 tries");
}

async function withDaemon(listen: "unix" | "tcp", fn: (c: PlugindClient, d: Daemon, state: string) => Promise<void>) {
  const state = fs.mkdtempSync(path.join(tmp, "state-"));
  const d = await startDaemon(state, listen === "tcp" ? `tcp://127.0.0.1:${await freePort()}` : undefined);
  const c = createClient(d.addr);
  try {
    await fn(c, d, state);
  } finally {
    c.close();
    await d.stop();
  }
}

test("unary calls over a unix socket", async () => {
  await withDaemon("unix", async (c) => {
    const { plugins } = await c.control.listPlugins({});
    assert.deepEqual(plugins.map((p) => p.name), ["echo"]);
    assert.equal(plugins[0].generation, 1n);

    const loaded = await c.control.load({ spec: { name: "echo2", binary: "echo" } });
    assert.equal(loaded.plugin?.state, PluginState.SERVING);

    const res = await c.gateway.invoke({ plugin: "echo2", method: "echo", payload: new TextEncoder().encode("hello") });
    assert.equal(new TextDecoder().decode(res.payload), "hello");
    assert.equal(res.generation, 1n);

    const health = await c.control.health({ names: ["echo", "echo2"] });
    assert.deepEqual(health.plugins.map((h) => h.state), [PluginState.SERVING, PluginState.SERVING]);
    assert.ok(health.revision > 0n);
  });
});

test("listPlugins follows the pages, in either view", async () => {
  await withDaemon("unix", async (c) => {
    for (const name of ["echo2", "echo3"]) await c.control.load({ spec: { name, binary: "echo", config: new TextEncoder().encode("x") } });
    const full: PluginStatus[] = [];
    for await (const p of listPlugins(c.control, { pageSize: 1 })) full.push(p);
    assert.deepEqual(full.map((p) => p.name), ["echo", "echo2", "echo3"]);
    assert.equal(full[1].spec?.binary, "echo");
    const first = await c.control.listPlugins({ pageSize: 1 });
    assert.equal(first.plugins.length, 1);
    assert.notEqual(first.nextPageToken, "");
    const basic: PluginStatus[] = [];
    for await (const p of listPlugins(c.control, { view: PluginView.BASIC, names: ["echo3", "echo"] })) basic.push(p);
    assert.deepEqual(basic.map((p) => [p.name, p.spec]), [["echo", undefined], ["echo3", undefined]]);
  });
});

test("an error carries its code and CandidateFailure detail", async () => {
  await withDaemon("unix", async (c) => {
    await assert.rejects(
      c.control.reload({ name: "echo", spec: { name: "echo", binary: "notready" } }),
      (e: unknown) => {
        const err = ConnectError.from(e);
        assert.equal(err.code, Code.FailedPrecondition);
        assert.match(err.rawMessage, /generation 1 stays active/);
        const [cf] = err.findDetails(CandidateFailureSchema);
        assert.equal(cf?.stage, CandidateStage.READY);
        assert.equal(cf?.activeGeneration, 1n);
        return true;
      },
    );
    await assert.rejects(c.control.unload({ name: "nope" }), (e: unknown) => ConnectError.from(e).code === Code.NotFound);
    // The failed reload changed nothing.
    const { plugins } = await c.control.listPlugins({});
    assert.equal(plugins[0].generation, 1n);
  });
});

test("watchHealth streams, and resumes after a daemon restart", async () => {
  const state = fs.mkdtempSync(path.join(tmp, "state-"));
  let d = await startDaemon(state);
  const c = createClient(d.addr);
  const ac = new AbortController();
  const reconnects: Code[] = [];
  const events = watchHealth(c.control, {
    names: ["echo"],
    signal: ac.signal,
    backoffInitialMs: 20,
    onReconnect: (err) => reconnects.push(err.code),
  });
  const next = async (): Promise<HealthEvent> => {
    const r = await events.next();
    assert.ok(!r.done, "stream ended");
    return r.value;
  };
  try {
    let ev = await next();
    assert.equal(ev.type, HealthEventType.SNAPSHOT);
    assert.equal(ev.health?.name, "echo");
    assert.equal(ev.health?.state, PluginState.SERVING);
    ev = await next();
    assert.equal(ev.type, HealthEventType.SYNCED);

    // A handler panic: Internal for the caller, DEGRADED on the stream.
    await assert.rejects(c.gateway.invoke({ plugin: "echo", method: "panic", payload: new TextEncoder().encode("boom") }), (e: unknown) => ConnectError.from(e).code === Code.Internal);
    do {
      ev = await next();
    } while (!(ev.type === HealthEventType.CHANGED && ev.health?.state === PluginState.DEGRADED));

    // Restart the daemon: the stream ends with Unavailable, the iterator
    // reconnects on its own and resumes; the new daemon's revisions start
    // over, so it answers with a reset.
    await d.stop();
    d = await startDaemon(state);
    do {
      ev = await next();
    } while (ev.type !== HealthEventType.SYNCED);
    assert.equal(ev.reset, true, "a restarted daemon answers the resume with a reset");
    assert.ok(reconnects.length > 0 && reconnects[0] === Code.Unavailable, `reconnects: ${reconnects}`);
  } finally {
    ac.abort();
    await events.return(undefined);
    c.close();
    await d.stop();
  }
});

test("a reload in place (SIGHUP): calls and a watch ride through it", async () => {
  const state = fs.mkdtempSync(path.join(tmp, "state-"));
  const d = await startDaemon(state);
  const c = createClient(d.addr);
  const ac = new AbortController();
  const reconnects: string[] = [];
  const seen: HealthEvent[] = [];
  const watching = (async () => {
    for await (const ev of watchHealth(c.control, { names: ["echo"], signal: ac.signal, onReconnect: (err) => reconnects.push(err.message) })) {
      seen.push(ev);
    }
  })();
  try {
    const before = (await c.control.listPlugins({})).plugins.find((p) => p.name === "echo");
    assert.ok(before && before.pid > 0);
    // Callers invoke echo back to back while plugind reloads twice.
    let calls = 0;
    const failures: string[] = [];
    let stop = false;
    const callers = Array.from({ length: 2 }, async () => {
      while (!stop) {
        try {
          const r = await c.gateway.invoke({ plugin: "echo", method: "echo", payload: new TextEncoder().encode("x") }, { timeoutMs: 10_000 });
          assert.equal(new TextDecoder().decode(r.payload), "x");
        } catch (e) {
          failures.push(ConnectError.from(e).message);
        }
        calls++;
      }
    });
    for (let i = 1; i <= 2; i++) {
      const want = calls + 20;
      while (calls < want) await new Promise((r) => setTimeout(r, 5));
      d.proc.kill("SIGHUP");
      const deadline = Date.now() + 20_000;
      while (d.stderr().split("plugind reloaded in place").length - 1 < i) {
        if (Date.now() > deadline) throw new Error(`reload ${i} did not complete:\n${d.stderr()}`);
        await new Promise((r) => setTimeout(r, 20));
      }
    }
    const want = calls + 20;
    while (calls < want) await new Promise((r) => setTimeout(r, 5));
    stop = true;
    await Promise.all(callers);
    assert.deepEqual(failures, [], `${failures.length} of ${calls} calls failed across the reloads`);
    const after = (await c.control.listPlugins({})).plugins.find((p) => p.name === "echo");
    assert.equal(after?.pid, before.pid, "echo's pid changed");
    assert.equal(after?.generation, before.generation, "echo's generation changed");
    assert.deepEqual(reconnects, [], "the watch reported reconnects for a reload");
    assert.ok(!seen.some((ev) => ev.reset), "the watch got a reset");
    assert.ok(seen.filter((ev) => ev.type === HealthEventType.SYNCED).length >= 3, "the watch did not resume after each reload");
  } finally {
    ac.abort();
    await watching;
    c.close();
    await d.stop();
  }
});

test("watchHealth and health with the compact view carry states only", async () => {
  await withDaemon("unix", async (c) => {
    const ac = new AbortController();
    const events = watchHealth(c.control, { names: ["echo"], view: HealthView.COMPACT, signal: ac.signal });
    try {
      const r = await events.next();
      assert.ok(!r.done, "stream ended");
      assert.equal(r.value.type, HealthEventType.SNAPSHOT);
      assert.equal(r.value.health?.name, "echo");
      assert.equal(r.value.health?.state, PluginState.SERVING);
      assert.equal(r.value.health?.generation, 1n);
      assert.equal(r.value.health?.since, undefined, "compact health has no since");
      const { plugins } = await c.control.health({ names: ["echo"] });
      assert.notEqual(plugins[0].since, undefined, "Health has the full record");
      const compact = await c.control.health({ names: ["echo"], view: HealthView.COMPACT });
      assert.equal(compact.plugins[0].state, PluginState.SERVING);
      assert.equal(compact.plugins[0].since, undefined, "Health in the compact view has no since");
    } finally {
      ac.abort();
      await events.return(undefined);
    }
  });
});

test("unary calls over loopback TCP", async () => {
  await withDaemon("tcp", async (c) => {
    const res = await c.gateway.invoke({ plugin: "echo", method: "echo", payload: new TextEncoder().encode("tcp") });
    assert.equal(new TextDecoder().decode(res.payload), "tcp");
  });
});

test("a foreign plugin: its handshake in the spec, its own API at its endpoint", async () => {
  await withDaemon("unix", async (c, _d, state) => {
    const loaded = await c.control.load({
      spec: { name: "ticker", binary: "ticker", handshake: { protocolVersion: 1, magicCookieKey: "TICKER_PLUGIN", magicCookieValue: "tick" } },
    });
    const st = loaded.plugin!;
    assert.equal(st.protocol, "grpc");
    assert.equal(st.endpoint, "unix://" + path.join(state, "plugins", "ticker.sock"));
    assert.deepEqual(st.services, ["plugincontrol.example.v1.TickerService"]);
    assert.equal(st.spec?.handshake?.magicCookieKey, "TICKER_PLUGIN");

    const pt = createPluginTransport(st.endpoint);
    try {
      const ticker = createServiceClient(TickerService, pt.transport);
      const who = await ticker.whoami({});
      assert.equal(who.pid, st.pid);
      const reloaded = await c.control.reload({ name: "ticker" });
      const again = await ticker.whoami({});
      assert.equal(again.pid, reloaded.plugin!.pid, "the same endpoint reaches the new generation");
      const seqs: number[] = [];
      for await (const t of ticker.ticks({ count: 3 })) seqs.push(t.seq);
      assert.deepEqual(seqs, [1, 2, 3]);
    } finally {
      pt.close();
    }
    // Invoke is the native contract's; a foreign plugin says where to go.
    await assert.rejects(c.gateway.invoke({ plugin: "ticker", method: "x" }), (e: unknown) => ConnectError.from(e).code === Code.FailedPrecondition);
  });
});

test("a reload with a bake: the previous generation kept warm, then stopped", async () => {
  await withDaemon("unix", async (c) => {
    const reloaded = await c.control.reload({ name: "echo", bake: { seconds: 0n, nanos: 300_000_000 } });
    const gen = reloaded.plugin!.generation;
    const ac = new AbortController();
    const seen: BakeResult[] = [];
    try {
      for await (const ev of watchHealth(c.control, { names: ["echo"], signal: ac.signal })) {
        const b = ev.health?.bake;
        if (b === undefined || b.generation !== gen) continue;
        seen.push(b.result);
        if (b.result !== BakeResult.BAKING) break;
      }
    } finally {
      ac.abort();
    }
    assert.equal(seen[0], BakeResult.BAKING, `results seen: ${seen}`);
    assert.equal(seen[seen.length - 1], BakeResult.KEPT, `results seen: ${seen}`);
  });
});

test("the fleet: a node registers in etcd and runs what the fleet applies", async () => {
  const etcdDir = fs.mkdtempSync(path.join(tmp, "etcd-"));
  const clientURL = `http://127.0.0.1:${await freePort()}`;
  const etcd = spawn(path.join(bins, "etcd"), ["--dir", etcdDir, "--client-url", clientURL, "--peer-url", `http://127.0.0.1:${await freePort()}`], {
    stdio: ["ignore", "pipe", "inherit"],
  });
  const etcdExited = new Promise<void>((resolve) => etcd.once("exit", () => resolve()));
  try {
    await new Promise<void>((resolve, reject) => {
      let out = "";
      etcd.stdout!.on("data", (b: Buffer) => {
        out += b.toString();
        if (out.includes("ready")) resolve();
      });
      etcd.once("exit", () => reject(new Error("etcd exited before it was ready")));
    });
    const state = fs.mkdtempSync(path.join(tmp, "state-"));
    const d = await startDaemon(state, undefined, ["--fleet-etcd", clientURL, "--node-name", "ts1", "--node-label", "role=web", "--fleet-lease-ttl", "2s"]);
    const c = createClient(d.addr);
    try {
      const deadline = Date.now() + 20_000;
      for (;;) {
        const { nodes } = await c.fleet.listNodes({});
        if (nodes.some((n) => n.name === "ts1" && n.labels.role === "web")) break;
        assert.ok(Date.now() < deadline, "ts1 never registered");
        await new Promise((r) => setTimeout(r, 50));
      }
      const applied = await c.fleet.applyFleetPlugin({
        plugin: { spec: { name: "greet", binary: "echo" }, selector: { role: "web" } },
        allowUnpinned: true,
      });
      assert.equal(applied.plugin!.specDigest.length, 64);
      for (;;) {
        const st = await c.fleet.fleetStatus({ plugin: "greet" });
        if (st.statuses.some((s) => s.node === "ts1" && s.state === PluginState.SERVING && s.specDigest === applied.plugin!.specDigest)) break;
        assert.ok(Date.now() < deadline, "greet never converged on ts1");
        await new Promise((r) => setTimeout(r, 50));
      }
      // A local unload of a fleet plugin is refused.
      await assert.rejects(c.control.unload({ name: "greet" }), (e: unknown) => e instanceof ConnectError && e.code === Code.FailedPrecondition);
      await c.fleet.deleteFleetPlugin({ name: "greet" });
    } finally {
      c.close();
      await d.stop();
    }
  } finally {
    etcd.kill("SIGTERM");
    await etcdExited;
  }
});

test("TLS with a client certificate and a token over TCP", async () => {
  const state = fs.mkdtempSync(path.join(tmp, "state-"));
  const pki = fs.mkdtempSync(path.join(tmp, "pki-"));
  execFileSync("go", ["run", "./internal/testbin/certs", pki], { cwd: root, stdio: "inherit" });
  const token = "ts-sdk-operator-token-0123456789abcdef";
  const auth = path.join(pki, "auth.yaml");
  fs.writeFileSync(auth, `tokens:\n  - {name: ts, token: "${token}", roles: [operator, viewer, invoker]}\n`, { mode: 0o600 });
  const pem = (f: string) => fs.readFileSync(path.join(pki, f));
  const tls = { ca: pem("ca.pem"), cert: pem("client.pem"), key: pem("client-key.pem") };
  const addr = `tcp://127.0.0.1:${await freePort()}`;
  const d = await startDaemon(
    state,
    addr,
    ["--tls-cert", path.join(pki, "cert.pem"), "--tls-key", path.join(pki, "key.pem"), "--tls-client-ca", path.join(pki, "ca.pem"), "--auth-file", auth],
    { tls, token },
  );
  try {
    const c = createClient(addr, { tls, token });
    try {
      const res = await c.gateway.invoke({ plugin: "echo", method: "echo", payload: new TextEncoder().encode("over tls") });
      assert.equal(new TextDecoder().decode(res.payload), "over tls");
    } finally {
      c.close();
    }
    // Without the token: Unauthenticated.
    const noToken = createClient(addr, { tls });
    try {
      await assert.rejects(noToken.control.listPlugins({}), (e: unknown) => ConnectError.from(e).code === Code.Unauthenticated);
    } finally {
      noToken.close();
    }
    // Without a client certificate, or without TLS: no connection.
    for (const opts of [{ tls: { ca: tls.ca }, token }, { token }] as ClientOptions[]) {
      const c2 = createClient(addr, opts);
      try {
        await assert.rejects(c2.control.listPlugins({}, { timeoutMs: 3000 }), (e: unknown) => {
          const code = ConnectError.from(e).code;
          // The handshake or the connection fails (node reports a reset
          // stream as Canceled): nothing reaches the API.
          return [Code.Unavailable, Code.Internal, Code.DeadlineExceeded, Code.Unknown, Code.Canceled].includes(code);
        });
      } finally {
        c2.close();
      }
    }
    assert.throws(() => createClient(addr, { pingIntervalMs: 1000 }), /5000ms/);
  } finally {
    await d.stop();
  }
});

test("the example runs against a live daemon", async () => {
  await withDaemon("unix", async (_c, d) => {
    const out = execFileSync(process.execPath, [path.join(root, "sdk/ts/build/examples/status.js")], {
      env: { ...process.env, PLUGIND_ADDR: d.addr },
      timeout: 30_000,
    }).toString();
    assert.match(out, /^echo generation 1 SERVING$/m);
    assert.match(out, /^echo: hello \(generation 1\)$/m);
    assert.match(out, /^synced at revision \d+$/m);
  });
});

test("npm pack builds and ships the package, README and LICENSE", () => {
  // A clean copy of the package (no build/), with the installed deps.
  const pkg = path.join(root, "sdk/ts");
  const copy = fs.mkdtempSync(path.join(tmp, "pack-"));
  for (const f of ["package.json", "package-lock.json", "tsconfig.json", "tsconfig.build.json", "README.md", "LICENSE"]) {
    fs.copyFileSync(path.join(pkg, f), path.join(copy, f));
  }
  fs.cpSync(path.join(pkg, "src"), path.join(copy, "src"), { recursive: true });
  fs.symlinkSync(path.join(pkg, "node_modules"), path.join(copy, "node_modules"));
  const out = fs.mkdtempSync(path.join(tmp, "tgz-"));
  execFileSync("npm", ["pack", "--pack-destination", out], { cwd: copy, stdio: ["ignore", "ignore", "inherit"] });
  const tgz = fs.readdirSync(out).filter((f) => f.endsWith(".tgz"));
  assert.deepEqual(tgz, ["plugincontrol-client-0.1.0.tgz"]);
  const files = execFileSync("tar", ["-tzf", path.join(out, tgz[0])]).toString().trim().split("\n").sort();
  for (const want of ["package/package.json", "package/README.md", "package/LICENSE", "package/build/src/index.js", "package/build/src/index.d.ts", "package/build/src/gen/plugincontrol/v1/control_pb.js"]) {
    assert.ok(files.includes(want), `${want} missing from the package: ${files.join(" ")}`);
  }
  for (const f of files) {
    assert.ok(!/\/(test|examples|node_modules|src)\//.test(f.replace(/^package\/build\/src\//, "")), `${f} should not ship`);
  }
  assert.match(fs.readFileSync(path.join(pkg, "LICENSE"), "utf8"), /Apache License\s+Version 2\.0/);
});
