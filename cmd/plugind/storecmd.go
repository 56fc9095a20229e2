//go:build linux

package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"path/filepath"
	"strings"

	"github.com/plugincontrol/plugincontrol/client"
	"github.com/plugincontrol/plugincontrol/store"
)

// runStore is "plugind store check|recover": tools for the store file,
// run with plugind stopped.
func runStore(args []string, stdout, stderr io.Writer) int {
	usage := "usage: plugind store check|recover [--state-dir D] [--force]"
	if len(args) == 0 {
		fmt.Fprintln(stderr, usage)
		return exitUsage
	}
	cmd := args[0]
	fs := flag.NewFlagSet("plugind store "+cmd, flag.ContinueOnError)
	fs.SetOutput(stderr)
	stateDir := fs.String("state-dir", client.DefaultStateDir(), "plugind's state directory")
	force := fs.Bool("force", false, "recover: replace the store with the newest good snapshot even if it is not damaged")
	if err := fs.Parse(args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return exitOK
		}
		return exitUsage
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "plugind store %s: unexpected arguments %q\n%s\n", cmd, fs.Args(), usage)
		return exitUsage
	}
	path := filepath.Join(*stateDir, store.FileName)
	switch cmd {
	case "check":
		rep := store.Check(path)
		if rep.Problem != "" {
			fmt.Fprintf(stderr, "plugind: store %s is damaged: %s\n%s", path, rep.Problem, recoverHint(*stateDir))
			return exitDamaged
		}
		fmt.Fprintf(stdout, "store %s: schema %d, %d plugins, %d audit records\n", path, rep.SchemaVersion, rep.Plugins, rep.AuditRecords)
		for _, u := range rep.Unreadable {
			fmt.Fprintf(stdout, "unreadable plugin record (listed UNHEALTHY at start; unload it or load over it): %s\n", u)
		}
		if rep.ChainBroken != "" {
			fmt.Fprintf(stdout, "audit chain broken: %s\n", rep.ChainBroken)
		}
		if len(rep.Unreadable) > 0 || rep.ChainBroken != "" {
			return exitFailed
		}
		return exitOK
	case "recover":
		sn, err := store.Recover(*stateDir, *force)
		if err != nil {
			fmt.Fprintf(stderr, "plugind store recover: %v\n", err)
			if strings.Contains(err.Error(), "not damaged") {
				return exitUsage
			}
			return exitDamaged
		}
		fmt.Fprintf(stdout, "store %s recovered from snapshot %s (taken %s, after %d commits); changes recorded after it are lost\n",
			path, sn.Path, sn.ModTime.UTC().Format("2006-01-02 15:04:05Z"), sn.Commits)
		return exitOK
	default:
		fmt.Fprintf(stderr, "plugind store: unknown command %q\n%s\n", cmd, usage)
		return exitUsage
	}
}

// recoverHint tells an operator what to do about a damaged store in
// stateDir.
func recoverHint(stateDir string) string {
	snaps, _ := store.ListSnapshots(stateDir)
	if len(snaps) == 0 {
		return fmt.Sprintf("no snapshot in %s to recover from: move the file aside to start with an empty store\n", filepath.Join(stateDir, store.SnapshotDir))
	}
	last := snaps[len(snaps)-1]
	return fmt.Sprintf("run `plugind store recover --state-dir %s` to put the newest good snapshot in its place (the newest is from %s, after %d commits)\n",
		stateDir, last.ModTime.UTC().Format("2006-01-02 15:04:05Z"), last.Commits)
}
