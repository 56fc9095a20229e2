// Package install tests the release build (make/release.sh, what make
// release-snapshot runs) and the .deb it makes, as installed on this
// machine: dpkg -i, the files, the user, the permissions, systemd-analyze
// verify on the installed unit, the stamped version, the installed plugind
// started as the plugind user the way the unit starts it and driven by the
// installed pluginctl, then dpkg --purge. It also checks the maintainer
// scripts' choices (reload or restart on upgrade) against a recording
// systemctl, which no machine without systemd as PID 1 can show otherwise.
//
// The package test installs into the machine's own /usr, /etc and /var and
// so needs root; it refuses to run where plugincontrol is already installed
// (it would purge it).
package install_test

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/plugincontrol/plugincontrol/internal/testbin"
)

// dist is the release build's directory (DIST of make/release.sh).
var dist string

func TestMain(m *testing.M) {
	testbin.Main(m, &dist, func(dir string) error {
		cmd := exec.Command(filepath.Join(testbin.Root(), "make", "release.sh"), "snapshot")
		cmd.Dir = testbin.Root()
		// This machine's architecture only: the package is installed here.
		cmd.Env = append(os.Environ(), "DIST="+dir, "ARCHS="+runtime.GOARCH)
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		return cmd.Run()
	})
}

// built returns the one file of the build matching pattern.
func built(t *testing.T, pattern string) string {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(dist, pattern))
	if err != nil || len(m) != 1 {
		t.Fatalf("release build: want one %s, got %v (%v)", pattern, m, err)
	}
	return m[0]
}

// wantVersion checks a --version line: the snapshot version of this commit
// (the version the modules are next released at, "-snapshot.", the commit),
// the commit, and the commit's date as the build date.
func wantVersion(t *testing.T, cmd, line string) {
	t.Helper()
	git := func(args ...string) string {
		out, err := exec.Command("git", append([]string{"-C", testbin.Root()}, args...)...).Output()
		if err != nil {
			t.Fatalf("git %v: %v", args, err)
		}
		return strings.TrimSpace(string(out))
	}
	short := git("rev-parse", "--short=12", "HEAD")
	sec, err := strconv.ParseInt(git("log", "-1", "--format=%ct", "HEAD"), 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	date := time.Unix(sec, 0).UTC().Format(time.RFC3339)
	want := "-snapshot." + short + " (" + short + ") built " + date
	if !strings.HasPrefix(line, cmd+" v") || !strings.Contains(line, want) {
		t.Errorf("%s --version: %q, want %q in it", cmd, line, cmd+" vX.Y.Z"+want)
	}
}

// TestArchive: checksums.txt verifies every artefact; the archive holds the
// commands, LICENSE, README, the unit, the example config and completions,
// and its commands carry the stamped version.
func TestArchive(t *testing.T) {
	cmd := exec.Command("sha256sum", "--strict", "-c", "checksums.txt")
	cmd.Dir = dist
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("sha256sum -c checksums.txt: %v\n%s", err, out)
	}
	for _, p := range []string{"*.tar.gz", "*.deb", "*.rpm"} {
		if !strings.Contains(string(out), filepath.Base(built(t, p))+": OK") {
			t.Errorf("checksums.txt does not cover %s:\n%s", p, out)
		}
	}

	archive := built(t, "plugincontrol_*_linux_"+runtime.GOARCH+".tar.gz")
	name := strings.TrimSuffix(filepath.Base(archive), ".tar.gz")
	out, err = exec.Command("tar", "-tzf", archive).Output()
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, f := range strings.Fields(string(out)) {
		if !strings.HasSuffix(f, "/") {
			got = append(got, strings.TrimPrefix(f, name+"/"))
		}
	}
	slices.Sort(got)
	want := []string{"LICENSE", "README.md", "completions/_plugind", "completions/_pluginctl",
		"completions/plugind.bash", "completions/plugind.fish", "completions/pluginctl.bash", "completions/pluginctl.fish",
		"plugind", "plugind.service", "plugind.yaml", "pluginctl"}
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("%s holds\n%v\nwant\n%v", filepath.Base(archive), got, want)
	}

	x := t.TempDir()
	if out, err := exec.Command("tar", "-xzf", archive, "-C", x).CombinedOutput(); err != nil {
		t.Fatalf("tar -x: %v\n%s", err, out)
	}
	for _, c := range []string{"plugind", "pluginctl"} {
		out, err := exec.Command(filepath.Join(x, name, c), "--version").Output()
		if err != nil {
			t.Fatalf("%s --version: %v", c, err)
		}
		wantVersion(t, c, strings.TrimSpace(string(out)))
	}
}

