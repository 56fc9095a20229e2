package main

import (
	"context"
	"fmt"
	"io"
	"strings"
)

// flagSpec describes a flag for the completion scripts.
type flagSpec struct {
	name  string // as registered, without dashes
	value string // "" for a boolean flag; "file"; "a|b|c" for one of these; else a free value (shown as a hint)
	help  string
}

func (f flagSpec) boolean() bool { return f.value == "" }

// choices are the values a flag takes, nil when they are free.
func (f flagSpec) choices() []string {
	if strings.Contains(f.value, "|") {
		return strings.Split(f.value, "|")
	}
	return nil
}

// dashed is how completion offers the flag: "-o" for one letter, else
// "--name" (Go's flag package takes one or two dashes either way).
func (f flagSpec) dashed() string {
	if len(f.name) == 1 {
		return "-" + f.name
	}
	return "--" + f.name
}

// spellings are every way the flag can be written before its value.
func (f flagSpec) spellings() []string { return []string{"-" + f.name, "--" + f.name} }

// argKind is what a command's positional arguments are.
type argKind int

const (
	argsNone      argKind = iota // nothing to complete (or a new name)
	argsFirstName                // the first is a loaded plugin's name
	argsNames                    // every one is a loaded plugin's name
	argsCommand                  // a pluginctl command (help)
	argsShell                    // bash, zsh or fish (completion)
)

// The flags of each command, for the completion scripts. TestCompletionFlags
// checks them against the flag sets and the usage texts.
var (
	globalFlagSpecs = []flagSpec{
		{"addr", "ADDR", "daemon address (unix:///path or tcp://host:port)"},
		{"token-file", "file", "file holding the bearer token"},
		{"o", "table|json|yaml", "output format"},
		{"color", "auto|always|never", "colour table output"},
		{"timeout", "DURATION", "deadline of each command (0: none)"},
	}
	specFlagSpecs = []flagSpec{
		{"binary", "B", "binary name inside the daemon's plugin directory"},
		{"sha256", "HEX", "pin the binary to this SHA-256"},
		{"arg", "A", "argument for the binary (repeatable)"},
		{"env", "K=V", "environment variable of the plugin (repeatable)"},
		{"config", "STRING", "config handed to the plugin"},
		{"config-file", "file", "read the config from a file"},
		{"start-timeout", "D", "launch and handshake timeout"},
		{"handshake", "K=V", "a foreign plugin's handshake magic cookie"},
		{"handshake-version", "N", "a foreign plugin's protocol version"},
		{"ready-service", "S", "grpc.health.v1 service probed as a foreign plugin's ready stage"},
	}
	waitFlagSpecs = []flagSpec{
		{"wait-healthy", "", "wait until the new generation is SERVING"},
		{"wait-timeout", "D", "give up waiting after D (default 30s)"},
		{"settle", "D", "the new generation must stay SERVING for D"},
	}
	drainFlagSpec   = flagSpec{"drain-timeout", "D", "wait at most D for calls in flight"}
	reloadFlagSpecs = []flagSpec{
		{"bake", "D", "keep the previous generation warm for D, revert if the new one fails"},
		{"wait", "", "with --bake: wait until the bake ends"},
		{"validate-only", "", "run the pipeline and discard the candidate (dry run)"},
		{"expected-generation", "N", "fail unless generation N is the active one"},
		drainFlagSpec,
	}
	invokeFlagSpecs = []flagSpec{{"payload-file", "file", "read the payload from a file"}}
	listFlagSpecs   = []flagSpec{{"full", "", "include each plugin's spec"}}
	watchFlagSpecs  = []flagSpec{
		{"since", "N", "resume after revision N"},
		{"plain", "", "a line per event even on a terminal"},
	}
	auditFlagSpecs = []flagSpec{
		{"limit", "N", "at most N records (default 100)"},
		{"before", "SEQ", "records older than sequence SEQ"},
		{"verify", "", "read the whole log and check its hash chain"},
	}
)

// shells are the shells "completion" writes scripts for.
var shells = []string{"bash", "zsh", "fish"}

// completionCommand is a command as the completion scripts see it.
type completionCommand struct {
	name, summary string
	flags         []flagSpec
	args          argKind
}

