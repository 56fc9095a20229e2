package manager

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/plugincontrol/plugincontrol/manager/record"
)

// resolveBinary finds binary inside dir (already symlink-free and absolute)
// and returns its real path. It follows symlinks, but only to targets that
// stay inside dir, and insists on a regular, executable file. It runs at
// every start, so a symlink swapped after Load is caught at the next launch.
func resolveBinary(dir, binary string) (string, error) {
	if err := record.ValidateBinary(binary); err != nil {
		return "", err
	}
	p := filepath.Join(dir, binary)
	real, err := filepath.EvalSymlinks(p)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return "", fmt.Errorf("binary %q not found in plugin directory %s", binary, dir)
		}
		return "", fmt.Errorf("binary %q: %w", binary, err)
	}
	rel, err := filepath.Rel(dir, real)
	if err != nil || rel == ".." || strings.HasPrefix(rel, "../") {
		return "", fmt.Errorf("binary %q resolves to %s, outside the plugin directory %s", binary, real, dir)
	}
	fi, err := os.Stat(real)
	if err != nil {
		return "", fmt.Errorf("binary %q: %w", binary, err)
	}
	if !fi.Mode().IsRegular() {
		return "", fmt.Errorf("binary %q is not a regular file (%s)", binary, fi.Mode().Type())
	}
	if fi.Mode().Perm()&0o111 == 0 {
		return "", fmt.Errorf("binary %q is not executable (mode %s)", binary, fi.Mode().Perm())
	}
	return real, nil
}

// digestCache remembers the SHA-256 of binaries by file identity (device,
// inode, size, mtime, ctime), so an unpinned Reload of an unchanged binary
// does not hash megabytes again. A rewritten file changes its identity.
// Concurrent requests for the same file share one computation: 100 parallel
// Loads of one binary hash it once, not 100 times.
type digestCache struct {
	mu       sync.Mutex // guards m and inflight
	m        map[fileID]string
	inflight map[fileID]*digestCall
}

// digestCall is one computation that callers of the same file wait for.
type digestCall struct {
	done chan struct{}
	d    string
	err  error
}

type fileID struct {
	dev, ino uint64
	size     int64
	mtime    int64
	ctime    int64
}

// digest returns the hex SHA-256 of the file at path.
func (c *digestCache) digest(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return "", err
	}
	id, ok := identify(fi)
	if !ok {
		return hashFile(f)
	}
	c.mu.Lock()
	if d, hit := c.m[id]; hit {
		c.mu.Unlock()
		return d, nil
	}
	if call := c.inflight[id]; call != nil {
		c.mu.Unlock()
		<-call.done
		return call.d, call.err
	}
	call := &digestCall{done: make(chan struct{})}
	if c.inflight == nil {
		c.inflight = make(map[fileID]*digestCall)
	}
	c.inflight[id] = call
	c.mu.Unlock()

	call.d, call.err = hashFile(f)
	c.mu.Lock()
	delete(c.inflight, id)
	if call.err == nil {
		if c.m == nil || len(c.m) > 1024 {
			c.m = make(map[fileID]string)
		}
		c.m[id] = call.d
	}
	c.mu.Unlock()
	close(call.done)
	return call.d, call.err
}

func hashFile(f *os.File) (string, error) {
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
