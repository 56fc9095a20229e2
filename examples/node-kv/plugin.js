#!/usr/bin/env node
// A hashicorp/go-plugin gRPC plugin written in Node.js: go-plugin's
// examples/grpc KV service (proto.KV, kv.proto) served with @grpc/grpc-js.
// It speaks go-plugin's handshake itself: it checks the magic cookie
// (BASIC_PLUGIN=hello, protocol 1), serves grpc.health.v1 with service
// "plugin" SERVING (go-plugin's Go plugins get that for free; others must
// serve it), go-plugin's controller (so the host can stop it gracefully),
// and prints the handshake line "1|1|unix|PATH|grpc" as its first and only
// line on stdout.
//
// Usage: plugin.js [--port N]   (default: a unix socket in
// PLUGIN_UNIX_SOCKET_DIR; --port binds 127.0.0.1:N, fixed, as go-plugin's
// Python example does: then two generations cannot run side by side and a
// second one fails at once, saying the port is taken).
'use strict';

const fs = require('fs');
const os = require('os');
const path = require('path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const COOKIE_KEY = 'BASIC_PLUGIN';
const COOKIE_VALUE = 'hello';
const APP_VERSION = 1;

function fail(msg) {
  process.stderr.write(msg + '\n');
  process.exit(1);
}

if (process.env[COOKIE_KEY] !== COOKIE_VALUE) {
  fail('This binary is a plugin. These are not meant to be executed directly.\n' +
    'Please execute the program that consumes these plugins, which will\n' +
    'load any plugins automatically');
}
const versions = (process.env.PLUGIN_PROTOCOL_VERSIONS || String(APP_VERSION)).split(',');
if (!versions.includes(String(APP_VERSION))) {
  fail(`plugin: the host speaks protocol versions ${versions.join(',')}, this plugin speaks ${APP_VERSION}`);
}

let port = null;
const args = process.argv.slice(2);
for (let i = 0; i < args.length; i++) {
  if (args[i] === '--port' && i + 1 < args.length) {
    port = Number(args[++i]);
  } else {
    fail(`plugin: unknown argument ${JSON.stringify(args[i])} (usage: plugin.js [--port N])`);
  }
}

const load = (file) => grpc.loadPackageDefinition(protoLoader.loadSync(path.join(__dirname, file),
  { keepCase: true, longs: String, enums: String, defaults: true }));
const kvProto = load('kv.proto').proto;
const healthProto = load('health.proto').grpc.health.v1;
const controllerProto = load('controller.proto').plugin;

const server = new grpc.Server();
server.addService(kvProto.KV.service, {
  Get(call, cb) {
    fs.readFile('kv_' + call.request.key, (err, data) => {
      if (err) {
        cb({ code: grpc.status.NOT_FOUND, details: `no key ${JSON.stringify(call.request.key)}` });
        return;
      }
      cb(null, { value: data });
    });
  },
  Put(call, cb) {
    const value = Buffer.concat([Buffer.from(call.request.value), Buffer.from('\n\nWritten from plugin-node')]);
    fs.writeFile('kv_' + call.request.key, value, (err) => cb(err ? { code: grpc.status.INTERNAL, details: err.message } : null, {}));
  },
});
server.addService(healthProto.Health.service, {
  Check(call, cb) {
    if (call.request.service === '' || call.request.service === 'plugin') {
      cb(null, { status: 'SERVING' });
    } else {
      cb({ code: grpc.status.NOT_FOUND, details: 'unknown service' });
    }
  },
});
server.addService(controllerProto.GRPCController.service, {
  Shutdown(call, cb) {
    cb(null, {});
    setImmediate(() => server.tryShutdown(() => process.exit(0)));
  },
});

let network, address, bindTo;
if (port !== null) {
  network = 'tcp';
  address = `127.0.0.1:${port}`;
  bindTo = address;
} else {
  const dir = process.env.PLUGIN_UNIX_SOCKET_DIR || os.tmpdir();
  network = 'unix';
  address = path.join(dir, `plugin-node-${process.pid}.sock`);
  bindTo = 'unix:' + address;
}
server.bindAsync(bindTo, grpc.ServerCredentials.createInsecure(), (err) => {
  if (err) {
    fail(`plugin: cannot listen on ${address}: ${err.message}`);
  }
  // The handshake: go-plugin's core protocol 1, our app protocol, where to
  // connect, and the protocol. Nothing else may go to stdout.
  process.stdout.write(`1|${APP_VERSION}|${network}|${address}|grpc\n`);
});

for (const sig of ['SIGTERM', 'SIGINT']) {
  process.on(sig, () => server.tryShutdown(() => process.exit(0)));
}
