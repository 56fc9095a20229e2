//go:build linux

package main

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/plugincontrol/plugincontrol/internal/handover"
	"github.com/plugincontrol/plugincontrol/internal/proc"
	"github.com/plugincontrol/plugincontrol/manager"
)

// inheritance is what this image starts with besides its configuration:
// after a reload, everything the image before handed over (its plugins,
// its listening sockets, its reaper, its fleet lease); after a crash with
// --live-restore, the plugins the crashed one left running (manager only).
// Each part is taken by what uses it; close closes what nobody took.
type inheritance struct {
	reloaded  bool
	manager   *manager.Handover
	daemon    handover.Daemon
	listeners map[string]net.Listener // by key (handover.Daemon.Listeners)
}

// readInheritance reads the handover a reload left on the descriptor named
// by handover.EnvFD. Without one it returns an empty inheritance. Every
// descriptor the previous image passed on is close-on-exec again when it
// returns: none leaks into a plugin.
func readInheritance() (*inheritance, error) {
	inh := &inheritance{listeners: map[string]net.Listener{}}
	v, ok := os.LookupEnv(handover.EnvFD)
	if !ok {
		return inh, nil
	}
	os.Unsetenv(handover.EnvFD)
	defer closeOnExecAll()
	fd, err := strconv.Atoi(v)
	if err != nil || fd <= 2 {
		return inh, fmt.Errorf("%s=%q: not a descriptor", handover.EnvFD, v)
	}
	f := os.NewFile(uintptr(fd), "handover")
	b, err := io.ReadAll(f)
	f.Close()
	if err != nil {
		return inh, fmt.Errorf("reading the handover: %w", err)
	}
	h, d, err := handover.Decode(b)
	if err != nil {
		return inh, err
	}
	if d.BootID != "" && d.BootID != proc.BootID() {
		return inh, errors.New("the handover was written in another boot")
	}
	inh.reloaded, inh.manager, inh.daemon = true, h, d
	var errs []error
	for key, fd := range d.Listeners {
		f := os.NewFile(uintptr(fd), key)
		l, err := net.FileListener(f) // a copy: f is closed
		f.Close()
		if err != nil {
			errs = append(errs, fmt.Errorf("listener %s: %w", key, err))
			continue
		}
		inh.listeners[key] = l
	}
	return inh, errors.Join(errs...)
}

// closeOnExecAll marks every descriptor above stderr close-on-exec: what a
// handover passed on and this image did not take must not reach plugins.
func closeOnExecAll() {
	ents, _ := os.ReadDir("/proc/self/fd")
	for _, e := range ents {
		if fd, err := strconv.Atoi(e.Name()); err == nil && fd > 2 {
			unix.CloseOnExec(fd)
		}
	}
}

// take returns (and forgets) the inherited listener of key, or nil.
func (inh *inheritance) take(key string) net.Listener {
	if inh == nil {
		return nil
	}
	l := inh.listeners[key]
	delete(inh.listeners, key)
	return l
}

// endpoints takes the plugin endpoints' listeners, by plugin name.
func (inh *inheritance) endpoints() map[string]net.Listener {
	out := map[string]net.Listener{}
	for key, l := range inh.listeners {
		if name, ok := strings.CutPrefix(key, "endpoint:"); ok {
			out[name] = l
			delete(inh.listeners, key)
		}
	}
	return out
}

// closeUnused closes the inherited listeners the new configuration does not
// serve on any more (removing their unix socket files).
func (inh *inheritance) closeUnused(log *slog.Logger) {
	for key, l := range inh.listeners {
		log.Info("no longer listening (not in the configuration any more)", slog.String("listener", key))
		if ul, ok := l.(*net.UnixListener); ok {
			_ = os.Remove(ul.Addr().String())
		}
		l.Close()
		delete(inh.listeners, key)
	}
}

// close closes whatever nobody took.
func (inh *inheritance) close() {
	if inh == nil {
		return
	}
	for key, l := range inh.listeners {
		l.Close()
		delete(inh.listeners, key)
	}
	if h := inh.manager; h != nil {
		for _, p := range h.Plugins {
			for _, pr := range []*manager.ProcessHandover{p.Active, p.Held} {
				if pr != nil {
					closeFile(pr.Stdout)
					closeFile(pr.Stderr)
				}
			}
		}
		inh.manager = nil
	}
}

func closeFile(f *os.File) {
	if f != nil {
		f.Close()
	}
}

// adoptAfterCrash is the handover a crashed plugind left with live restore:
// the records of its plugins' processes (handover.Records) and their
// stdout and stderr, which its reaper kept draining and now hands over.
// nil when there is nothing to adopt.
func adoptAfterCrash(records *handover.Records, stateDir string, log *slog.Logger) *manager.Handover {
	plugins, skipped := records.Load()
	for _, s := range skipped {
		log.Warn("live-restore record not used", slog.String("record", s))
	}
	held, err := proc.TakeHeld(handover.HandoffPath(stateDir), defaultHandoffTimeout)
	if err != nil {
		log.Error("the previous plugind's reaper did not hand over its plugins' output: they are relaunched", slog.String("error", err.Error()))
	}
	if len(plugins) == 0 {
		for _, h := range held {
			closeFile(h.Stdout)
			closeFile(h.Stderr)
		}
		return nil
	}
	for _, p := range plugins {
		if p.Active == nil {
			continue
		}
		if h, ok := held[p.Active.Mark]; ok && h.Plugin == p.Name {
			p.Active.Stdout, p.Active.Stderr = h.Stdout, h.Stderr
			delete(held, p.Active.Mark)
		}
	}
	for _, h := range held {
		closeFile(h.Stdout)
		closeFile(h.Stderr)
	}
	log.Info("live restore: adopting the plugins a previous plugind left running", slog.Int("plugins", len(plugins)))
	return &manager.Handover{Plugins: plugins}
}

// clearLiveRestore removes the live-restore records and the reaper's
// handoff socket of a state directory: a clean stop, or a plugind started
// without --live-restore (which kills what a crashed one left).
func clearLiveRestore(stateDir string) {
	dir := handover.RunDir(stateDir)
	ents, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	for _, e := range ents {
		_ = os.Remove(filepath.Join(dir, e.Name()))
	}
	_ = os.Remove(dir)
}

// saveRecord and removeRecord keep the live-restore records
// (manager.LiveRestore).
func (d *image) saveRecord(p *manager.PluginHandover) {
	if err := d.records.Save(p); err != nil {
		d.log.Error("live-restore record not written: after a crash this plugin is relaunched, not adopted", slog.String("plugin", p.Name), slog.String("error", err.Error()))
	}
}

func (d *image) removeRecord(name string) {
	if err := d.records.Remove(name); err != nil {
		d.log.Warn("live-restore record not removed", slog.String("plugin", name), slog.String("error", err.Error()))
	}
}

// closeFDs closes descriptors the previous image left for this one to
// close (handover.Daemon.CloseFDs).
func closeFDs(fds []int) {
	for _, fd := range fds {
		_ = unix.Close(fd)
	}
}