// run runs a command, failing the test with its output when it fails.
func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// TestDebAsInstalled installs the .deb, runs what it installed and purges it.
func TestDebAsInstalled(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("the package test installs with dpkg -i and needs root (CI runs as root)")
	}
	if _, err := exec.LookPath("dpkg"); err != nil {
		t.Fatalf("dpkg: %v (the package test runs on Debian or a derivative)", err)
	}
	if exec.Command("dpkg-query", "-W", "-f=${Status}", "plugincontrol").Run() == nil {
		out, _ := exec.Command("dpkg-query", "-W", "-f=${Status}", "plugincontrol").Output()
		if strings.Contains(string(out), "installed") && !strings.Contains(string(out), "not-installed") {
			t.Fatalf("plugincontrol is installed on this machine (%s): the test would purge it; dpkg --purge plugincontrol first", out)
		}
	}
	if fi, err := os.Stat("/run/systemd/system"); err == nil && fi.IsDir() {
		t.Fatal("systemd runs as PID 1 here: the package's postinst would enable and start plugind.service; run this test where systemd is not PID 1 (CI, a container)")
	}
	deb := built(t, "plugincontrol_*_"+runtime.GOARCH+".deb")
	purged := false
	t.Cleanup(func() {
		if !purged {
			exec.Command("dpkg", "--purge", "plugincontrol").Run()
		}
	})
	run(t, "dpkg", "-i", deb)

	// The files, their modes and owners.
	for _, f := range []struct {
		path string
		mode os.FileMode
	}{
		{"/usr/bin/plugind", 0o755}, {"/usr/bin/pluginctl", 0o755}, {"/usr/lib/plugind/plugins/echo", 0o755},
		{"/usr/lib/systemd/system/plugind.service", 0o644}, {"/etc/plugind/plugind.yaml", 0o644},
		{"/usr/share/bash-completion/completions/pluginctl", 0o644}, {"/usr/share/bash-completion/completions/plugind", 0o644},
		{"/usr/share/zsh/vendor-completions/_pluginctl", 0o644}, {"/usr/share/zsh/vendor-completions/_plugind", 0o644},
		{"/usr/share/fish/vendor_completions.d/pluginctl.fish", 0o644}, {"/usr/share/fish/vendor_completions.d/plugind.fish", 0o644},
		{"/usr/share/doc/plugincontrol/copyright", 0o644},
		{"/usr/lib/plugind/plugins", os.ModeDir | 0o755},
	} {
		fi, err := os.Stat(f.path)
		if err != nil {
			t.Errorf("installed: %v", err)
			continue
		}
		st := fi.Sys().(*syscall.Stat_t)
		if fi.Mode() != f.mode || st.Uid != 0 || st.Gid != 0 {
			t.Errorf("%s: mode %v uid %d gid %d, want %v root:root", f.path, fi.Mode(), st.Uid, st.Gid, f.mode)
		}
	}
	if conf := run(t, "dpkg-query", "-W", "-f=${Conffiles}", "plugincontrol"); !strings.Contains(conf, "/etc/plugind/plugind.yaml") {
		t.Errorf("/etc/plugind/plugind.yaml is not a conffile: %q", conf)
	}

	// The user, and the state directory it owns.
	u, err := user.Lookup("plugind")
	if err != nil {
		t.Fatalf("the plugind user: %v", err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	if uid == 0 || uid >= 1000 || u.HomeDir != "/var/lib/plugind" {
		t.Errorf("plugind user: uid %d home %s, want a system uid (<1000) and /var/lib/plugind", uid, u.HomeDir)
	}
	if shell := passwdShell(t, "plugind"); shell != "/usr/sbin/nologin" {
		t.Errorf("plugind's shell is %q, want /usr/sbin/nologin", shell)
	}
	if fi, err := os.Stat("/var/lib/plugind"); err != nil {
		t.Errorf("state directory: %v", err)
	} else if st := fi.Sys().(*syscall.Stat_t); fi.Mode() != os.ModeDir|0o700 || int(st.Uid) != uid || int(st.Gid) != gid {
		t.Errorf("/var/lib/plugind: %v %d:%d, want drwx------ plugind:plugind", fi.Mode(), st.Uid, st.Gid)
	}

	// The unit, as systemd reads it.
	cmd := exec.Command("systemd-analyze", "verify", "/usr/lib/systemd/system/plugind.service")
	cmd.Env = append(os.Environ(), "SYSTEMD_LOG_LEVEL=notice")
	if out, err := cmd.CombinedOutput(); err != nil || strings.Contains(string(out), "plugind.service") {
		t.Errorf("systemd-analyze verify (installed unit): %v\n%s", err, out)
	}
	unit := readUnit(t, "/usr/lib/systemd/system/plugind.service")

	out := run(t, "/usr/bin/plugind", "--version")
	wantVersion(t, "plugind", strings.TrimSpace(out))

	// Start plugind as systemd would (without systemd as PID 1): its
	// RuntimeDirectory, the unit's User and UMask, ExecStart as written.
	if unit["User"] != "plugind" || unit["RuntimeDirectory"] != "plugind" || unit["UMask"] != "0077" {
		t.Fatalf("unit: User=%s RuntimeDirectory=%s UMask=%s", unit["User"], unit["RuntimeDirectory"], unit["UMask"])
	}
	runDir := "/run/" + unit["RuntimeDirectory"]
	if err := os.Mkdir(runDir, 0o750); err != nil {
		t.Fatalf("RuntimeDirectory: %v", err)
	}
	t.Cleanup(func() { os.RemoveAll(runDir) })
	if err := os.Chown(runDir, uid, gid); err != nil {
		t.Fatal(err)
	}
	argv := strings.Fields(unit["ExecStart"])
	if argv[0] != "/usr/bin/plugind" {
		t.Fatalf("ExecStart runs %s, not the installed /usr/bin/plugind", argv[0])
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	daemon := exec.CommandContext(ctx, "/bin/sh", append([]string{"-c", `umask "$0"; exec "$@"`, unit["UMask"]}, argv...)...)
	daemon.Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8"}
	daemon.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, Setpgid: true}
	var logs testbin.Buffer
	daemon.Stdout, daemon.Stderr = &logs, &logs
	if err := daemon.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- daemon.Wait() }()
	stopped := false
	stop := func() {
		if stopped {
			return
		}
		stopped = true
		daemon.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-exited:
			if err != nil {
				t.Errorf("plugind exited: %v\n%s", err, logs.String())
			}
		case <-time.After(time.Minute):
			syscall.Kill(-daemon.Process.Pid, syscall.SIGKILL)
			<-exited
			t.Errorf("plugind did not stop on SIGTERM\n%s", logs.String())
		}
	}
	t.Cleanup(stop)
	if !logs.WaitFor("plugind serving", 1, time.Minute) {
		t.Fatalf("the installed plugind did not come up:\n%s", logs.String())
	}
	addr := "unix://" + runDir + "/plugind.sock"
	// The config file loads echo: the installed pluginctl watches it serve.
	if err := waitServing(ctx, addr, "echo"); err != nil {
		t.Fatalf("pluginctl watch echo: %v\n%s", err, logs.String())
	}
	if fi, err := os.Stat(runDir + "/plugind.sock"); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("control socket: %v %v, want mode 0600", fi, err)
	}
	list := run(t, "/usr/bin/pluginctl", "--addr", addr, "list")
	if !strings.Contains(list, "echo") || !strings.Contains(list, "SERVING") {
		t.Errorf("pluginctl list: the config's echo is not serving:\n%s", list)
	}
	ver := run(t, "/usr/bin/pluginctl", "--addr", addr, "version")
	lines := strings.Split(strings.TrimSpace(ver), "\n")
	wantVersion(t, "pluginctl", lines[0])
	if installed := strings.Fields(out)[1]; len(lines) < 2 || !strings.Contains(lines[1], installed) {
		t.Errorf("pluginctl version: the daemon's version is not the installed plugind's %q:\n%s", out, ver)
	}
	stop()
	if left := testbin.ProcessesIn("/usr/lib/plugind/plugins"); len(left) > 0 {
		t.Errorf("plugins left running after plugind stopped: %v", left)
	}
	os.RemoveAll(runDir)

	// Purge: nothing but the user (Debian policy keeps system users).
	run(t, "dpkg", "--purge", "plugincontrol")
	purged = true
	for _, p := range []string{"/usr/bin/plugind", "/usr/bin/pluginctl", "/usr/lib/plugind", "/usr/lib/systemd/system/plugind.service",
		"/etc/plugind", "/var/lib/plugind", "/usr/share/doc/plugincontrol", "/usr/share/bash-completion/completions/pluginctl"} {
		if _, err := os.Lstat(p); !os.IsNotExist(err) {
			t.Errorf("after dpkg --purge, %s is still there (%v)", p, err)
		}
	}
	if _, err := user.Lookup("plugind"); err != nil {
		t.Errorf("dpkg --purge removed the plugind user (policy keeps it: files it owned may remain elsewhere): %v", err)
	}
}

