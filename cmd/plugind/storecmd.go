//go:build linux

package main

import (
	"fmt"
	"path/filepath"

	"github.com/plugincontrol/plugincontrol/store"
)

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
