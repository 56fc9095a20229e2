package main

import (
	"strings"

	"github.com/plugincontrol/plugincontrol/client"
)

const specFlagsUsage = `Spec flags:
  --binary B            binary name inside the daemon's plugin directory
  --sha256 HEX          pin the binary to this SHA-256 (64 hex digits)
  --arg A               argument for the binary (repeatable)
  --env K=V             environment variable of the plugin (repeatable)
  --config STRING       config handed to the plugin
  --config-file F       read the config from file F ("-" for standard input)
  --start-timeout D     launch and handshake timeout (default: the daemon's, 10s)
  --handshake K=V       a foreign go-plugin plugin: its handshake magic cookie
                        (key=value); its own API is served at its endpoint
  --handshake-version N the foreign plugin's protocol version (default 1)
  --ready-service S     grpc.health.v1 service probed as a foreign plugin's
                        ready stage (default "plugin")
`

const waitFlagsUsage = `Wait flags (load, reload):
  --wait-healthy        once the plugin is loaded or swapped, wait until the
                        new generation is healthy: a health record of exactly
                        that generation in state SERVING and, with --settle,
                        no other state of it for D after that. Fails (exit 7)
                        at once when it is UNHEALTHY or STOPPED, when a newer
                        generation replaced it (a supervisor restart after a
                        crash), when the plugin is unloaded, and within
                        --settle on any state but SERVING (DEGRADED included);
                        STARTING and DEGRADED before the first SERVING are
                        waited through. --timeout bounds the load or reload
                        call only.
  --wait-timeout D      give up (exit 7) after D, --settle included (default 30s)
  --settle D            the new generation must stay SERVING for D (default 0:
                        return at its first SERVING)
`

const loadUsage = `usage: pluginctl [global flags] load NAME [--binary B] [--sha256 HEX] [--arg A]... [--env K=V]... [--config STRING | --config-file F] [--start-timeout D] [--handshake K=V [--handshake-version N] [--ready-service S]] [--wait-healthy [--wait-timeout D] [--settle D]]

Launch a new plugin instance NAME through the candidate pipeline and print its
status and the duration of each stage. The binary defaults to NAME.

` + specFlagsUsage + `
` + waitFlagsUsage

const reloadUsage = `usage: pluginctl [global flags] reload NAME [spec flags] [--validate-only] [--expected-generation N] [--drain-timeout D] [--bake D [--wait]] [--wait-healthy [--wait-timeout D] [--settle D]]

Start a new generation of NAME and swap to it only when it passes validation;
otherwise the active generation keeps serving. Without spec flags the current
spec is relaunched as is; with spec flags the current spec (read with
ListPlugins) is sent with those fields replaced: --arg and --env replace all
arguments and the whole environment, --sha256 "" removes the pin.

` + specFlagsUsage + `
Flags:
  --validate-only          run the pipeline and discard the candidate (dry run)
  --expected-generation N  fail (exit 6) unless generation N is the active one
  --bake D                 keep the previous generation's process warm for D
                           after the swap; if the new generation becomes
                           UNHEALTHY or crashes meanwhile, plugind reverts to it
                           by itself (default: the daemon's --bake; 0: none)
  --wait                   with --bake: block until the bake ends; exit 0 when
                           the new generation was kept, 8 when it was reverted
                           (or the bake cancelled)
  --drain-timeout D        wait at most D for calls in flight on the old
                           generation (default: the daemon's, 30s)

` + waitFlagsUsage

const unloadUsage = `usage: pluginctl [global flags] unload NAME [--drain-timeout D]

Drain and stop plugin NAME and remove it from the daemon's desired state.

Flags:
  --drain-timeout D   wait at most D for calls in flight (default: the daemon's, 30s)
`

const listUsage = `usage: pluginctl [global flags] list [--full]

List every plugin: NAME GEN STATE PID VERSION BINARY RESTARTS LAST ERROR.
The daemon's pages are followed to the last. With -o json or yaml, each
plugin's status without its spec; --full includes the specs.

Flags:
  --full   include each plugin's spec (ListPlugins view FULL)
`

const invokeUsage = `usage: pluginctl [global flags] invoke NAME METHOD [PAYLOAD | - | --payload-file F]

Call METHOD of the active generation of plugin NAME with PAYLOAD (empty when
omitted; "-" reads standard input). The response payload is written to
standard output as is; with -o json or yaml, the response (payload in base64,
and the generation that served the call).

Flags:
  --payload-file F   read the payload from file F ("-" for standard input)
`

const healthUsage = `usage: pluginctl [global flags] health [NAME...]

Show the current health of the named plugins (all when none is named):
NAME STATE GEN PANICS(window) CRASHES RESTARTS REASON, then the revision it is
consistent with (a starting point for watch --since).
`

const watchUsage = `usage: pluginctl [global flags] watch [NAME...] [--since N] [--plain]

Stream health events of the named plugins (all when none is named). A new
watch starts with a SNAPSHOT of each plugin and a SYNCED marker; then CHANGED
and REMOVED events and periodic BOOKMARKs follow. RESET is a snapshot that
replaces the whole view (the revision to resume from was no longer in the
daemon's history).

When standard output is a terminal (and -o table), a live view is redrawn in
place after each batch of events: the current state of every watched plugin,
the revision and the time of the last event, and the last 10 events.
Otherwise (piped, --plain, -o json or yaml) one line per event:
REVISION TYPE NAME STATE GEN REASON; with -o json one JSON object per line,
with -o yaml one YAML document per event, each starting with "---".

When the daemon goes away the stream is reopened with backoff (100ms doubling
to 5s), resuming after the last revision seen. --timeout does not apply. Ends
with exit code 0 on SIGINT or SIGTERM.

Flags:
  --since N   resume after revision N (default 0: start with a snapshot)
  --plain     one line per event even when standard output is a terminal
`

