#!/usr/bin/env bash
# Install (or upgrade, or remove) the edgewatch agent as a systemd service on this device.
#
#   sudo scripts/install.sh                  # install or upgrade; safe to run again
#   sudo scripts/install.sh --uninstall      # remove the unit and the venv, keep config and data
#   sudo scripts/install.sh --uninstall --purge   # also remove config, data and the user
#   scripts/install.sh --dry-run             # print the steps, change nothing
#   scripts/install.sh --prefix /tmp/root --no-venv   # throwaway root (tests): no useradd/systemctl
#
# Layout: /opt/edgewatch/venv (the package), /etc/edgewatch/edgewatch.toml (config, never
# overwritten once present), /etc/systemd/system/edgewatch.service, /var/lib/edgewatch (data,
# created by systemd's StateDirectory=).
set -euo pipefail

REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SERVICE=edgewatch
SERVICE_USER=edgewatch

PREFIX=""
DRY_RUN=0
UNINSTALL=0
PURGE=0
PYTHON=python3
RUNTIME=auto
NO_VENV=0
SHOW_RUNTIME=0

usage() {
    cat <<EOF
usage: $(basename "$0") [options]

Install the edgewatch agent as a systemd service (run as root on the device).

options:
  --prefix DIR        install under DIR (DIR/opt/edgewatch, DIR/etc/...); useradd and
                      systemctl are only printed ("would run"), not run
  --dry-run           print the steps, change nothing
  --uninstall         stop and remove the unit and the venv; keep config and data
  --purge             with --uninstall: also remove config, data and the edgewatch user
  --python PY         Python used to build the venv (default: python3)
  --runtime R         TFLite interpreter package: auto (default), tflite-runtime, ai-edge-litert
  --no-venv           skip creating the venv and pip install (tests)
  --show-runtime      print the interpreter package this platform gets, and exit
  -h, --help          show this help
EOF
}

die() { echo "install.sh: error: $*" >&2; exit 1; }

while [ $# -gt 0 ]; do
    case "$1" in
        --prefix) [ $# -ge 2 ] || die "--prefix needs a directory"; PREFIX="$2"; shift 2 ;;
        --prefix=*) PREFIX="${1#*=}"; shift ;;
        --dry-run) DRY_RUN=1; shift ;;
        --uninstall) UNINSTALL=1; shift ;;
        --purge) PURGE=1; shift ;;
        --python) [ $# -ge 2 ] || die "--python needs an interpreter"; PYTHON="$2"; shift 2 ;;
        --python=*) PYTHON="${1#*=}"; shift ;;
        --runtime) [ $# -ge 2 ] || die "--runtime needs a value"; RUNTIME="$2"; shift 2 ;;
        --runtime=*) RUNTIME="${1#*=}"; shift ;;
        --no-venv) NO_VENV=1; shift ;;
        --show-runtime) SHOW_RUNTIME=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown option: $1" ;;
    esac
done

case "$RUNTIME" in
    auto|tflite-runtime|ai-edge-litert) ;;
    *) die "--runtime must be one of auto, tflite-runtime, ai-edge-litert (got '$RUNTIME')" ;;
esac
[ "$PURGE" = 0 ] || [ "$UNINSTALL" = 1 ] || die "--purge only makes sense with --uninstall"

# Which TFLite interpreter wheel this platform gets.
#  - tflite-runtime: small and what edgewatch is tested against, but frozen at 2.14 (its last
#    release): wheels for x86_64 and aarch64, CPython <= 3.11 only, built against NumPy 1.x
#    (hence numpy<2, which the [tflite] extra pins).
#  - ai-edge-litert: its successor (LiteRT), wheels for x86_64 and aarch64 on newer CPythons.
#  - 32-bit Raspberry Pi OS (armv7l) has neither on PyPI; piwheels (the default index there)
#    builds tflite-runtime, so that is the best guess, and pip says so clearly if it fails.
choose_runtime() {
    local arch="$1" pyminor="$2"
    case "$arch" in
        x86_64|amd64|aarch64|arm64)
            if [ "$pyminor" -le 11 ]; then echo tflite-runtime; else echo ai-edge-litert; fi ;;
        *) echo tflite-runtime ;;
    esac
}

