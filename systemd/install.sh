#!/usr/bin/env bash
# Install Caxton as a systemd service, from this source tree.
#
#   sudo systemd/install.sh                 install (or update) and start it
#   sudo systemd/install.sh --uninstall     remove what it installed; keep the state
#   sudo systemd/install.sh --uninstall --purge   ... and the state, config and user
#   systemd/install.sh --root DIR ...       lay everything out under DIR instead
#                                           of /, without starting anything
#
# What it lays out (under --root, default /):
#   /opt/caxton/venv/             a virtual environment with caxton installed
#   /opt/caxton/README.md         the unit's Documentation=
#   /etc/caxton/caxton.toml       the config (kept if it is there already)
#   /etc/systemd/system/caxton.service
#   /var/lib/caxton/              the state (created by systemd: StateDirectory=)
#   user caxton-agent             the unprivileged identity workers run as
# Running it again changes nothing it manages unless the source changed.
# PYTHON picks the interpreter for the venv (default python3);
# CAXTON_PIP_ARGS adds pip options (e.g. --no-index --find-links DIR offline).
set -euo pipefail

root=/
action=install
purge=0
while [ $# -gt 0 ]; do
    case "$1" in
        --root) root=${2:?--root needs a directory}; shift 2 ;;
        --uninstall) action=uninstall; shift ;;
        --purge) purge=1; shift ;;
        -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
        *) echo "install.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done
[ "$purge" = 1 ] && [ "$action" != uninstall ] && { echo "install.sh: --purge goes with --uninstall" >&2; exit 2; }

src=$(cd "$(dirname "$0")/.." && pwd)
root=$(cd "$root" && pwd)
p=${root%/}   # prefix for every path below ("" for /)
opt=$p/opt/caxton
etc=$p/etc/caxton
unit=$p/etc/systemd/system/caxton.service
state=$p/var/lib/caxton
agent_user=caxton-agent
live=0
if [ -z "$p" ] && [ -d /run/systemd/system ]; then live=1; fi

say() { echo "caxton install: $*"; }

# Copy $1 to $2 with mode $3 unless $2 already has the same content.
place() {
    if [ -f "$2" ] && cmp -s "$1" "$2"; then return; fi
    install -D -m "$3" "$1" "$2"
    say "wrote ${2#"$p"}"
}

# The config as install writes it: the example, with workers as $agent_user.
fresh_config() { sed "s/^user = \"nobody\"/user = \"$agent_user\"/" "$src/systemd/caxton.toml"; }

has_user() { [ -f "$p/etc/passwd" ] && grep -q "^$agent_user:" "$p/etc/passwd"; }

install_all() {
    if ! has_user; then
        if [ -f "$p/etc/passwd" ]; then
            useradd --system --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin \
                ${p:+--prefix "$p"} "$agent_user"
            say "created system user $agent_user"
        else
            say "no $p/etc/passwd: not creating user $agent_user (set sandbox.user)"
        fi
    fi
    if [ ! -x "$opt/venv/bin/python" ]; then
        "${PYTHON:-python3}" -m venv "$opt/venv"
        say "created ${opt#"$p"}/venv"
    fi
    # shellcheck disable=SC2086  # CAXTON_PIP_ARGS is a list of options
    "$opt/venv/bin/pip" install -q --disable-pip-version-check ${CAXTON_PIP_ARGS:-} "$src"
    place "$src/README.md" "$opt/README.md" 0644
    if [ ! -f "$etc/caxton.toml" ]; then
        tmp=$(mktemp)
        fresh_config > "$tmp"
        install -D -m 0640 "$tmp" "$etc/caxton.toml"
        rm -f "$tmp"
        say "wrote ${etc#"$p"}/caxton.toml"
    fi
    place "$src/systemd/caxton.service" "$unit" 0644
    if [ "$live" = 1 ]; then
        systemctl daemon-reload
        systemctl enable --now caxton.service
        say "caxton.service enabled and started"
    elif [ ! -L "$p/etc/systemd/system/multi-user.target.wants/caxton.service" ]; then
        mkdir -p "$p/etc/systemd/system/multi-user.target.wants"
        ln -s /etc/systemd/system/caxton.service "$p/etc/systemd/system/multi-user.target.wants/caxton.service"
        say "caxton.service enabled (not started: --root)"
    fi
}

uninstall_all() {
    if [ "$live" = 1 ]; then
        systemctl disable --now caxton.service || true
    fi
    rm -f "$p/etc/systemd/system/multi-user.target.wants/caxton.service" "$unit"
    [ "$live" = 1 ] && systemctl daemon-reload
    rm -rf "$opt"
    say "removed the unit and ${opt#"$p"}"
    # Like a package's conffile: an edited config stays until --purge.
    if [ -f "$etc/caxton.toml" ] && fresh_config | cmp -s - "$etc/caxton.toml"; then
        rm -f "$etc/caxton.toml"
        rmdir "$etc" 2>/dev/null || true
    fi
    if [ "$purge" = 1 ]; then
        rm -rf "$etc" "$state"
        if has_user; then
            userdel ${p:+--prefix "$p"} "$agent_user"
        fi
        say "purged ${etc#"$p"}, ${state#"$p"} and user $agent_user"
    else
        say "kept ${state#"$p"} and any edited config (--purge removes them)"
    fi
}

if [ "$action" = install ]; then install_all; else uninstall_all; fi
