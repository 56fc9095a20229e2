#!/bin/sh
# After removal (deb: remove|purge|upgrade|...; rpm: 0 remove, 1 upgrade).
# purge (deb) deletes the state directory (the store, the audit record and
# the plugins' sockets) and /etc/plugind once dpkg has taken the config file;
# the plugind user stays (policy). RPM has no purge: its removal keeps
# /var/lib/plugind.
set -e
case "$1" in
purge)
	rm -rf /var/lib/plugind
	rmdir /etc/plugind 2>/dev/null || true
	;;
esac
if [ -d /run/systemd/system ]; then
	systemctl daemon-reload || true
fi