# Sets ARCH, PYVER and RESOLVED_RUNTIME from uname, --python and --runtime.
resolve_runtime() {
    command -v "$PYTHON" >/dev/null 2>&1 || die "python not found: $PYTHON (install python3 and python3-venv, or pass --python)"
    ARCH="$(uname -m)"
    PYVER="$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
    local pyminor="${PYVER#3.}"
    [ "${PYVER%%.*}" = 3 ] && [ "$pyminor" -ge 9 ] || die "Python >= 3.9 needed, $PYTHON is $PYVER (pass --python)"
    RESOLVED_RUNTIME="$RUNTIME"
    [ "$RESOLVED_RUNTIME" != auto ] || RESOLVED_RUNTIME="$(choose_runtime "$ARCH" "$pyminor")"
}

if [ "$SHOW_RUNTIME" = 1 ]; then
    resolve_runtime
    echo "$RESOLVED_RUNTIME (Python $PYVER on $ARCH)"
    exit 0
fi

if [ -n "$PREFIX" ]; then
    [ "$DRY_RUN" = 1 ] || mkdir -p -- "$PREFIX" || die "cannot create prefix $PREFIX"
    [ ! -d "$PREFIX" ] || PREFIX="$(cd "$PREFIX" && pwd)"
fi

OPT_DIR="$PREFIX/opt/edgewatch"
VENV="$OPT_DIR/venv"
ETC_DIR="$PREFIX/etc/edgewatch"
CONFIG="$ETC_DIR/edgewatch.toml"
UNIT_DIR="$PREFIX/etc/systemd/system"
UNIT="$UNIT_DIR/$SERVICE.service"
STATE_DIR="$PREFIX/var/lib/edgewatch"
SRC_CONFIG="$REPO_DIR/configs/default.toml"
SRC_UNIT="$REPO_DIR/systemd/$SERVICE.service"

# A real install touches the system (users, systemd); a prefix or dry run must not.
SYSTEM=1
if [ -n "$PREFIX" ] || [ "$DRY_RUN" = 1 ]; then SYSTEM=0; fi
if [ "$SYSTEM" = 1 ] && [ "$(id -u)" != 0 ]; then
    die "must run as root (sudo $0), or use --dry-run / --prefix DIR"
fi

DONE=()
# The command as a shell would read it back.
quoted() { local s; s="$(printf '%q ' "$@")"; echo "${s% }"; }
note() { echo "edgewatch: $*"; DONE+=("$*"); }
# For steps that touch the running system: say when they were only printed.
note_sys() { if [ "$SYSTEM" = 1 ]; then note "$*"; else note "(not run) $*"; fi; }

# Change files (under the prefix or for real); printed only in --dry-run.
run() {
    if [ "$DRY_RUN" = 1 ]; then
        echo "would run: $(quoted "$@")"
    else
        echo "+ $(quoted "$@")"
        "$@"
    fi
}

# Change the running system (users, systemd): only on a real install.
sys_run() {
    if [ "$SYSTEM" = 1 ]; then
        echo "+ $(quoted "$@")"
        "$@"
    else
        echo "would run: $(quoted "$@")"
    fi
}

# "install" with the service group only on a real install (the group may not exist in a prefix).
install_file() {
    local mode="$1" src="$2" dest="$3"
    if [ "$SYSTEM" = 1 ]; then
        run install -m "$mode" -o root -g "$SERVICE_USER" "$src" "$dest"
    else
        run install -m "$mode" "$src" "$dest"
    fi
}

systemd_running() { [ "$SYSTEM" = 1 ] && [ -d /run/systemd/system ]; }

