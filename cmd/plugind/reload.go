//go:build linux

package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/plugincontrol/plugincontrol/internal/handover"
	"github.com/plugincontrol/plugincontrol/internal/launch"
	"github.com/plugincontrol/plugincontrol/internal/proc"
	"github.com/plugincontrol/plugincontrol/internal/version"
	"github.com/plugincontrol/plugincontrol/manager"
	"github.com/plugincontrol/plugincontrol/server"
)

// A reload (SIGHUP, "systemctl reload plugind") upgrades and reconfigures
// plugind in place, the way nginx and systemd's daemon-reexec do: the
// process re-executes the binary at its own path (a package upgrade put
// the new one there) with the same pid, and its plugins never notice.
//
//	SIGHUP ─▶ RELOADING=1 ─▶ check the new image ──(refused: READY=1, STATUS=why; nothing changed)
//	            │ (the new binary, run with --check-config and this command line and
//	            │  environment, parses and checks the configuration it will run with)
//	            ▼
//	          freeze the manager (no mutation, no supervisor action; calls go on)
//	            ▼  ── the point of no return ──
//	          the fleet agent stops, keeping the node's lease
//	          every server drains: GOAWAY, calls in flight finish (up to
//	          --shutdown-timeout), streams end with Unavailable (clients resume);
//	          the listening sockets stay open (copies): new connections wait in
//	          the backlog
//	            ▼
//	          the handover (plugincontrol.handover.v1) goes into a memfd; the
//	          listeners, the plugins' stdout/stderr, the reaper's socket and the
//	          memfd survive the exec
//	            ▼
//	          exec the binary at its path (or, should that fail, this image again)
//	            ▼
//	          the new image reads the handover, attaches to every plugin
//	          (go-plugin ReattachConfig), checks each with its ready probe,
//	          relaunches only one that fails (audited as reattach-failed), then
//	          serves on the same sockets ─▶ READY=1

// defaultHandoffTimeout bounds the talk with a crashed plugind's reaper.
const defaultHandoffTimeout = 5 * time.Second

// fatalReloadError is a reload that failed past the point of no return:
// plugind stops.
type fatalReloadError struct{ err error }

func (e *fatalReloadError) Error() string {
	return "reload failed after the servers drained: " + e.err.Error()
}
func (e *fatalReloadError) Unwrap() error { return e.err }

// checkResult is what the new image says in --check-config mode.
type checkResult struct {
	// HandoverSchema is the handover schema it reads.
	HandoverSchema int `json:"handover_schema"`
	// StateDir is the absolute state directory it would use.
	StateDir string `json:"state_dir"`
	// Version is its version.
	Version string `json:"version"`
}

// checkConfig is --check-config: check the configuration as this binary
// would run it (flags, PLUGIND_* environment, the config file, and the
// files it names), print a checkResult on stdout and exit 0, or say what
// is wrong on stderr and exit 2. A reload runs the new binary this way
// before it hands anything over.
func checkConfig(cfg config, stdout, stderr io.Writer) int {
	res, err := validateConfig(cfg)
	if err != nil {
		fmt.Fprintf(stderr, "plugind: %v\n", err)
		return exitUsage
	}
	_ = json.NewEncoder(stdout).Encode(res)
	return exitOK
}

// validateConfig checks what parseFlags cannot: the files and directories
// the configuration names.
func validateConfig(cfg config) (checkResult, error) {
	var errs []error
	if fi, err := os.Stat(cfg.pluginDir); err != nil {
		errs = append(errs, fmt.Errorf("--plugin-dir: %w", err))
	} else if !fi.IsDir() {
		errs = append(errs, fmt.Errorf("--plugin-dir %s is not a directory", cfg.pluginDir))
	}
	if cfg.authFile != "" {
		if _, err := server.LoadAuthFile(cfg.authFile); err != nil {
			errs = append(errs, err)
		}
	}
	if _, err := serverTLS(cfg); err != nil {
		errs = append(errs, err)
	}
	if _, err := newLogger(cfg.logLevel, cfg.logFormat, io.Discard); err != nil {
		errs = append(errs, err)
	}
	abs, err := filepath.Abs(cfg.stateDir)
	if err != nil {
		errs = append(errs, fmt.Errorf("--state-dir: %w", err))
	}
	return checkResult{HandoverSchema: handover.Schema, StateDir: abs, Version: versionString()}, errors.Join(errs...)
}

func versionString() string {
	v, _ := version.Get()
	return v
}

