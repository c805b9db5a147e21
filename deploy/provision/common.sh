#!/usr/bin/env bash
# common.sh: helpers the provisioning scripts source. Not run on its own.
#
# Every script is idempotent: it compares what it would write with what is
# there, installs only what is missing and restarts a service only when one
# of its files changed, so running it again (vagrant provision, a re-run on
# a VPS) is safe and fast.
#
# Two settings make the scripts testable anywhere (deploy/deploy_test.go):
#   DESTDIR=dir  write every file under dir instead of /
#   DRY_RUN=1    print the commands that change the system (apt-get,
#                useradd, systemctl, sysctl, chown) instead of running them

set -euo pipefail

DESTDIR=${DESTDIR:-}
DRY_RUN=${DRY_RUN:-0}
# The repository holding these scripts: /vagrant in the VMs.
REPO_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
readonly DESTDIR DRY_RUN REPO_DIR

# The chatgg binary's install location and the account it runs as.
readonly CHATGG_PREFIX=/usr/local/bin
readonly CHATGG_USER=chatgg
readonly CHATGG_ETC=/etc/chatgg
# shellcheck disable=SC2034 # used by the scripts that source this file
readonly CHATGG_ENV=$CHATGG_ETC/chatgg.env
# Open files for a broker: one per client connection plus a few. The unit
# sets it with LimitNOFILE; limits.d covers a shell started as the user.
readonly CHATGG_NOFILE=1048576

say() { printf '%s: %s\n' "${SCRIPT_NAME:-provision}" "$*"; }
die() {
	printf '%s: error: %s\n' "${SCRIPT_NAME:-provision}" "$*" >&2
	exit 1
}

dry_run() { [[ $DRY_RUN == 1 ]]; }

# run runs a command that changes the system, or prints it under DRY_RUN.
run() {
	if dry_run; then
		printf 'dry-run: %s\n' "$*"
	else
		"$@"
	fi
}

# need_root stops unless the script can change the system.
need_root() {
	dry_run && return 0
	[[ $EUID -eq 0 ]] || die "run as root (sudo $0)"
}

# require NAME...: each named variable must be set and not empty.
require() {
	local name
	for name in "$@"; do
		[[ -n ${!name:-} ]] || die "$name is not set"
	done
}

# put_file MODE OWNER:GROUP PATH writes stdin to PATH (under DESTDIR) when
# the content or mode differs. It returns 0 when it changed the file and 1
# when the file was already so: `if put_file ...; then restart=1; fi`.
#
# It is called as an `if` condition, where bash ignores set -e, so each step
# fails explicitly.
put_file() {
	local mode=$1 owner=$2 path=$DESTDIR$3 tmp
	mkdir -p "$(dirname "$path")" || die "cannot create $(dirname "$path")"
	tmp=$(mktemp "$path.XXXXXX") || die "cannot write in $(dirname "$path")"
	if ! { cat >"$tmp" && chmod "$mode" "$tmp"; }; then
		rm -f "$tmp"
		die "cannot write $path"
	fi
	if [[ -f $path ]] && cmp -s "$tmp" "$path" && [[ $(stat -c %a "$path") == "${mode#0}" ]]; then
		rm -f "$tmp"
		return 1
	fi
	run chown "$owner" "$tmp" || die "cannot chown $path to $owner"
	mv -f "$tmp" "$path" || die "cannot replace $path"
	say "wrote $3"
	return 0
}

# put_copy MODE OWNER:GROUP SRC DEST installs a copy of SRC like put_file.
put_copy() {
	put_file "$1" "$2" "$4" <"$3"
}