const auditUsage = `usage: pluginctl [global flags] audit [NAME] [--limit N] [--before SEQ] | audit --verify

Show the daemon's audit record of mutations (load, reload, validate, unload,
and its own restarts, restores and health actions), newest first, of plugin
NAME or of all plugins: SEQ TIME CALLER ACTION PLUGIN GEN(old→new) OUTCOME
ERROR. Times are local. When a full page was shown, the last line says how to
get the next one.

Each record carries the hash of the one before it, so the log is
tamper-evident: --verify reads the whole log (every plugin's, page by page),
checks every record's hash and the chain from the start of the log (or the
checkpoint retention left), and prints the head hash; a break exits 9.

Flags:
  --limit N     at most N records (default: the daemon's, 100; at most 10000)
  --before SEQ  only records older than sequence number SEQ (paging)
  --verify      check the whole log's hash chain
`

const completionUsage = `usage: pluginctl completion bash|zsh|fish

Print a shell completion script: commands, flags and their values, and plugin
names (asked from the daemon at --addr, with --token-file, when completing).

  bash:  source <(pluginctl completion bash)
         or save it as ~/.local/share/bash-completion/completions/pluginctl
  zsh:   source <(pluginctl completion zsh)     (after compinit)
         or save it as _pluginctl in a directory of $fpath
  fish:  pluginctl completion fish | source
         or save it as ~/.config/fish/completions/pluginctl.fish
`

const completeNamesUsage = `usage: pluginctl [global flags] __complete-names

Print the names of the loaded plugins, one per line (for completion scripts).
`

const usageText = `usage: pluginctl [global flags] COMMAND [args] [flags]

pluginctl drives plugind, the plugincontrol daemon, over its gRPC control API.

Global flags (before COMMAND):
  --addr ADDR          daemon address: unix:///abs/path, unix:relative/path or
                       tcp://host:port (default $PLUGIND_ADDR, else
                       unix://$XDG_STATE_HOME/plugind/plugind.sock, else
                       unix://$HOME/.local/state/plugind/plugind.sock;
                       here: {{ADDR}})
  --token-file FILE    send the bearer token read from FILE
  -o table|json|yaml   output format (default table); json is the protojson
                       of the response, with proto field names; yaml is the
                       same document as YAML
  --color auto|always|never
                       colour plugin states in tables (SERVING green, DEGRADED
                       yellow, UNHEALTHY red, STARTING cyan, STOPPED dim);
                       auto (default): only when standard output is a terminal
                       and NO_COLOR is not set
  --timeout DURATION   deadline of each command, 0 for none (default 30s)

Commands:
  load NAME [--binary B] [spec flags] [wait flags]
        launch a new plugin instance (the binary defaults to NAME)
  reload NAME [spec flags] [--validate-only] [--expected-generation N] [--drain-timeout D] [wait flags]
        start a new generation and swap to it only if it passes validation;
        spec flags replace those fields of the current spec
  unload NAME [--drain-timeout D]
        drain and stop a plugin and forget it
  list
        list plugins and their status
  invoke NAME METHOD [PAYLOAD | - | --payload-file F]
        call a plugin method; prints the response payload
  health [NAME...]
        show the current health of plugins
  watch [NAME...] [--since N] [--plain]
        stream health events until interrupted, reconnecting when needed;
        a live view on a terminal
  audit [NAME] [--limit N] [--before SEQ] | audit --verify
        show the audit record of mutations, newest first
  completion bash|zsh|fish
        print a shell completion script
  help [COMMAND]
        show this help, or the help of COMMAND (also: COMMAND -h)

` + specFlagsUsage + `  (reload: --arg and --env replace all arguments / the whole environment,
   --sha256 "" removes the pin)

` + waitFlagsUsage + `
Command flags:
  --validate-only          reload: run the pipeline, discard the candidate
  --expected-generation N  reload: fail unless generation N is the active one
  --drain-timeout D        reload, unload: wait at most D for in-flight calls
  --payload-file F         invoke: read the payload from F ("-" for stdin)
  --since N                watch: resume after revision N
  --plain                  watch: a line per event even on a terminal
  --limit N                audit: at most N records (default 100)
  --before SEQ             audit: records older than sequence SEQ
  --verify                 audit: read the whole log and check its hash chain

Exit codes:
  0  success
  1  any other error returned by the daemon, or a local failure
  2  usage error: bad flags or arguments
  3  cannot connect to the daemon, or it is unavailable (Unavailable)
  4  no such plugin (NotFound)
  5  the candidate failed validation (FailedPrecondition); the active
     generation, if any, keeps serving
  6  generation mismatch (Aborted): --expected-generation is not active
  7  not healthy: with --wait-healthy, the new generation did not become (or
     stay, with --settle) SERVING within --wait-timeout; the load or swap
     itself happened, and the reason is printed
  8  reverted: with reload --bake --wait, the new generation failed during
     its bake and plugind went back to the previous one (or the bake was
     cancelled); the reason is printed
  9  audit --verify: the audit log's hash chain does not verify (a record was
     changed, removed or inserted); the first break is printed
`

// usage is the full help text.
func usage() string {
	return strings.Replace(usageText, "{{ADDR}}", client.DefaultAddr(), 1)
}