// waitServing runs the installed pluginctl watch until plugin serves.
func waitServing(ctx context.Context, addr, plugin string) error {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "/usr/bin/pluginctl", "--addr", addr, "watch", "--plain", plugin)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		return err
	}
	defer cmd.Wait()
	defer cmd.Process.Kill()
	sc := bufio.NewScanner(stdout)
	var seen []string
	for sc.Scan() {
		// REVISION TYPE NAME STATE GEN REASON
		f := strings.Fields(sc.Text())
		seen = append(seen, sc.Text())
		if len(f) >= 4 && f[2] == plugin && f[3] == "SERVING" {
			return nil
		}
	}
	return fmt.Errorf("the stream ended (%v) before %s served; events:\n%s\n%s", ctx.Err(), plugin, strings.Join(seen, "\n"), stderr.String())
}

// passwdShell is user's login shell from the passwd database.
func passwdShell(t *testing.T, name string) string {
	t.Helper()
	out := run(t, "getent", "passwd", name)
	f := strings.Split(strings.TrimSpace(out), ":")
	return f[len(f)-1]
}

// readUnit reads the [Service] keys of a unit file (the last value of each,
// continuation lines joined).
func readUnit(t *testing.T, path string) map[string]string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	keys := map[string]string{}
	section, cont := "", ""
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		l := strings.TrimSpace(sc.Text())
		if cont != "" {
			l = cont + " " + l
			cont = ""
		}
		if strings.HasSuffix(l, "\\") {
			cont = strings.TrimSuffix(l, "\\")
			continue
		}
		if strings.HasPrefix(l, "#") || l == "" {
			continue
		}
		if strings.HasPrefix(l, "[") {
			section = l
			continue
		}
		if k, v, ok := strings.Cut(l, "="); ok && section == "[Service]" {
			keys[k] = v
		}
	}
	return keys
}