// completionCommands are the visible commands and help.
func completionCommands() []completionCommand {
	var out []completionCommand
	for _, cmd := range commands {
		if cmd.hidden {
			continue
		}
		out = append(out, completionCommand{name: cmd.name, summary: cmd.summary, flags: cmd.flags, args: cmd.args})
	}
	return append(out, completionCommand{name: "help", summary: "show the usage of pluginctl or of a command", args: argsCommand})
}

// valueFlags are the spellings of every flag that takes a value.
func valueFlags(flags []flagSpec) []string {
	var out []string
	for _, f := range flags {
		if !f.boolean() {
			out = append(out, f.spellings()...)
		}
	}
	return out
}

// allCommandFlags are the distinct flags of every command.
func allCommandFlags() []flagSpec {
	seen := map[string]bool{}
	var out []flagSpec
	for _, c := range completionCommands() {
		for _, f := range c.flags {
			if !seen[f.name] {
				seen[f.name] = true
				out = append(out, f)
			}
		}
	}
	return out
}

func names[T any](list []T, name func(T) string) []string {
	out := make([]string, len(list))
	for i, x := range list {
		out[i] = name(x)
	}
	return out
}

func (c *cli) completion(_ context.Context, args []string) error {
	fs := newFlagSet("completion")
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if err := wantArgs("completion", pos, 1, 1, "bash, zsh or fish"); err != nil {
		return err
	}
	var script string
	switch pos[0] {
	case "bash":
		script = bashCompletion()
	case "zsh":
		script = zshCompletion()
	case "fish":
		script = fishCompletion()
	default:
		return usagef("completion: unknown shell %q: want bash, zsh or fish", pos[0])
	}
	_, err = io.WriteString(c.stdout, script)
	return err
}

// bashCompletion is the bash completion script.
func bashCompletion() string {
	cmds := completionCommands()
	var b strings.Builder
	b.WriteString(`# bash completion for pluginctl; generated by "pluginctl completion bash".
#
# This shell:   source <(pluginctl completion bash)
# Permanently:  pluginctl completion bash > ~/.local/share/bash-completion/completions/pluginctl
#               (or, for every user, > /etc/bash_completion.d/pluginctl)
#
# Plugin names are asked from the daemon ("pluginctl __complete-names") with
# the --addr and --token-file of the command line being completed.

_pluginctl_names() {
    "$_pluginctl_bin" "${_pluginctl_global[@]}" --timeout 3s __complete-names 2>/dev/null
}

_pluginctl() {
    local line=${COMP_LINE:0:COMP_POINT}
    local -a words=()
    read -r -a words <<<"$line"
    if [[ -z $line || $line == *[[:space:]] ]]; then
        words+=("")
    fi
    local n=${#words[@]}
    local cur=${words[n-1]} prev=
    if ((n > 1)); then
        prev=${words[n-2]}
    fi
    COMPREPLY=()
    # bash splits words at ":" and "=" (COMP_WORDBREAKS): values such as
    # unix:///path and --flag=value are not completed.
    if [[ $cur == *[:=]* ]]; then
        return 0
    fi

    local _pluginctl_bin=${words[0]/#\~/$HOME}
    local -a _pluginctl_global=()
    local i=1 w cmd=
    while ((i < n - 1)); do
        w=${words[i]}
        case $w in
        --addr | -addr | --token-file | -token-file)
            _pluginctl_global+=("$w" "${words[i+1]}")
            ((i += 2))
            continue
            ;;
        --addr=* | -addr=* | --token-file=* | -token-file=*)
            _pluginctl_global+=("$w")
            ;;
`)
	fmt.Fprintf(&b, "        %s)\n            ((i += 2))\n            continue\n            ;;\n", strings.Join(valueFlags(globalFlagSpecs), " | "))
	b.WriteString(`        -*) ;;
        *)
            cmd=$w
            break
            ;;
        esac
        ((i++))
    done

    if [[ -z $cmd ]]; then
        case $prev in
`)
	bashValueCases(&b, globalFlagSpecs)
	fmt.Fprintf(&b, `        esac
        if [[ $cur == -* ]]; then
            COMPREPLY=($(compgen -W "%s" -- "$cur"))
        else
            COMPREPLY=($(compgen -W "%s" -- "$cur"))
        fi
        return 0
    fi

    # The positional arguments of the command before the current word.
    local -a pos=()
    local dashdash=
    for ((i++; i < n - 1; i++)); do
        w=${words[i]}
        if [[ -n $dashdash || $w != -* || $w == - ]]; then
            pos+=("$w")
        elif [[ $w == -- ]]; then
            dashdash=1
        else
            case $w in
            %s) ((i++)) ;;
            esac
        fi
    done

    if [[ -z $dashdash ]]; then
        case $prev in
`, strings.Join(names(globalFlagSpecs, flagSpec.dashed), " "), strings.Join(names(cmds, func(c completionCommand) string { return c.name }), " "),
		strings.Join(valueFlags(allCommandFlags()), " | "))
	bashValueCases(&b, allCommandFlags())
	b.WriteString(`        esac
        if [[ $cur == -* ]]; then
            case $cmd in
`)
	for _, c := range cmds {
		if len(c.flags) > 0 {
			fmt.Fprintf(&b, "            %s) COMPREPLY=($(compgen -W \"%s\" -- \"$cur\")) ;;\n", c.name, strings.Join(names(c.flags, flagSpec.dashed), " "))
		}
	}
	b.WriteString(`            esac
            return 0
        fi
    fi

    case $cmd in
`)
	byKind := func(k argKind) string {
		var out []string
		for _, c := range cmds {
			if c.args == k {
				out = append(out, c.name)
			}
		}
		return strings.Join(out, " | ")
	}
	fmt.Fprintf(&b, `    %s)
        if ((${#pos[@]} == 0)); then
            COMPREPLY=($(compgen -W "$(_pluginctl_names)" -- "$cur"))
        fi
        ;;
    %s)
        COMPREPLY=($(compgen -W "$(_pluginctl_names)" -- "$cur"))
        ;;
    %s)
        if ((${#pos[@]} == 0)); then
            COMPREPLY=($(compgen -W "%s" -- "$cur"))
        fi
        ;;
    %s)
        if ((${#pos[@]} == 0)); then
            COMPREPLY=($(compgen -W "%s" -- "$cur"))
        fi
        ;;
    esac
    return 0
}

complete -F _pluginctl pluginctl
`, byKind(argsFirstName), byKind(argsNames),
		byKind(argsCommand), strings.Join(names(cmds, func(c completionCommand) string { return c.name }), " "),
		byKind(argsShell), strings.Join(shells, " "))
	return b.String()
}

