#!/usr/bin/env bash
# Pull a consistent copy of a device's edgewatch history (SQLite) to this machine.
#
#   scripts/pull-logs.sh pi@camera-3.local [OUTDIR]
#
# On the device it runs "edgewatch export" (a consistent snapshot, safe while the agent writes),
# copies the file back as OUTDIR/<host>-<UTC time>.db, removes the remote temporary file and
# prints the local path. Captured samples (JPEGs) come along, when the device has any, into
# OUTDIR/<host>-<UTC time>-samples/ (modes kept: 0640), where "edgewatch samples" and
# "edgewatch report" find them for that database.
#
# Environment:
#   SSH, SCP          the ssh and scp commands, with options (default: ssh, scp),
#                     e.g. SSH="ssh -p 2222" SCP="scp -P 2222"
#   EDGEWATCH_BIN     the agent on the device (default /opt/edgewatch/venv/bin/edgewatch)
#   EDGEWATCH_DB      the database on the device (default /var/lib/edgewatch/edgewatch.db)
#   EDGEWATCH_SAMPLES its samples folder (default: samples/ beside EDGEWATCH_DB; set it when
#                     [capture] path says otherwise); PULL_SAMPLES=0 leaves samples behind
#   REMOTE_SUDO       prefix for the remote commands when the login user cannot read
#                     /var/lib/edgewatch (0750 edgewatch), e.g. "sudo -n -u edgewatch"
set -euo pipefail

usage() { echo "usage: $(basename "$0") USER@HOST [OUTDIR]" >&2; }
die() { echo "pull-logs.sh: error: $*" >&2; exit 1; }

case "${1:-}" in
    -h|--help) usage; exit 0 ;;
    ""|-*) usage; exit 2 ;;
esac
[ $# -le 2 ] || { usage; exit 2; }
TARGET="$1"
OUTDIR="${2:-.}"

read -r -a SSH_CMD <<<"${SSH:-ssh}"
read -r -a SCP_CMD <<<"${SCP:-scp}"
read -r -a SUDO <<<"${REMOTE_SUDO:-}"
EDGEWATCH_BIN="${EDGEWATCH_BIN:-/opt/edgewatch/venv/bin/edgewatch}"
EDGEWATCH_DB="${EDGEWATCH_DB:-/var/lib/edgewatch/edgewatch.db}"
EDGEWATCH_SAMPLES="${EDGEWATCH_SAMPLES:-$(dirname -- "$EDGEWATCH_DB")/samples}"

# user@[fe80::1] or user@host -> a file-name-safe host.
HOST="${TARGET#*@}"
HOST="${HOST#[}"; HOST="${HOST%]}"
HOST="${HOST//[^A-Za-z0-9._-]/_}"
STAMP="$(date -u +%Y%m%dT%H%M%SZ)"
# The pid keeps two pulls started in the same second from sharing a remote file.
REMOTE_TMP="/tmp/edgewatch-$STAMP-$$.db"

mkdir -p -- "$OUTDIR" || die "cannot create output directory $OUTDIR"
OUT="$OUTDIR/$HOST-$STAMP.db"
[ ! -e "$OUT" ] || die "refusing to overwrite $OUT (wait a second and retry)"

# One string for the remote shell, every word quoted.
remote() { local s; s="$(printf '%q ' "$@")"; "${SSH_CMD[@]}" "$TARGET" "${s% }"; }

cleanup() {
    remote ${SUDO[@]+"${SUDO[@]}"} rm -f -- "$REMOTE_TMP" \
        || echo "pull-logs.sh: warning: could not remove $TARGET:$REMOTE_TMP" >&2
}

trap cleanup EXIT
remote ${SUDO[@]+"${SUDO[@]}"} "$EDGEWATCH_BIN" export --db "$EDGEWATCH_DB" --out "$REMOTE_TMP" --no-samples \
    || die "edgewatch export failed on $TARGET (is the agent installed at $EDGEWATCH_BIN?)"
"${SCP_CMD[@]}" -q "$TARGET:$REMOTE_TMP" "$OUT" || die "copy from $TARGET:$REMOTE_TMP failed"
[ -s "$OUT" ] || die "copied file is empty: $OUT"
# Samples after the snapshot: a file evicted meanwhile is missing, one captured meanwhile has
# no row; "edgewatch samples export" checks each file against its row's hash.
if [ "${PULL_SAMPLES:-1}" != 0 ] && remote ${SUDO[@]+"${SUDO[@]}"} test -d "$EDGEWATCH_SAMPLES"; then
    SAMPLES_OUT="${OUT%.db}-samples"
    mkdir -p -- "$SAMPLES_OUT" || die "cannot create $SAMPLES_OUT"
    remote ${SUDO[@]+"${SUDO[@]}"} tar -C "$EDGEWATCH_SAMPLES" -cf - . | tar -xpf - -C "$SAMPLES_OUT" \
        || die "copying samples from $TARGET:$EDGEWATCH_SAMPLES failed"
    echo "pull-logs.sh: samples in $SAMPLES_OUT" >&2
fi
echo "$OUT"