// checkNewImage runs the binary at this image's path in --check-config
// mode with this command line and environment: the binary must start, read
// the handover schema this image writes, and accept its configuration.
func (d *image) checkNewImage(ctx context.Context) (checkResult, error) {
	var res checkResult
	if d.exe == "" {
		return res, errors.New("this binary's path is unknown (os.Executable failed at start)")
	}
	if sameFile(d.exe, "/proc/self/exe") {
		// The binary did not change: check the configuration here, as the
		// same code would at start (40 ms less than running it).
		cfg, err := parseConfig(os.Args[1:], os.Environ())
		if err == nil {
			res, err = validateConfig(cfg)
		}
		if err != nil {
			return res, fmt.Errorf("the configuration is refused: %w", err)
		}
		return res, d.checkStateDir(res)
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, d.exe, append([]string{"--check-config"}, os.Args[1:]...)...)
	cmd.Env = handoverEnv(-1)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	if err := cmd.Run(); err != nil {
		why := strings.TrimSpace(errOut.String())
		if why == "" {
			why = err.Error()
		}
		return res, fmt.Errorf("the binary at %s refused to start with this configuration: %s", d.exe, why)
	}
	if err := json.Unmarshal(out.Bytes(), &res); err != nil {
		return res, fmt.Errorf("the binary at %s does not support reloading in place (its --check-config said %q)", d.exe, strings.TrimSpace(out.String()))
	}
	if res.HandoverSchema != handover.Schema {
		return res, fmt.Errorf("the binary at %s reads handover schema %d, this one writes %d: restart plugind instead (its plugins restart)", d.exe, res.HandoverSchema, handover.Schema)
	}
	return res, d.checkStateDir(res)
}

// checkStateDir refuses a configuration that moves the state directory.
func (d *image) checkStateDir(res checkResult) error {
	abs, _ := filepath.Abs(d.cfg.stateDir)
	if res.StateDir != abs {
		return fmt.Errorf("the new configuration moves --state-dir from %s to %s: a reload cannot move the plugins' state; restart plugind (its plugins restart)", abs, res.StateDir)
	}
	return nil
}

// sameFile reports whether two paths name the same file.
func sameFile(a, b string) bool {
	fa, err1 := os.Stat(a)
	fb, err2 := os.Stat(b)
	return err1 == nil && err2 == nil && os.SameFile(fa, fb)
}