// bashValueCases writes the case branches completing the value of each
// flag of flags that takes one.
func bashValueCases(b *strings.Builder, flags []flagSpec) {
	var free []string
	for _, f := range flags {
		pat := strings.Join(f.spellings(), " | ")
		switch {
		case f.boolean():
		case f.value == "file":
			fmt.Fprintf(b, "        %s)\n            compopt -o filenames 2>/dev/null\n            COMPREPLY=($(compgen -f -- \"$cur\"))\n            return 0\n            ;;\n", pat)
		case f.choices() != nil:
			fmt.Fprintf(b, "        %s)\n            COMPREPLY=($(compgen -W \"%s\" -- \"$cur\"))\n            return 0\n            ;;\n", pat, strings.Join(f.choices(), " "))
		default:
			free = append(free, pat)
		}
	}
	if len(free) > 0 {
		fmt.Fprintf(b, "        %s)\n            return 0\n            ;;\n", strings.Join(free, " | "))
	}
}

// zshQuote escapes s for a single-quoted _arguments spec or _describe item.
func zshQuote(s string, colons bool) string {
	r := strings.NewReplacer("'", `'\''`, "[", `\[`, "]", `\]`)
	s = r.Replace(s)
	if colons {
		s = strings.ReplaceAll(s, ":", `\:`)
	}
	return s
}

// zshFlag is the _arguments spec of a flag.
func zshFlag(f flagSpec) string {
	repeat := ""
	if strings.Contains(f.help, "repeatable") {
		repeat = "*"
	}
	opt := f.dashed()
	if !f.boolean() && len(f.name) > 1 {
		opt += "=" // --name=value or --name value
	}
	spec := fmt.Sprintf("%s%s[%s]", repeat, opt, zshQuote(f.help, false))
	switch {
	case f.boolean():
	case f.value == "file":
		spec += ":file:_files"
	case f.choices() != nil:
		spec += fmt.Sprintf(":%s:(%s)", f.name, strings.Join(f.choices(), " "))
	default:
		spec += fmt.Sprintf(":%s: ", zshQuote(f.value, true))
	}
	return "'" + spec + "'"
}

