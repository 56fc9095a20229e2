//go:build linux

package manager

import (
	"os"
	"syscall"
)

// identify is a file's identity for the digest cache: device, inode, size
// and change times (a rewrite in place changes ctime).
func identify(fi os.FileInfo) (fileID, bool) {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return fileID{}, false
	}
	return fileID{
		dev: uint64(st.Dev), ino: st.Ino, size: st.Size,
		mtime: st.Mtim.Nano(), ctime: st.Ctim.Nano(),
	}, true
}
