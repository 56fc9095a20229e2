//go:build linux

package main

import (
	"context"
	"log/slog"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
	"github.com/plugincontrol/plugincontrol/manager"
)

// systemd integration (coreos/go-systemd): with Type=notify the unit is
// started once plugind has restored its plugins and serves; with
// WatchdogSec it is restarted when plugind stops answering. Outside
// systemd (no NOTIFY_SOCKET) all of it does nothing.

// notifyReady tells the service manager that plugind serves.
func notifyReady(log *slog.Logger, plugins int) {
	if _, err := daemon.SdNotify(false, daemon.SdNotifyReady+"\nSTATUS=serving "+strconv.Itoa(plugins)+" plugins"); err != nil {
		log.Warn("sd_notify READY", slog.String("error", err.Error()))
	}
}

// notifyStopping tells the service manager that plugind is stopping.
func notifyStopping() { _, _ = daemon.SdNotify(false, daemon.SdNotifyStopping) }

// watchdog pings the service manager's watchdog (WATCHDOG=1) at half its
// interval for as long as the manager answers (a List, which takes the
// registry's lock: a wedged manager stops the pings, and systemd restarts
// plugind), until ctx ends.
func watchdog(ctx context.Context, log *slog.Logger, m *manager.Manager) {
	interval, err := daemon.SdWatchdogEnabled(false)
	if err != nil || interval <= 0 {
		return
	}
	log.Info("systemd watchdog", slog.Duration("interval", interval))
	t := time.NewTicker(interval / 2)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		answered := make(chan struct{})
		go func() { m.List(); close(answered) }()
		select {
		case <-answered:
			_, _ = daemon.SdNotify(false, daemon.SdNotifyWatchdog)
		case <-time.After(interval / 2):
			log.Error("the manager did not answer within half the watchdog interval: no watchdog ping")
		case <-ctx.Done():
			return
		}
	}
}

// ignoreHangup makes SIGHUP harmless: plugind has no configuration reload
// (a changed config file needs a restart; plugins are reloaded through the
// API), and a hangup from a closing terminal must not stop it. Each one is
// logged.
func ignoreHangup(ctx context.Context, log *slog.Logger) {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	go func() {
		defer signal.Stop(hup)
		for {
			select {
			case <-ctx.Done():
				return
			case <-hup:
				log.Info("SIGHUP ignored: plugind has no configuration reload; restart it to apply a changed config, reload plugins with pluginctl reload")
			}
		}
	}()
}