// zshCompletion is the zsh completion script.
func zshCompletion() string {
	cmds := completionCommands()
	var b strings.Builder
	b.WriteString(`#compdef pluginctl
# zsh completion for pluginctl; generated by "pluginctl completion zsh".
#
# This shell (after compinit):  source <(pluginctl completion zsh)
# Permanently:  pluginctl completion zsh > "${fpath[1]}/_pluginctl", then
#               start a new shell (any directory of $fpath will do)
#
# Plugin names are asked from the daemon ("pluginctl __complete-names") with
# the --addr and --token-file of the command line being completed.

_pluginctl_names() {
  local -a global names
  local i bin=${(Q)_pluginctl_line[1]}
  bin=${bin/#\~/$HOME}
  for (( i = 2; i <= $#_pluginctl_line; i++ )); do
    case ${(Q)_pluginctl_line[i]} in
      (--addr|-addr|--token-file|-token-file)
        global+=(${(Q)_pluginctl_line[i]} ${(Q)_pluginctl_line[i+1]})
        (( i++ ))
        ;;
      (--addr=*|-addr=*|--token-file=*|-token-file=*)
        global+=(${(Q)_pluginctl_line[i]})
        ;;
    esac
  done
  names=(${(f)"$($bin $global --timeout 3s __complete-names 2>/dev/null)"})
  _wanted plugins expl 'plugin' compadd -a names
}

_pluginctl() {
  local -a _pluginctl_line
  _pluginctl_line=("${words[@]}")
  local curcontext=$curcontext state state_descr line ret=1
  typeset -A opt_args
  _arguments -C \
`)
	for _, f := range globalFlagSpecs {
		fmt.Fprintf(&b, "    %s \\\n", zshFlag(f))
	}
	b.WriteString(`    '1:command:->command' \
    '*::argument:->argument' && ret=0
  case $state in
    (command)
      local -a cmds
      cmds=(
`)
	for _, c := range cmds {
		fmt.Fprintf(&b, "        '%s:%s'\n", c.name, zshQuote(c.summary, true))
	}
	b.WriteString(`      )
      _describe -t commands 'pluginctl command' cmds && ret=0
      ;;
    (argument)
      curcontext=${curcontext%:*:*}:pluginctl-$words[1]:
      case $words[1] in
`)
	for _, c := range cmds {
		fmt.Fprintf(&b, "        (%s)\n          _arguments \\\n", c.name)
		for _, f := range c.flags {
			fmt.Fprintf(&b, "            %s \\\n", zshFlag(f))
		}
		switch c.args {
		case argsFirstName:
			b.WriteString("            '1:plugin:_pluginctl_names' \\\n            '*:argument: ' \\\n")
		case argsNames:
			b.WriteString("            '*:plugin:_pluginctl_names' \\\n")
		case argsCommand:
			fmt.Fprintf(&b, "            '1:command:(%s)' \\\n", strings.Join(names(cmds, func(c completionCommand) string { return c.name }), " "))
		case argsShell:
			fmt.Fprintf(&b, "            '1:shell:(%s)' \\\n", strings.Join(shells, " "))
		default:
			b.WriteString("            '*:argument: ' \\\n")
		}
		b.WriteString("            && ret=0\n          ;;\n")
	}
	b.WriteString(`      esac
      ;;
  esac
  return ret
}

if [[ $zsh_eval_context[-1] == loadautofunc ]]; then
  _pluginctl "$@"
else
  compdef _pluginctl pluginctl
fi
`)
	return b.String()
}

