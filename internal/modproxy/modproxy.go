// Package modproxy writes a Go module proxy holding this repository's four
// modules at one version, as a directory that GOPROXY=file://DIR serves: what
// releasing them together (tags vX.Y.Z, gen/vX.Y.Z, client/vX.Y.Z and
// plugin/vX.Y.Z; README, Releasing) publishes. Tests install and import the
// modules from it the way a user does from a public proxy: without the
// workspace (go.work) and without the network.
//
// Each module is made from the files git would commit (tracked, or untracked
// and not ignored), with its go.mod requiring the siblings at the released
// version and its go.sum holding their hashes, computed here exactly as the
// go command computes them (golang.org/x/mod's dirhash of the zip and of the
// go.mod): the edit a release commit makes. Zips are made with
// golang.org/x/mod/zip, the go command's own zip code, so a layout the go
// command would refuse (a file name, a size, a nested module) fails here.
package modproxy

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"golang.org/x/mod/modfile"
	"golang.org/x/mod/module"
	"golang.org/x/mod/sumdb/dirhash"
	modzip "golang.org/x/mod/zip"
)

// Path is the module path of the repository's root module.
const Path = "github.com/plugincontrol/plugincontrol"

// Modules lists the repository's modules by directory, in release order: each
// requires only modules before it.
var Modules = []string{"gen", "client", "plugin", "."}

// modulePath is the module path of the module in directory dir.
func modulePath(dir string) string {
	if dir == "." {
		return Path
	}
	return Path + "/" + dir
}

// Build writes the modules of the repository at root, at version, into the
// proxy directory out (created; modules already there at other versions are
// kept, so one proxy can serve several versions); GOPROXY=file://OUT then
// serves them.
func Build(ctx context.Context, root, out, version string) error {
	if !strings.HasPrefix(version, "v") || module.Check(Path, version) != nil {
		return fmt.Errorf("modproxy: %q is not a module version", version)
	}
	// The hashes of the modules written so far: what go.sum lines the later
	// ones need.
	sums := map[string]hashes{}
	for _, dir := range Modules {
		if err := ctx.Err(); err != nil {
			return err
		}
		h, err := writeModule(ctx, root, out, dir, version, sums)
		if err != nil {
			return fmt.Errorf("modproxy: module %s: %w", modulePath(dir), err)
		}
		sums[modulePath(dir)] = h
	}
	return nil
}

// hashes are a module version's two go.sum hashes.
type hashes struct{ zip, mod string }

func writeModule(ctx context.Context, root, out, dir, version string, sums map[string]hashes) (hashes, error) {
	mv := module.Version{Path: modulePath(dir), Version: version}
	files, err := gitFiles(ctx, root, dir)
	if err != nil {
		return hashes{}, err
	}
	gomod, err := os.ReadFile(filepath.Join(root, dir, "go.mod"))
	if err != nil {
		return hashes{}, err
	}
	gosum, err := os.ReadFile(filepath.Join(root, dir, "go.sum"))
	if err != nil && !os.IsNotExist(err) {
		return hashes{}, err
	}
	gomod, gosum, err = release(gomod, gosum, version, sums)
	if err != nil {
		return hashes{}, err
	}

	// The zip's files: go.mod and go.sum as released, the rest from disk.
	var zf []modzip.File
	for _, rel := range files {
		switch rel {
		case "go.mod":
			zf = append(zf, dataFile{"go.mod", gomod})
		case "go.sum":
			zf = append(zf, dataFile{"go.sum", gosum})
		default:
			zf = append(zf, diskFile{rel, filepath.Join(root, dir, filepath.FromSlash(rel))})
		}
	}
	if !slices.Contains(files, "go.sum") && len(gosum) > 0 {
		zf = append(zf, dataFile{"go.sum", gosum})
	}

	esc, err := module.EscapePath(mv.Path)
	if err != nil {
		return hashes{}, err
	}
	vdir := filepath.Join(out, filepath.FromSlash(esc), "@v")
	if err := os.MkdirAll(vdir, 0o755); err != nil {
		return hashes{}, err
	}
	zipPath := filepath.Join(vdir, version+".zip")
	f, err := os.Create(zipPath)
	if err != nil {
		return hashes{}, err
	}
	if err := modzip.Create(f, mv, zf); err != nil {
		f.Close()
		return hashes{}, err
	}
	if err := f.Close(); err != nil {
		return hashes{}, err
	}
	info, err := json.Marshal(struct {
		Version string
		Time    time.Time
	}{version, time.Now().UTC().Truncate(time.Second)})
	if err != nil {
		return hashes{}, err
	}
	if err := os.WriteFile(filepath.Join(vdir, version+".info"), info, 0o644); err != nil {
		return hashes{}, err
	}
	if err := os.WriteFile(filepath.Join(vdir, version+".mod"), gomod, 0o644); err != nil {
		return hashes{}, err
	}
	if err := addToList(filepath.Join(vdir, "list"), version); err != nil {
		return hashes{}, err
	}

	var h hashes
	if h.zip, err = dirhash.HashZip(zipPath, dirhash.Hash1); err != nil {
		return hashes{}, err
	}
	if h.mod, err = modHash(gomod); err != nil {
		return hashes{}, err
	}
	return h, nil
}