// TestMaintainerScripts runs the package's maintainer scripts with the
// arguments dpkg and rpm give them, under systemd as far as they can tell
// (a private /run with /run/systemd/system, in a mount namespace of their
// own) and with systemctl and install recording what they were asked to do:
// what each script chooses on install, upgrade and removal.
func TestMaintainerScripts(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("needs root (a mount namespace with a private /run)")
	}
	scripts := filepath.Join(testbin.Root(), "deploy", "package")
	stubs := t.TempDir()
	record := filepath.Join(stubs, "calls")
	for name, body := range map[string]string{
		// is-active answers $STUB_ACTIVE; show answers $STUB_EXECSTART.
		"systemctl": `echo "systemctl $*" >>"$RECORD"
case "$1" in
is-active) [ "$STUB_ACTIVE" = yes ] ;;
show) echo "ExecStart={ path=/usr/bin/plugind ; argv[]=$STUB_EXECSTART ; }" ;;
esac`,
		"install": `echo "install $*" >>"$RECORD"`,
	} {
		if err := os.WriteFile(filepath.Join(stubs, name), []byte("#!/bin/sh\n"+body+"\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	const (
		live  = "/usr/bin/plugind --config /etc/plugind/plugind.yaml --live-restore"
		plain = "/usr/bin/plugind --config /etc/plugind/plugind.yaml"
	)
	mkdir := "install -d -o plugind -g plugind -m 0700 /var/lib/plugind"
	for _, c := range []struct {
		name, script string
		args         []string
		systemd      bool
		active       bool
		execStart    string
		want         []string
	}{
		{"deb install", "postinstall.sh", []string{"configure", ""}, true, false, live,
			[]string{mkdir, "systemctl daemon-reload", "systemctl enable plugind.service", "systemctl start plugind.service"}},
		{"deb upgrade, live restore", "postinstall.sh", []string{"configure", "0.0.9"}, true, true, live,
			[]string{mkdir, "systemctl daemon-reload", "systemctl is-active --quiet plugind.service", "systemctl show --property=ExecStart plugind.service", "systemctl reload plugind.service"}},
		{"deb upgrade, no live restore", "postinstall.sh", []string{"configure", "0.0.9"}, true, true, plain,
			[]string{mkdir, "systemctl daemon-reload", "systemctl is-active --quiet plugind.service", "systemctl show --property=ExecStart plugind.service", "systemctl try-restart plugind.service"}},
		{"deb upgrade, stopped", "postinstall.sh", []string{"configure", "0.0.9"}, true, false, live,
			[]string{mkdir, "systemctl daemon-reload", "systemctl is-active --quiet plugind.service"}},
		{"deb upgrade, no systemd", "postinstall.sh", []string{"configure", "0.0.9"}, false, true, live,
			[]string{mkdir}},
		{"deb abort-upgrade", "postinstall.sh", []string{"abort-upgrade", "0.0.9"}, true, true, live,
			[]string{mkdir}},
		{"rpm install", "postinstall.sh", []string{"1"}, true, false, live,
			[]string{mkdir, "systemctl daemon-reload", "systemctl preset plugind.service"}},
		{"rpm upgrade, live restore", "postinstall.sh", []string{"2"}, true, true, live,
			[]string{mkdir, "systemctl daemon-reload", "systemctl is-active --quiet plugind.service", "systemctl show --property=ExecStart plugind.service", "systemctl reload plugind.service"}},
		{"deb remove", "preremove.sh", []string{"remove"}, true, true, live, []string{"systemctl disable --now plugind.service"}},
		{"deb upgrade (old prerm)", "preremove.sh", []string{"upgrade", "0.2.0"}, true, true, live, nil},
		{"rpm erase", "preremove.sh", []string{"0"}, true, true, live, []string{"systemctl disable --now plugind.service"}},
		{"rpm upgrade (old preun)", "preremove.sh", []string{"1"}, true, true, live, nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			os.Remove(record)
			script := filepath.Join(scripts, c.script)
			var cmd *exec.Cmd
			if c.systemd {
				cmd = exec.Command("unshare", append([]string{"--mount", "--propagation", "private", "sh", "-c",
					`mount -t tmpfs tmpfs /run && mkdir -p /run/systemd/system && exec sh "$@"`, "sh", script}, c.args...)...)
			} else {
				cmd = exec.Command("sh", append([]string{script}, c.args...)...)
			}
			active := "no"
			if c.active {
				active = "yes"
			}
			cmd.Env = append(os.Environ(), "PATH="+stubs+":"+os.Getenv("PATH"), "RECORD="+record, "STUB_ACTIVE="+active, "STUB_EXECSTART="+c.execStart)
			if out, err := cmd.CombinedOutput(); err != nil {
				t.Fatalf("%s %v: %v\n%s", c.script, c.args, err, out)
			}
			b, err := os.ReadFile(record)
			if err != nil && !os.IsNotExist(err) {
				t.Fatal(err)
			}
			var got []string
			if s := strings.TrimSpace(string(b)); s != "" {
				got = strings.Split(s, "\n")
			}
			if !slices.Equal(got, c.want) {
				t.Errorf("%s %v did\n  %s\nwant\n  %s", c.script, c.args, strings.Join(got, "\n  "), strings.Join(c.want, "\n  "))
			}
		})
	}
	// Under systemd, /run/systemd/system exists; outside the namespace it
	// must not have been created by the test.
	if _, err := os.Stat("/run/systemd/system"); err == nil {
		t.Error("/run/systemd/system exists outside the test's mount namespace")
	}
}
