// Package version says which build of plugincontrol is running: the module
// version of the main package ("(devel)" from a checkout) and, when the
// binary was built with VCS stamping, the commit. plugind reports it in
// the plugincontrol_build_info metric and the plugincontrol-version
// response header; pluginctl in --version.
package version

import "runtime/debug"

// Header is the response header in which plugind sends its version.
const Header = "plugincontrol-version"

// Get returns the version and the VCS revision ("unknown" without VCS
// stamping).
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
	return version, revision
}

// String is "VERSION (REVISION)", the revision cut to 12 characters.
func String() string {
	v, r := Get()
	if len(r) > 12 {
		r = r[:12]
	}
	return v + " (" + r + ")"
}
