// Lists the plugins of the daemon at $PLUGIND_ADDR (default: the socket of
// the systemd unit), calls echo, and follows the health stream until it is
// in sync. Run it with `node build/examples/status.js` after `npm test` (or
// compile it in a project that depends on @plugincontrol/client).
import { createClient, listPlugins, watchHealth, PluginView, PluginState, HealthEventType } from "@plugincontrol/client";

const pc = createClient(process.env.PLUGIND_ADDR ?? "unix:///run/plugind/plugind.sock");
try {
  for await (const p of listPlugins(pc.control, { view: PluginView.BASIC })) {
    console.log(`${p.name} generation ${p.generation} ${PluginState[p.state]}`);
  }
  const res = await pc.gateway.invoke({ plugin: "echo", method: "echo", payload: new TextEncoder().encode("hello") });
  console.log(`echo: ${new TextDecoder().decode(res.payload)} (generation ${res.generation})`);
  const ac = new AbortController();
  for await (const ev of watchHealth(pc.control, { signal: ac.signal })) {
    if (ev.type === HealthEventType.SYNCED) {
      console.log(`synced at revision ${ev.revision}`);
      ac.abort();
    }
  }
} finally {
  pc.close();
}
