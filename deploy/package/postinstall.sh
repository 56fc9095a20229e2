#!/bin/sh
# After unpacking (deb: configure [OLD-VERSION]; rpm: 1 install, 2 upgrade).
#
# Fresh install: /var/lib/plugind (0700, plugind's); under systemd, the unit
# is enabled and started on Debian (its convention), preset on RPM systems
# (theirs).
# Upgrade: a running plugind whose unit has --live-restore (the shipped one)
# is reloaded in place ("systemctl reload": it re-executes the new
# /usr/bin/plugind with the same pid, no plugin restarted, no call failed);
# one without it is restarted (try-restart: only if it runs).
set -e
install -d -o plugind -g plugind -m 0700 /var/lib/plugind

upgrade=false
case "$1" in
configure) [ -n "$2" ] && upgrade=true ;;
2) upgrade=true ;;
1) ;;
*) exit 0 ;; # abort-upgrade, abort-remove, ...: nothing was changed
esac

[ -d /run/systemd/system ] || exit 0
systemctl daemon-reload
if $upgrade; then
	if systemctl is-active --quiet plugind.service; then
		if systemctl show --property=ExecStart plugind.service | grep -q -- '--live-restore'; then
			systemctl reload plugind.service
		else
			systemctl try-restart plugind.service
		fi
	fi
elif [ "$1" = configure ]; then
	systemctl enable plugind.service
	systemctl start plugind.service || echo "plugind did not start: journalctl -u plugind" >&2
else
	systemctl preset plugind.service || true
fi