// fishQuote single-quotes s for fish.
func fishQuote(s string) string {
	return "'" + strings.NewReplacer(`\`, `\\`, "'", `\'`).Replace(s) + "'"
}

// fishFlag is the complete arguments of a flag.
func fishFlag(f flagSpec) string {
	var b strings.Builder
	if len(f.name) == 1 {
		fmt.Fprintf(&b, "-s %s", f.name)
	} else {
		fmt.Fprintf(&b, "-l %s", f.name)
	}
	switch {
	case f.boolean():
	case f.value == "file":
		b.WriteString(" -r -F")
	case f.choices() != nil:
		fmt.Fprintf(&b, " -x -a %s", fishQuote(strings.Join(f.choices(), " ")))
	default:
		b.WriteString(" -x")
	}
	fmt.Fprintf(&b, " -d %s", fishQuote(f.help))
	return b.String()
}

// fishCompletion is the fish completion script.
func fishCompletion() string {
	cmds := completionCommands()
	var b strings.Builder
	fmt.Fprintf(&b, `# fish completion for pluginctl; generated by "pluginctl completion fish".
#
# This shell:   pluginctl completion fish | source
# Permanently:  pluginctl completion fish > ~/.config/fish/completions/pluginctl.fish
#
# Plugin names are asked from the daemon ("pluginctl __complete-names") with
# the --addr and --token-file of the command line being completed.

# __pluginctl_state prints the command typed so far and how many positional
# arguments follow it; it fails while no command is typed.
function __pluginctl_state
    set -l tokens (commandline -opc)
    set -l cmd
    set -l npos 0
    set -l dashdash 0
    set -l i 2
    while test $i -le (count $tokens)
        set -l w $tokens[$i]
        if test -z "$cmd"
            switch $w
                case %s
                    set i (math $i + 1)
                case '-*'
                case '*'
                    set cmd $w
            end
        else if test $dashdash = 1
            set npos (math $npos + 1)
        else
            switch $w
                case --
                    set dashdash 1
                case %s
                    set i (math $i + 1)
                case '-?*'
                case '*'
                    set npos (math $npos + 1)
            end
        end
        set i (math $i + 1)
    end
    test -n "$cmd"; or return 1
    echo $cmd
    echo $npos
end

function __pluginctl_no_command
    not __pluginctl_state >/dev/null
end

# __pluginctl_using CMD...: the command is one of CMD.
function __pluginctl_using
    set -l s (__pluginctl_state); or return 1
    contains -- $s[1] $argv
end

# __pluginctl_arg N CMD...: positional argument N (from 0) of one of CMD.
function __pluginctl_arg
    set -l s (__pluginctl_state); or return 1
    test $s[2] -eq $argv[1]; and contains -- $s[1] $argv[2..-1]
end

function __pluginctl_names
    set -l tokens (commandline -opc)
    set -l global
    set -l i 2
    while test $i -le (count $tokens)
        switch $tokens[$i]
            case --addr -addr --token-file -token-file
                if test $i -lt (count $tokens)
                    set -a global $tokens[$i] $tokens[(math $i + 1)]
                end
                set i (math $i + 1)
            case '--addr=*' '-addr=*' '--token-file=*' '-token-file=*'
                set -a global $tokens[$i]
        end
        set i (math $i + 1)
    end
    $tokens[1] $global --timeout 3s __complete-names 2>/dev/null
end

complete -c pluginctl -f
`, strings.Join(valueFlags(globalFlagSpecs), " "), strings.Join(valueFlags(allCommandFlags()), " "))
	b.WriteString("\n# global flags (before the command)\n")
	for _, f := range globalFlagSpecs {
		fmt.Fprintf(&b, "complete -c pluginctl -n __pluginctl_no_command %s\n", fishFlag(f))
	}
	b.WriteString("\n# commands\n")
	for _, c := range cmds {
		fmt.Fprintf(&b, "complete -c pluginctl -n __pluginctl_no_command -a %s -d %s\n", c.name, fishQuote(c.summary))
	}
	for _, c := range cmds {
		fmt.Fprintf(&b, "\n# %s\n", c.name)
		cond := fishQuote("__pluginctl_using " + c.name)
		for _, f := range c.flags {
			fmt.Fprintf(&b, "complete -c pluginctl -n %s %s\n", cond, fishFlag(f))
		}
		switch c.args {
		case argsFirstName:
			fmt.Fprintf(&b, "complete -c pluginctl -n %s -a '(__pluginctl_names)' -d plugin\n", fishQuote("__pluginctl_arg 0 "+c.name))
		case argsNames:
			fmt.Fprintf(&b, "complete -c pluginctl -n %s -a '(__pluginctl_names)' -d plugin\n", cond)
		case argsCommand:
			fmt.Fprintf(&b, "complete -c pluginctl -n %s -a %s\n", fishQuote("__pluginctl_arg 0 "+c.name),
				fishQuote(strings.Join(names(cmds, func(c completionCommand) string { return c.name }), " ")))
		case argsShell:
			fmt.Fprintf(&b, "complete -c pluginctl -n %s -a %s\n", fishQuote("__pluginctl_arg 0 "+c.name), fishQuote(strings.Join(shells, " ")))
		}
	}
	return b.String()
}
