//go:build linux

package main

import (
	"context"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/coreos/go-systemd/v22/daemon"
	"github.com/plugincontrol/plugincontrol/manager"
)

// systemd integration (coreos/go-systemd): with Type=notify the unit is
// started once plugind has restored its plugins and serves; with
// WatchdogSec it is restarted when plugind stops answering. Outside
// systemd (no NOTIFY_SOCKET) all of it does nothing.

// notifyReady tells the service manager that plugind serves (after a
// start or a reload, or after a reload it refused), with a status line.
func notifyReady(log *slog.Logger, status string) {
	if _, err := daemon.SdNotify(false, daemon.SdNotifyReady+"\nSTATUS="+strings.ReplaceAll(status, "\n", " ")); err != nil {
		log.Warn("sd_notify READY", slog.String("error", err.Error()))
	}
}

// notifyReloading tells the service manager that a reload began
// (RELOADING=1, with MONOTONIC_USEC as Type=notify-reload wants): READY=1
// ends it.
func notifyReloading() {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	usec := ts.Nano() / 1000
	_, _ = daemon.SdNotify(false, "RELOADING=1\nSTATUS=reloading\nMONOTONIC_USEC="+strconv.FormatInt(usec, 10))
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
