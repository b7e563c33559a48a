#!/usr/bin/env bash
# Installs switchyard as a systemd service: the binary, a commented configuration, a
# keys file with one generated admin key (printed once), and a hardened unit running as a
# system user with its state under /var/lib/switchyard.
set -euo pipefail

usage() {
    cat <<'USAGE'
usage: scripts/install.sh [--prefix DIR] [--user NAME] [--binary PATH] [--destdir DIR] [--dry-run]
  Installs switchyard as a systemd service:
    PREFIX/bin/switchyard                     the binary (built with cargo unless --binary)
    /etc/switchyard/switchyard.toml           a commented configuration (kept if present)
    /etc/switchyard/keys.json                 one generated admin key, printed once (kept if present)
    /etc/systemd/system/switchyard.service    a hardened unit; state under /var/lib/switchyard
  then creates the system user and enables the service.
Options:
  --prefix DIR   where the binary goes (default /usr/local)
  --user NAME    the system user the service runs as (default switchyard)
  --binary PATH  install this binary instead of building one
  --destdir DIR  write every file under DIR (for packaging); creates no user, starts nothing
  --dry-run      print every file and command it would write or run, and change nothing
After installing, `switchyard check --config /etc/switchyard/switchyard.toml` validates the
configuration; edit it and `systemctl restart switchyard`. Keys take effect without a restart.
USAGE
}

prefix=/usr/local user=switchyard binary="" destdir="" dry_run=false
while [[ $# -gt 0 ]]; do
    case "$1" in
        -h|--help) usage; exit 0 ;;
        --prefix) prefix="${2:?--prefix needs a directory}"; shift 2 ;;
        --user) user="${2:?--user needs a name}"; shift 2 ;;
        --binary) binary="${2:?--binary needs a path}"; shift 2 ;;
        --destdir) destdir="${2:?--destdir needs a directory}"; shift 2 ;;
        --dry-run) dry_run=true; shift ;;
        *) echo "install.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done
[[ "$user" =~ ^[a-z_][a-z0-9_-]*$ ]] || { echo "install.sh: --user $user is not a valid user name" >&2; exit 2; }

here="$(cd "$(dirname "$0")/.." && pwd)"
etc=/etc/switchyard
unit=/etc/systemd/system/switchyard.service

# run CMD...: runs a command, or only prints it in a dry run.
run() {
    echo "+ $*"
    $dry_run || "$@"
}

# write PATH MODE GROUP: writes standard input to DESTDIR/PATH, or prints it in a dry run.
write() {
    local path="$destdir$1" mode="$2" group="$3" text
    text="$(cat)"
    echo "--- $path (mode $mode${group:+, group $group})"
    if $dry_run; then
        printf '%s\n' "$text" | sed 's/^/    /'
        return
    fi
    mkdir -p "$(dirname "$path")"
    # Written beside the target and renamed over it, so no reader sees half a file.
    printf '%s\n' "$text" > "$path.tmp"
    chmod "$mode" "$path.tmp"
    [[ -n "$group" && -z "$destdir" ]] && chgrp "$group" "$path.tmp"
    mv "$path.tmp" "$path"
}

if [[ -z "$binary" ]]; then
    binary="$here/target/release/switchyard"
    run cargo build --release --locked --bin switchyard --manifest-path "$here/Cargo.toml"
fi
$dry_run || [[ -x "$binary" ]] || { echo "install.sh: $binary is not an executable" >&2; exit 1; }

if [[ -z "$destdir" ]] && ! getent passwd "$user" >/dev/null 2>&1; then
    run useradd --system --no-create-home --home-dir /var/lib/switchyard --shell /usr/sbin/nologin "$user"
fi
run install -D -m 0755 "$binary" "$destdir$prefix/bin/switchyard"

if [[ -e "$destdir$etc/switchyard.toml" ]]; then
    echo "--- $destdir$etc/switchyard.toml exists: kept as it is"
else
    write "$etc/switchyard.toml" 0644 "" <<CONFIG
# switchyard, installed as a service. Validate after editing, then restart:
#   $prefix/bin/switchyard check --config $etc/switchyard.toml
#   systemctl restart switchyard
# Reference: docs/ in the source repository; config/switchyard.example.toml has every key.

[server]
# Loopback only: put a reverse proxy or a tunnel in front to reach it from elsewhere
# (requests they relay always need a key). "0.0.0.0:8787" serves the network directly.
listen = "127.0.0.1:8787"

[auth]
# API key to user name; edits take effect without a restart.
keys_file = "$etc/keys.json"

[routing]
default_backend = "ollama"

# A local Ollama: model "llama3.2:1b" or "ollama/llama3.2:1b".
[[backends]]
name = "ollama"
kind = "ollama"
url = "http://127.0.0.1:11434"

# Built in: "echo/echo" answers with the prompt, with no model at all.
[[backends]]
name = "echo"
kind = "echo"

# A cloud provider: uncomment, and give the service its key in
#   systemctl edit switchyard   ->   [Service] Environment=OPENAI_API_KEY=sk-...
# [[backends]]
# name = "openai"
# kind = "openai"
# url = "https://api.openai.com/v1"
# api_key_env = "OPENAI_API_KEY"
CONFIG
fi

if [[ -e "$destdir$etc/keys.json" ]]; then
    echo "--- $destdir$etc/keys.json exists: kept as it is"
else
    if $dry_run; then
        key="sk-<48 random hex digits, generated at install>"
    else
        key="sk-$(od -An -tx1 -N24 /dev/urandom | tr -d ' \n')"
    fi
    # Readable by the service's group only: the file holds keys.
    write "$etc/keys.json" 0640 "$user" <<KEYS
{"$key": {"user": "admin", "admin": true, "note": "made by install.sh"}}
KEYS
    echo
    echo "Your key (shown once; it is in $etc/keys.json): $key"
    echo
fi

write "$unit" 0644 "" <<UNIT
[Unit]
Description=switchyard LLM gateway
After=network-online.target
Wants=network-online.target

[Service]
Type=exec
User=$user
Group=$user
ExecStartPre=$prefix/bin/switchyard check --config $etc/switchyard.toml
ExecStart=$prefix/bin/switchyard serve --config $etc/switchyard.toml
# State (the usage ledger) lives here, created and owned by the service.
StateDirectory=switchyard
WorkingDirectory=/var/lib/switchyard
Environment=RUST_LOG=info
Restart=on-failure
RestartSec=2
# SIGTERM lets in-flight streams finish (server.shutdown_timeout_secs).
KillSignal=SIGTERM
TimeoutStopSec=45
# Hardening: the service reads its configuration and writes only its state directory.
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
PrivateDevices=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
MemoryDenyWriteExecute=yes
SystemCallArchitectures=native
SystemCallFilter=@system-service
CapabilityBoundingSet=
AmbientCapabilities=
UMask=0077

[Install]
WantedBy=multi-user.target
UNIT

if [[ -z "$destdir" ]]; then
    if command -v systemctl >/dev/null 2>&1 || $dry_run; then
        run systemctl daemon-reload
        run systemctl enable --now switchyard
    else
        echo "no systemctl here: start it with  $prefix/bin/switchyard serve --config $etc/switchyard.toml"
    fi
fi
$dry_run && echo "dry run: nothing was written or run"
exit 0