// release returns go.mod requiring every sibling it requires at version, and
// go.sum with their lines (replacing any it had for them).
func release(gomod, gosum []byte, version string, sums map[string]hashes) ([]byte, []byte, error) {
	mf, err := modfile.Parse("go.mod", gomod, nil)
	if err != nil {
		return nil, nil, err
	}
	for _, r := range mf.Replace {
		if strings.HasPrefix(r.Old.Path, Path) {
			return nil, nil, fmt.Errorf("go.mod replaces %s: the modules are tied by go.work, never by replace (go install refuses a module with replace directives)", r.Old.Path)
		}
	}
	var sibs []string
	for _, r := range mf.Require {
		p := r.Mod.Path
		if p != Path && !strings.HasPrefix(p, Path+"/") {
			continue
		}
		if _, ok := sums[p]; !ok {
			return nil, nil, fmt.Errorf("go.mod requires %s, not released before it (release order %v)", p, Modules)
		}
		if err := mf.AddRequire(p, version); err != nil {
			return nil, nil, err
		}
		sibs = append(sibs, p)
	}
	mf.Cleanup()
	out, err := mf.Format()
	if err != nil {
		return nil, nil, err
	}
	var sum bytes.Buffer
	for _, l := range strings.SplitAfter(string(gosum), "\n") {
		if fields := strings.Fields(l); len(fields) == 3 && slices.Contains(sibs, fields[0]) {
			continue
		}
		sum.WriteString(l)
	}
	if sum.Len() > 0 && !bytes.HasSuffix(sum.Bytes(), []byte("\n")) {
		sum.WriteByte('\n')
	}
	for _, p := range sibs {
		fmt.Fprintf(&sum, "%s %s %s\n%s %s/go.mod %s\n", p, version, sums[p].zip, p, version, sums[p].mod)
	}
	return out, sortSum(sum.Bytes()), nil
}

// sortSum orders go.sum lines as the go command writes them.
func sortSum(b []byte) []byte {
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	slices.Sort(lines)
	lines = slices.Compact(lines)
	if len(lines) == 1 && lines[0] == "" {
		return nil
	}
	return []byte(strings.Join(lines, "\n") + "\n")
}

// modHash is the go.sum hash of a go.mod ("path version/go.mod h1:…").
func modHash(gomod []byte) (string, error) {
	return dirhash.Hash1([]string{"go.mod"}, func(string) (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(gomod)), nil
	})
}

// gitFiles lists, relative to root/dir and slash-separated, the files of dir
// git would commit: tracked (and still present) or untracked and not ignored.
// Build leaves out those of nested modules (golang.org/x/mod/zip does).
func gitFiles(ctx context.Context, root, dir string) ([]string, error) {
	cmd := exec.CommandContext(ctx, "git", "ls-files", "-z", "--cached", "--others", "--exclude-standard", "--", ".")
	cmd.Dir = filepath.Join(root, dir)
	out, err := cmd.Output()
	if err != nil {
		if ee := (*exec.ExitError)(nil); errors.As(err, &ee) {
			return nil, fmt.Errorf("git ls-files: %w: %s", err, ee.Stderr)
		}
		return nil, fmt.Errorf("git ls-files: %w", err)
	}
	var files []string
	for _, f := range strings.Split(string(out), "\x00") {
		if f == "" {
			continue
		}
		fi, err := os.Lstat(filepath.Join(cmd.Dir, filepath.FromSlash(f)))
		if err != nil {
			if os.IsNotExist(err) { // deleted, not yet committed
				continue
			}
			return nil, err
		}
		if !fi.Mode().IsRegular() {
			continue
		}
		files = append(files, path.Clean(f))
	}
	slices.Sort(files)
	return slices.Compact(files), nil
}

// addToList adds version to a proxy's list file.
func addToList(list, version string) error {
	b, err := os.ReadFile(list)
	if err != nil && !os.IsNotExist(err) {
		return err
	}
	vs := strings.Fields(string(b))
	if !slices.Contains(vs, version) {
		vs = append(vs, version)
	}
	return os.WriteFile(list, []byte(strings.Join(vs, "\n")+"\n"), 0o644)
}

// diskFile is a module file read from the tree.
type diskFile struct{ rel, abs string }

func (f diskFile) Path() string                 { return f.rel }
func (f diskFile) Lstat() (fs.FileInfo, error)  { return os.Lstat(f.abs) }
func (f diskFile) Open() (io.ReadCloser, error) { return os.Open(f.abs) }

// dataFile is a module file made here (go.mod and go.sum as released).
type dataFile struct {
	name string
	data []byte
}

func (f dataFile) Path() string                 { return f.name }
func (f dataFile) Lstat() (fs.FileInfo, error)  { return dataInfo(f), nil }
func (f dataFile) Open() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(f.data)), nil }

type dataInfo dataFile

func (i dataInfo) Name() string       { return path.Base(i.name) }
func (i dataInfo) Size() int64        { return int64(len(i.data)) }
func (i dataInfo) Mode() fs.FileMode  { return 0o644 }
func (i dataInfo) ModTime() time.Time { return time.Time{} }
func (i dataInfo) IsDir() bool        { return false }
func (i dataInfo) Sys() any           { return nil }
