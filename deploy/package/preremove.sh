#!/bin/sh
# Before removal (deb: remove|upgrade|deconfigure|failed-upgrade; rpm: 0
# remove, 1 upgrade). On removal plugind is stopped (it stops every plugin
# itself) and disabled; on upgrade it keeps running: the new package's
# postinstall reloads it in place.
set -e
case "$1" in
remove | 0) ;;
*) exit 0 ;;
esac
if [ -d /run/systemd/system ]; then
	systemctl disable --now plugind.service || true
fi