do_install() {
    local extra changed=0
    [ -f "$SRC_UNIT" ] || die "unit file not found: $SRC_UNIT (run from a complete edgewatch checkout)"
    [ -f "$SRC_CONFIG" ] || die "default config not found: $SRC_CONFIG (run from a complete edgewatch checkout)"

    # 1. The service user, in group video for /dev/video* and /dev/vchiq.
    if id -u "$SERVICE_USER" >/dev/null 2>&1; then
        note "user $SERVICE_USER exists"
        if getent group video >/dev/null && ! id -nG "$SERVICE_USER" | tr ' ' '\n' | grep -qx video; then
            sys_run usermod -a -G video "$SERVICE_USER"
        fi
    else
        local groups=()
        getent group video >/dev/null && groups=(--groups video)
        sys_run useradd --system --user-group ${groups[@]+"${groups[@]}"} --home-dir /var/lib/edgewatch \
            --no-create-home --shell /usr/sbin/nologin --comment "edgewatch agent" "$SERVICE_USER"
        note_sys "created system user $SERVICE_USER"
    fi

    # 2. The virtual environment with the agent and the interpreter for this platform.
    if [ "$NO_VENV" = 1 ]; then
        note "skipped venv and pip (--no-venv)"
    else
        resolve_runtime
        case "$RESOLVED_RUNTIME" in
            tflite-runtime) extra=tflite ;;
            ai-edge-litert) extra=litert ;;
        esac
        run mkdir -p "$OPT_DIR"
        if [ ! -x "$VENV/bin/python" ]; then
            run "$PYTHON" -m venv "$VENV"
        fi
        run "$VENV/bin/pip" install --quiet --upgrade pip
        # The extras in pyproject.toml name the interpreter packages (and numpy<2 for tflite).
        run "$VENV/bin/pip" install --quiet --upgrade "$REPO_DIR[$extra]"
        run "$VENV/bin/edgewatch" --help >/dev/null
        note "venv $VENV: edgewatch + $RESOLVED_RUNTIME (Python $PYVER on $ARCH)"
        changed=1
    fi

    # 3. The config: installed once, then it belongs to the operator.
    run mkdir -p "$ETC_DIR"
    if [ -e "$CONFIG" ]; then
        note "kept existing config $CONFIG"
    else
        install_file 0640 "$SRC_CONFIG" "$CONFIG"
        note "installed config $CONFIG"
    fi

    # 4. The unit.
    run mkdir -p "$UNIT_DIR"
    if [ -f "$UNIT" ] && cmp -s "$SRC_UNIT" "$UNIT"; then
        note "unit $UNIT unchanged"
    else
        run install -m 0644 "$SRC_UNIT" "$UNIT"
        note "installed unit $UNIT"
        changed=1
    fi

    # 5. Start it (or restart it when the code or the unit changed under a running service).
    local was_active=0
    if systemd_running && systemctl is-active --quiet "$SERVICE"; then was_active=1; fi
    if [ "$SYSTEM" = 1 ] && ! systemd_running; then
        # An image build (chroot, container): enabling only needs the symlink; it starts at boot.
        sys_run systemctl enable "$SERVICE"
        note "systemd is not running here: $SERVICE enabled, it starts at the next boot"
        return
    fi
    sys_run systemctl daemon-reload
    sys_run systemctl enable --now "$SERVICE"
    if [ "$was_active" = 1 ] && [ "$changed" = 1 ]; then
        sys_run systemctl restart "$SERVICE"
    fi
    note_sys "service $SERVICE enabled and started (journalctl -u $SERVICE -f)"
}

do_uninstall() {
    if [ -f "$UNIT" ] || [ "$SYSTEM" = 0 ]; then
        # Best effort: the unit may already be stopped or systemd not running (image build).
        sys_run systemctl disable --now "$SERVICE" || echo "edgewatch: warning: could not disable $SERVICE" >&2
    fi
    if [ -f "$UNIT" ]; then
        run rm -f "$UNIT"
        note "removed unit $UNIT"
    else
        note "no unit at $UNIT"
    fi
    if [ "$SYSTEM" = 0 ] || systemd_running; then sys_run systemctl daemon-reload; fi
    if [ -d "$OPT_DIR" ]; then
        run rm -rf "$OPT_DIR"
        note "removed $OPT_DIR"
    fi
    if [ "$PURGE" = 1 ]; then
        for dir in "$ETC_DIR" "$STATE_DIR"; do
            if [ -d "$dir" ]; then
                run rm -rf "$dir"
                note "purged $dir"
            fi
        done
        if id -u "$SERVICE_USER" >/dev/null 2>&1 || [ "$SYSTEM" = 0 ]; then
            sys_run userdel "$SERVICE_USER"
            note_sys "removed user $SERVICE_USER"
        fi
    else
        note "kept config $ETC_DIR and data $STATE_DIR (--purge removes them)"
    fi
}

[ "$DRY_RUN" = 0 ] || echo "edgewatch: dry run, nothing is changed"
if [ "$UNINSTALL" = 1 ]; then do_uninstall; else do_install; fi

echo
if [ "$DRY_RUN" = 1 ]; then
    echo "edgewatch: dry run finished, nothing was changed; a real run would do:"
else
    echo "edgewatch: done${PREFIX:+ (prefix $PREFIX)}:"
fi
for line in "${DONE[@]}"; do echo "  - $line"; done
