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
`

const loadUsage = `usage: pluginctl [global flags] load NAME [--binary B] [--sha256 HEX] [--arg A]... [--env K=V]... [--config STRING | --config-file F] [--start-timeout D]

Launch a new plugin instance NAME through the candidate pipeline and print its
status and the duration of each stage. The binary defaults to NAME.

` + specFlagsUsage

const reloadUsage = `usage: pluginctl [global flags] reload NAME [spec flags] [--validate-only] [--expected-generation N] [--drain-timeout D]

Start a new generation of NAME and swap to it only when it passes validation;
otherwise the active generation keeps serving. Without spec flags the current
spec is relaunched as is; with spec flags the current spec (read with
ListPlugins) is sent with those fields replaced: --arg and --env replace all
arguments and the whole environment, --sha256 "" removes the pin.

` + specFlagsUsage + `
Flags:
  --validate-only          run the pipeline and discard the candidate (dry run)
  --expected-generation N  fail (exit 6) unless generation N is the active one
  --drain-timeout D        wait at most D for calls in flight on the old
                           generation (default: the daemon's, 30s)
`

const unloadUsage = `usage: pluginctl [global flags] unload NAME [--drain-timeout D]

Drain and stop plugin NAME and remove it from the daemon's desired state.

Flags:
  --drain-timeout D   wait at most D for calls in flight (default: the daemon's, 30s)
`

const listUsage = `usage: pluginctl [global flags] list

List every plugin: NAME GEN STATE PID VERSION BINARY RESTARTS LAST ERROR.
`

const invokeUsage = `usage: pluginctl [global flags] invoke NAME METHOD [PAYLOAD | - | --payload-file F]

Call METHOD of the active generation of plugin NAME with PAYLOAD (empty when
omitted; "-" reads standard input). The response payload is written to
standard output as is; with -o json, the response as JSON (payload in base64,
and the generation that served the call).

Flags:
  --payload-file F   read the payload from file F ("-" for standard input)
`

const healthUsage = `usage: pluginctl [global flags] health [NAME...]

Show the current health of the named plugins (all when none is named):
NAME STATE GEN PANICS(window) CRASHES RESTARTS REASON, then the revision it is
consistent with (a starting point for watch --since).
`

const watchUsage = `usage: pluginctl [global flags] watch [NAME...] [--since N]

Stream health events of the named plugins (all when none is named), one line
each: REVISION TYPE NAME STATE GEN REASON (with -o json, one JSON object per
line). A new watch starts with a SNAPSHOT of each plugin and a SYNCED marker;
then CHANGED and REMOVED events and periodic BOOKMARKs follow. RESET is a
snapshot that replaces the whole view (the revision to resume from was no
longer in the daemon's history). When the daemon goes away the stream is
reopened with backoff (100ms doubling to 5s), resuming after the last revision
seen. --timeout does not apply. Ends with exit code 0 on SIGINT or SIGTERM.

Flags:
  --since N   resume after revision N (default 0: start with a snapshot)
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
  -o table|json        output format (default table); json is the protojson
                       of the response, with proto field names
  --timeout DURATION   deadline of each command, 0 for none (default 30s)

Commands:
  load NAME [--binary B] [spec flags]
        launch a new plugin instance (the binary defaults to NAME)
  reload NAME [spec flags] [--validate-only] [--expected-generation N] [--drain-timeout D]
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
  watch [NAME...] [--since N]
        stream health events until interrupted, reconnecting when needed
  help [COMMAND]
        show this help, or the help of COMMAND (also: COMMAND -h)

` + specFlagsUsage + `  (reload: --arg and --env replace all arguments / the whole environment,
   --sha256 "" removes the pin)

Command flags:
  --validate-only          reload: run the pipeline, discard the candidate
  --expected-generation N  reload: fail unless generation N is the active one
  --drain-timeout D        reload, unload: wait at most D for in-flight calls
  --payload-file F         invoke: read the payload from F ("-" for stdin)
  --since N                watch: resume after revision N

Exit codes:
  0  success
  1  any other error returned by the daemon, or a local failure
  2  usage error: bad flags or arguments
  3  cannot connect to the daemon, or it is unavailable (Unavailable)
  4  no such plugin (NotFound)
  5  the candidate failed validation (FailedPrecondition); the active
     generation, if any, keeps serving
  6  generation mismatch (Aborted): --expected-generation is not active
`

// usage is the full help text.
func usage() string {
	return strings.Replace(usageText, "{{ADDR}}", client.DefaultAddr(), 1)
}
