#!/bin/sh
# Install Strata on a systemd host (docs/operations.md, "Install on a host"):
#
#   sudo deploy/install.sh [--prefix /opt/strata] [--backup-dir DIR] [--no-start]
#
#   - a system user and group `strata` (no login shell, home /var/lib/strata);
#   - the daemon and its client in a virtual environment at PREFIX, linked as
#     /usr/local/bin/strata;
#   - /etc/strata/strata.toml from deploy/strata.toml unless one exists (the unit
#     takes its settings from that file only);
#   - /var/lib/strata (data), and with --backup-dir a directory for checkpoints that
#     the unit may write (a drop-in adds it to ReadWritePaths: ProtectSystem=strict
#     leaves every other path read-only);
#   - the unit, enabled and started (--no-start: installed only).
#
# --destdir DIR stages every file under DIR instead, to see what it installs: no user is
# created, nothing is chowned and systemctl is not called. Run it again to upgrade:
# the environment is reinstalled, an existing strata.toml is kept.
set -eu

src=$(cd "$(dirname "$0")/.." && pwd)
prefix=/opt/strata
destdir=
backup_dir=
start=yes
python=${PYTHON:-python3}

usage() {
    sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'
    exit "$1"
}

while [ $# -gt 0 ]; do
    case "$1" in
        --prefix) prefix=$2; shift 2 ;;
        --backup-dir) backup_dir=$2; shift 2 ;;
        --destdir) destdir=$2; shift 2 ;;
        --no-start) start=no; shift ;;
        -h|--help) usage 0 ;;
        *) echo "install.sh: unknown argument $1" >&2; usage 2 >&2 ;;
    esac
done
case "$prefix" in /*) ;; *) echo "install.sh: --prefix must be absolute" >&2; exit 2 ;; esac
case "$backup_dir" in ""|/*) ;; *) echo "install.sh: --backup-dir must be absolute" >&2; exit 2 ;; esac

run_as_root() {  # what only makes sense on the real system
    if [ -n "$destdir" ]; then
        echo "install.sh: skipped with --destdir: $*"
    else
        "$@"
    fi
}

if [ -z "$destdir" ] && [ "$(id -u)" != 0 ]; then
    echo "install.sh: run as root (or stage with --destdir DIR)" >&2
    exit 1
fi

echo "install.sh: user and group strata"
if [ -z "$destdir" ] && ! getent passwd strata >/dev/null; then
    useradd --system --user-group --home-dir /var/lib/strata --no-create-home \
        --shell /usr/sbin/nologin strata
fi

echo "install.sh: virtual environment $prefix"
"$python" -m venv "$destdir$prefix"
"$destdir$prefix/bin/pip" install -q --upgrade "$src/client" "$src"
install -d "$destdir/usr/local/bin"
ln -sf "$prefix/bin/strata" "$destdir/usr/local/bin/strata"

echo "install.sh: /etc/strata/strata.toml, /var/lib/strata"
install -d -m 0755 "$destdir/etc/strata"
if [ ! -e "$destdir/etc/strata/strata.toml" ]; then
    install -m 0640 "$src/deploy/strata.toml" "$destdir/etc/strata/strata.toml"
    if [ -n "$backup_dir" ]; then
        printf 'backup_dir = "%s"\n' "$backup_dir" >>"$destdir/etc/strata/strata.toml"
    fi
    run_as_root chgrp strata "$destdir/etc/strata/strata.toml"
elif [ -n "$backup_dir" ]; then
    echo "install.sh: kept the existing strata.toml: set backup_dir = \"$backup_dir\" in it"
fi
install -d -m 0750 "$destdir/var/lib/strata"
run_as_root chown strata:strata "$destdir/var/lib/strata"

echo "install.sh: systemd unit"
install -d "$destdir/etc/systemd/system"
sed "s|/usr/local/bin/strata|$prefix/bin/strata|" "$src/deploy/strata.service" \
    >"$destdir/etc/systemd/system/strata.service"
if [ -n "$backup_dir" ]; then
    install -d -m 0750 "$destdir$backup_dir"
    run_as_root chown strata:strata "$destdir$backup_dir"
    install -d "$destdir/etc/systemd/system/strata.service.d"
    printf '[Service]\n# backup_dir (checkpoints) lies outside /var/lib/strata\nReadWritePaths=%s\n' \
        "$backup_dir" >"$destdir/etc/systemd/system/strata.service.d/backup-dir.conf"
fi
run_as_root systemctl daemon-reload
if [ "$start" = yes ]; then
    run_as_root systemctl enable --now strata
fi
echo "install.sh: done; $prefix/bin/strata --version: $("$destdir$prefix/bin/strata" --version)"
