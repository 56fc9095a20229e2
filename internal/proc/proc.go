// Package proc is the operating-system side of running plugin processes:
// the process attributes they start with, watching them exit without
// polling, killing them and everything they started (process groups,
// cgroups, orphans of a child subreaper), the reaper that cleans up after a
// SIGKILLed daemon, and the sink for their stderr. It knows nothing of
// go-plugin's protocol or of plugin lifecycles (package manager decides
// when; this package does).
//
// Linux only: it uses pidfds, process groups, Pdeathsig, cgroup v2, prctl
// and /proc. Elsewhere (proc_other.go) the same API compiles and fails with
// ErrUnsupported, so that packages built on the manager's types (the store,
// its tools) build on every platform; plugind itself refuses to start.
package proc

import "errors"

// ErrUnsupported is what process control returns off Linux.
var ErrUnsupported = errors.New("plugin process control runs on Linux only (pidfd, cgroup v2, prctl, Pdeathsig)")

// Limits are the resource limits of a plugin's cgroup; zero fields are not
// set.
type Limits struct {
	MemoryMax int64  // bytes (memory.max)
	PidsMax   int64  // processes (pids.max)
	CPUMax    string // "QUOTA PERIOD" in µs, as cpu.max takes it ("50000 100000": half a CPU)
}

// MarkEnv is set in the environment of every plugin process to
// "ID/GENERATION" (the manager's containment id, the generation's own id),
// and inherited by whatever the plugin starts. Without a cgroup it is how
// plugind tells whose a re-parented process is, and what a killed daemon
// left behind: /proc/PID/environ keeps it. A descendant started with a
// clean environment carries none and is not attributed.
const MarkEnv = "PLUGINCONTROL_CONTAIN"

// ReaperEnv marks a process started as the reaper.
const ReaperEnv = "PLUGINCONTROL_REAPER"
