// Package version says which build of plugincontrol is running: the module
// version of the main package ("(devel)" from a checkout) and, when the
// binary was built with VCS stamping, the commit. plugind reports it in
// the plugincontrol_build_info metric and the plugincontrol-version
// response header; pluginctl in --version.
package version

import "runtime/debug"

// Header is the response header in which plugind sends its version.
const Header = "plugincontrol-version"

// Stamped at build time by a release build (-ldflags "-X
// github.com/plugincontrol/plugincontrol/internal/version.stamp=v0.3.0
// -X ...version.commit=REV -X ...version.date=DATE"); empty otherwise.
// They are set by the linker only, never written at run time.
var (
	stamp  string
	commit string
	date   string
)

// Get returns the version and the VCS revision: the stamped ones when the
// build stamped them, else the module version of the main package
// ("(devel)" from a checkout) and the VCS revision Go recorded ("unknown"
// without VCS stamping).
func Get() (version, revision string) {
	version, revision = "(devel)", "unknown"
	if bi, ok := debug.ReadBuildInfo(); ok {
		if bi.Main.Version != "" {
			version = bi.Main.Version
		}
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" {
				revision = s.Value
			}
		}
	}
	if stamp != "" {
		version = stamp
	}
	if commit != "" {
		revision = commit
	}
	return version, revision
}

// Date is the build date a release build stamped ("" otherwise).
func Date() string { return date }

// String is "VERSION (REVISION)", the revision cut to 12 characters, and
// " built DATE" when a release build stamped the date.
func String() string {
	v, r := Get()
	if len(r) > 12 {
		r = r[:12]
	}
	s := v + " (" + r + ")"
	if date != "" {
		s += " built " + date
	}
	return s
}
