#!/usr/bin/env bash
# release.sh snapshot | release.sh vX.Y.Z: the release build, into dist/.
#
#   dist/plugincontrol_VERSION_linux_{amd64,arm64}.tar.gz
#       plugind, pluginctl, LICENSE, README.md, the systemd unit, the example
#       config and completions/ (bash, zsh, fish for both commands)
#   dist/plugincontrol_VERSION_{amd64,arm64}.deb, dist/plugincontrol-VERSION.{x86_64,aarch64}.rpm
#       built by nfpm (deploy/package/nfpm.yaml): the binaries in /usr/bin,
#       the unit, the plugind user, /var/lib/plugind, /etc/plugind/plugind.yaml
#       (a config file), completions and the maintainer scripts
#   dist/checksums.txt
#       sha256 of each of the above (sha256sum -c checksums.txt)
#
# Version, commit and commit date are stamped with -ldflags -X into
# internal/version: plugind --version, pluginctl version and the
# plugincontrol_build_info metric show them. "snapshot" builds the version
# the modules are next released at (their go.mod; README: Releasing) with a
# "-snapshot.COMMIT" suffix, from any tree; a version builds only from a
# clean tree whose HEAD carries that tag. Offline: everything comes from the
# module cache and tools/go.mod (nfpm).
#
# GoReleaser is the Go convention for this, but no release of it is approved
# for this project (README: Releasing): this script does its steps, and
# nfpm, the packager GoReleaser itself uses, builds the packages.
set -euo pipefail
cd "$(dirname "$0")/.."
arg=${1:?usage: release.sh snapshot|vX.Y.Z}

commit=$(git rev-parse HEAD)
# The commit's date, not the clock: the same commit builds the same archives.
export SOURCE_DATE_EPOCH=$(git log -1 --format=%ct HEAD)
date=$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y-%m-%dT%H:%M:%SZ)
if [ "$arg" = snapshot ]; then
	next=$(awk '$1 == "github.com/plugincontrol/plugincontrol/gen" { print $2 }' go.mod)
	version="$next-snapshot.$(git rev-parse --short=12 HEAD)"
else
	version=$arg
	[[ "$version" =~ ^v[0-9]+\.[0-9]+\.[0-9]+(-[0-9A-Za-z.-]+)?$ ]] || { echo "release.sh: $version is not a version vX.Y.Z" >&2; exit 2; }
	[ -z "$(git status --porcelain)" ] || { echo "release.sh: the tree has uncommitted changes; a release builds from a clean tree" >&2; exit 1; }
	[ "$(git rev-parse -q --verify "refs/tags/$version^{commit}" || true)" = "$commit" ] || { echo "release.sh: HEAD is not tagged $version" >&2; exit 1; }
fi
echo "release.sh: plugincontrol $version ($commit, $date)"

# DIST and ARCHS narrow a build (the package test builds amd64 only into a
# directory of its own).
dist=${DIST:-dist}
rm -rf "$dist"
mkdir -p "$dist/build" "$dist/completions" "$dist/package"
pkg=github.com/plugincontrol/plugincontrol/internal/version
ldflags="-s -w -X $pkg.stamp=$version -X $pkg.commit=$commit -X $pkg.date=$date"

read -r -a archs <<<"${ARCHS:-amd64 arm64}"
for arch in "${archs[@]}"; do
	CGO_ENABLED=0 GOOS=linux GOARCH=$arch go build -trimpath -ldflags "$ldflags" \
		-o "$dist/build/linux_$arch/" ./cmd/plugind ./cmd/pluginctl ./examples/plugins/echo
done

# Completions, from the commands built for this machine.
host="$dist/build/linux_$(go env GOARCH)"
for c in plugind pluginctl; do
	"$host/$c" completion bash >"$dist/completions/$c.bash"
	"$host/$c" completion zsh >"$dist/completions/_$c"
	"$host/$c" completion fish >"$dist/completions/$c.fish"
done

# The unit as packaged: the binary is at /usr/bin (the repository's unit
# names /usr/local/bin, where a hand install puts it).
sed 's|/usr/local/bin/plugind|/usr/bin/plugind|g' deploy/systemd/plugind.service >"$dist/package/plugind.service"
grep -q '^ExecStart=/usr/bin/plugind' "$dist/package/plugind.service"

# Archives: fixed owner, order and times.
tarflags=(--owner=0 --group=0 --numeric-owner --sort=name --mtime="@$SOURCE_DATE_EPOCH")
for arch in "${archs[@]}"; do
	name="plugincontrol_${version#v}_linux_$arch"
	stage="$dist/stage/$name"
	mkdir -p "$stage/completions"
	cp "$dist/build/linux_$arch/plugind" "$dist/build/linux_$arch/pluginctl" LICENSE README.md "$stage/"
	cp deploy/systemd/plugind.service deploy/plugind.yaml "$stage/"
	cp "$dist/completions/"* "$stage/completions/"
	tar "${tarflags[@]}" -C "$dist/stage" -cf - "$name" | gzip -n -9 >"$dist/$name.tar.gz"
done
rm -rf "$dist/stage"

# Packages.
for arch in "${archs[@]}"; do
	for p in deb rpm; do
		VERSION=$version ARCH=$arch DIST=$dist GOWORK=off go tool -modfile=tools/go.mod nfpm package \
			--config deploy/package/nfpm.yaml --packager "$p" --target "$dist/" >/dev/null
	done
done

(cd "$dist" && sha256sum -- *.tar.gz *.deb *.rpm >checksums.txt)
echo "release.sh: $dist/"
(cd "$dist" && ls -l -- *.tar.gz *.deb *.rpm checksums.txt | awk '{ printf "  %-56s %9d bytes\n", $9, $5 }')
