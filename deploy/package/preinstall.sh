#!/bin/sh
# Before unpacking (deb: install|upgrade; rpm: 1 install, 2 upgrade): the
# plugind system user and group, which the unit runs as and which own
# /var/lib/plugind. Kept on removal and purge (Debian policy: a system
# user's files may outlive the package).
set -e
if ! getent group plugind >/dev/null; then
	groupadd --system plugind
fi
if ! getent passwd plugind >/dev/null; then
	useradd --system --gid plugind --home-dir /var/lib/plugind --no-create-home \
		--shell /usr/sbin/nologin --comment "plugincontrol daemon" plugind
fi