# apt_install installs the Debian packages that are not installed yet,
# running apt-get update only when something is missing.
apt_install() {
	local p missing=()
	for p in "$@"; do
		if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q '^install ok installed$'; then
			missing+=("$p")
		fi
	done
	if [[ ${#missing[@]} -eq 0 ]]; then
		return 0
	fi
	say "apt: installing ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	run apt-get update -qq
	run apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

# ensure_user creates the system account chatgg runs as: no login shell, no
# home of its own beyond its state directory.
ensure_user() {
	if ! dry_run && id -u "$CHATGG_USER" >/dev/null 2>&1; then
		return 0
	fi
	say "creating user $CHATGG_USER"
	run useradd --system --user-group --home-dir /var/lib/chatgg --no-create-home \
		--shell /usr/sbin/nologin "$CHATGG_USER"
}

# tune_kernel writes the sysctl settings shared by the broker and balancer
# hosts (docs/deploy.md, Sizing) and applies them when they changed.
# tcp_mem is left to the kernel's default, a share of memory: see the docs.
tune_kernel() {
	if put_file 0644 root:root /etc/sysctl.d/60-chatgg.conf <<-'EOF'; then
		# chatgg: many long-lived TCP connections (deploy/provision/common.sh).
		# Accept queue for reconnect storms after a node restarts.
		net.core.somaxconn = 65535
		net.ipv4.tcp_max_syn_backlog = 65535
		# Outgoing connections (balancer to brokers) use the whole port range.
		net.ipv4.ip_local_port_range = 1024 65535
		# System-wide and per-process file limits above the unit's LimitNOFILE.
		fs.file-max = 4194304
		fs.nr_open = 2097152
	EOF
		run sysctl --quiet --system
	fi
}

# CHATGG_CHANGED becomes 1 when install_chatgg or write_env changed a file
# the chatgg service reads: the caller then restarts it.
CHATGG_CHANGED=0

# install_chatgg installs the binary (CHATGG_BIN, default bin/chatgg of this
# repository), the systemd template unit and the limits.
install_chatgg() {
	local bin=${CHATGG_BIN:-$REPO_DIR/bin/chatgg}
	[[ -f $bin ]] || die "$bin not found: build it first (make build, for linux/amd64 on another OS: GOOS=linux GOARCH=amd64 make build)"
	if ! dry_run; then
		# ErrHelp exits 0; a binary for another OS or CPU fails here, clearly.
		"$bin" --help >/dev/null 2>&1 || die "$bin does not run here: build it for $(uname -s)/$(uname -m)"
	fi
	ensure_user
	if put_copy 0755 root:root "$bin" "$CHATGG_PREFIX/chatgg"; then CHATGG_CHANGED=1; fi
	if put_copy 0644 root:root "$REPO_DIR/deploy/systemd/chatgg@.service" /etc/systemd/system/chatgg@.service; then CHATGG_CHANGED=1; fi
	put_file 0644 root:root /etc/security/limits.d/60-chatgg.conf <<-EOF || true
		# chatgg (deploy/provision/common.sh); the systemd unit sets LimitNOFILE itself.
		$CHATGG_USER soft nofile $CHATGG_NOFILE
		$CHATGG_USER hard nofile $CHATGG_NOFILE
	EOF
}

# write_env writes the environment file chatgg@.service reads, readable by
# root and the chatgg group only: COUCHDB_URL carries a password. Its
# arguments are NAME=value lines; empty values are left out.
write_env() {
	local file=$1 line lines=()
	shift
	for line in "$@"; do
		if [[ -n ${line#*=} ]]; then
			lines+=("$line")
		fi
	done
	if {
		echo "# chatgg settings (README, Configuration), written by deploy/provision."
		printf '%s\n' "${lines[@]}"
	} | put_file 0640 "root:$CHATGG_USER" "$file"; then
		CHATGG_CHANGED=1
	fi
}

# restart_unit enables UNIT and restarts it when CHATGG_CHANGED is 1, else
# starts it if it is not running. A restart of chatgg is graceful: SIGTERM
# drains it (docs/deploy.md).
restart_unit() {
	local unit=$1
	run systemctl daemon-reload
	run systemctl enable --quiet "$unit"
	if [[ $CHATGG_CHANGED == 1 ]]; then
		say "restarting $unit"
		run systemctl restart "$unit"
	else
		run systemctl start "$unit"
	fi
}