// reload re-executes plugind in place (see the top of this file). It
// returns only when it did not: with an error saying why, the running
// image carrying on (a plain error) or stopping (a *fatalReloadError).
func (d *image) reload(ctx context.Context) error {
	asked := time.Now()
	notifyReloading()
	d.log.Info("reload asked for: checking the new binary and configuration", slog.String("binary", d.exe))
	res, err := d.checkNewImage(ctx)
	if err != nil {
		return err
	}
	fctx, cancel := context.WithTimeout(ctx, d.cfg.shutdownTimeout)
	err = d.m.Freeze(fctx)
	cancel()
	if err != nil {
		return fmt.Errorf("plugin operations in flight did not finish within --shutdown-timeout (%v): %w", d.cfg.shutdownTimeout, err)
	}
	// The point of no return: from here on the servers stop taking calls.
	d.log.Info("reloading in place", slog.String("from_version", versionString()), slog.String("to_version", res.Version))
	dm := handover.Daemon{Version: versionString(), BootID: proc.BootID(), Listeners: map[string]int{}, ReloadStarted: asked}
	var keep []*os.File // the listener copies: alive until the exec
	var errs []error
	take := func(key string, f *os.File, err error) {
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", key, err))
			return
		}
		keep = append(keep, f)
		dm.Listeners[key] = int(f.Fd())
	}
	for _, l := range d.listeners {
		f, err := launch.ListenerFile(l.lis)
		take("listen:"+l.key, f, err)
	}
	if d.metricsL != nil {
		f, err := launch.ListenerFile(d.metricsL)
		take("metrics", f, err)
	}
	if d.direct != nil {
		f, err := launch.ListenerFile(d.direct.lis)
		take("direct", f, err)
		if err == nil {
			// Tickets wait in the backlog for the next image (a lease's
			// stream ends with this one anyway).
			d.direct.lis.Close()
		}
	}
	if d.fm != nil {
		dm.FleetLease, dm.FleetNode = d.fm.handover(), d.fm.node
	}
	// Drain every server at once: GOAWAY, calls in flight finish, streams
	// end (clients resume on the next image).
	dctx, cancel := context.WithTimeout(context.Background(), d.cfg.shutdownTimeout)
	defer cancel()
	var wg sync.WaitGroup
	var eps map[string]*os.File
	var tcp []*os.File
	var epErr error
	wg.Go(func() { d.srv.Handover(dctx) })
	wg.Go(func() { eps, tcp, epErr = d.eps.Handover(dctx) })
	if d.metrics != nil {
		wg.Go(func() { _ = d.metrics.Shutdown(dctx) })
	}
	wg.Wait()
	for name, f := range eps {
		take("endpoint:"+name, f, nil)
	}
	if len(tcp) > 0 {
		take("endpoint-tcp", tcp[0], nil)
	}
	if epErr != nil {
		errs = append(errs, epErr)
	}
	if err := errors.Join(errs...); err != nil {
		// A listener that cannot be handed over is reopened by the next
		// image from the configuration (connections in between are
		// refused); everything else goes on.
		d.log.Error("some listeners are not handed over", slog.String("error", err.Error()))
	}
	h, err := d.m.Handover()
	if err != nil {
		return &fatalReloadError{err}
	}
	inheritFDs := []int{h.ReaperFD}
	for _, fd := range dm.Listeners {
		inheritFDs = append(inheritFDs, fd)
	}
	for _, p := range h.Plugins {
		for _, pr := range []*manager.ProcessHandover{p.Active, p.Held} {
			if pr != nil {
				inheritFDs = append(inheritFDs, pr.StdoutFD, pr.StderrFD)
			}
		}
	}
	// This image's other sockets (its connections to the plugins, to
	// etcd) survive the exec too, for the next image to close once it
	// serves: closing a connected socket took 0.7 ms here, 74 ms for 100
	// plugins, all of it on the reload's critical path (the exec closes
	// close-on-exec descriptors one by one).
	dm.CloseFDs = otherSockets(inheritFDs)
	b, err := handover.Encode(h, dm)
	if err != nil {
		return &fatalReloadError{err}
	}
	memfd, err := writeMemfd(b)
	if err != nil {
		return &fatalReloadError{err}
	}
	inheritFDs = append(inheritFDs, memfd)
	inheritFDs = append(inheritFDs, dm.CloseFDs...)
	for _, fd := range inheritFDs {
		if fd > 2 {
			if err := proc.ClearCloexec(fd); err != nil {
				return &fatalReloadError{fmt.Errorf("descriptor %d: %w", fd, err)}
			}
		}
	}
	// Until the next image catches it, a SIGHUP is ignored (the exec keeps
	// that), not fatal.
	signal.Ignore(syscall.SIGHUP)
	d.log.Info("handing over", slog.Int("plugins", len(h.Plugins)), slog.Int("listeners", len(dm.Listeners)),
		slog.Int("handover_bytes", len(b)), slog.Duration("since_sighup", time.Since(asked)))
	env := handoverEnv(memfd)
	err = syscall.Exec(d.exe, os.Args, env)
	d.log.Error("exec of the new binary failed: re-executing this one", slog.String("binary", d.exe), slog.String("error", err.Error()))
	err2 := syscall.Exec("/proc/self/exe", os.Args, env)
	runtime.KeepAlive(keep)
	return &fatalReloadError{fmt.Errorf("exec %s: %v; exec of this binary again: %w", d.exe, err, err2)}
}

// handoverEnv is this process's environment for the next image, naming
// the handover's descriptor (none with fd < 0).
func handoverEnv(fd int) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, handover.EnvFD+"=") {
			env = append(env, kv)
		}
	}
	if fd >= 0 {
		env = append(env, handover.EnvFD+"="+strconv.Itoa(fd))
	}
	return env
}

// writeMemfd puts b in an anonymous memory file that survives exec.
func writeMemfd(b []byte) (int, error) {
	fd, err := unix.MemfdCreate("plugind-handover", 0)
	if err != nil {
		return -1, fmt.Errorf("memfd_create: %w", err)
	}
	for off := 0; off < len(b); {
		n, err := unix.Write(fd, b[off:])
		if err != nil {
			unix.Close(fd)
			return -1, fmt.Errorf("writing the handover: %w", err)
		}
		off += n
	}
	if _, err := unix.Seek(fd, 0, io.SeekStart); err != nil {
		unix.Close(fd)
		return -1, err
	}
	return fd, nil
}

// The main goroutine, which runs serve and so the reload, stays on the
// process's main thread: a thread that is not the thread group's leader
// waits in execve for the leader to be torn down and takes over its pid,
// which measured 100+ ms with 100 plugins here (the leader execs in 10).
func init() { runtime.LockOSThread() }

// otherSockets lists this process's sockets but those in keep: descriptors
// the next image closes (handover.Daemon.CloseFDs).
func otherSockets(keep []int) []int {
	kept := map[int]bool{}
	for _, fd := range keep {
		kept[fd] = true
	}
	var out []int
	ents, _ := os.ReadDir("/proc/self/fd")
	for _, e := range ents {
		fd, err := strconv.Atoi(e.Name())
		if err != nil || fd <= 2 || kept[fd] {
			continue
		}
		if l, err := os.Readlink("/proc/self/fd/" + e.Name()); err == nil && strings.HasPrefix(l, "socket:") {
			out = append(out, fd)
		}
	}
	return out
}
