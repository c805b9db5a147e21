#!/usr/bin/env bash
# haproxy.sh provisions the balancer in front of the brokers: Debian's
# haproxy running deploy/haproxy/haproxy.cfg, the one configuration the
# stack and the tests use too. Everything host-specific comes from
# /etc/chatgg/haproxy.env, which this script writes and a drop-in makes the
# haproxy unit read.
#
#   sudo BROKERS="10.0.0.21 10.0.0.22 10.0.0.23" deploy/provision/haproxy.sh
#
# Settings (environment):
#   BROKERS        the brokers' addresses, space-separated; each serves
#                  WebSocket on :9001 and REST on :9002                 required
#   LB_*           the balancer settings haproxy.cfg reads (LB_WS_BIND,
#                  LB_HTTP_BIND, LB_STATS_BIND, ...)        defaults as there
# and DESTDIR, DRY_RUN (common.sh).
# shellcheck source-path=SCRIPTDIR
set -euo pipefail
SCRIPT_NAME=haproxy
# shellcheck source=common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

require BROKERS
need_root
readonly cfg_src=$REPO_DIR/deploy/haproxy/haproxy.cfg
readonly cfg=/etc/haproxy/chatgg.cfg
readonly env_file=$CHATGG_ETC/haproxy.env
# Nothing listens on port 1 of the balancer itself: a server line with no
# broker behind it points there, fails its checks and takes no traffic.
readonly no_broker=127.0.0.1:1

[[ -f $cfg_src ]] || die "$cfg_src not found"
apt_install haproxy

# The configuration names a fixed number of servers, BROKER1_WS..BROKERn_WS.
slots=$(grep -oE 'BROKER[0-9]+_WS' "$cfg_src" | sort -u | wc -l)
read -r -a addrs <<<"$BROKERS"
if ((${#addrs[@]} > slots)); then
	say "warning: $cfg_src balances $slots brokers; ${addrs[*]:slots} get no clients"
fi
env_lines=("CONFIG=$cfg")
# The LB_* settings haproxy.cfg reads pass through when set here.
mapfile -t lb_vars < <(grep -oE '\$\{LB_[A-Z0-9_]+' "$cfg_src" | cut -c3- | sort -u)
for name in "${lb_vars[@]}"; do
	if [[ -n ${!name:-} ]]; then
		env_lines+=("$name=${!name}")
	fi
done
for ((i = 1; i <= slots; i++)); do
	if ((i <= ${#addrs[@]})); then
		env_lines+=("BROKER${i}_WS=${addrs[i - 1]}:9001" "BROKER${i}_HTTP=${addrs[i - 1]}:9002")
	else
		env_lines+=("BROKER${i}_WS=$no_broker" "BROKER${i}_HTTP=$no_broker")
	fi
done

restart=0
reload=0
if {
	printf '# haproxy settings for %s (deploy/provision/haproxy.sh)\n' "$cfg"
	printf '%s\n' "${env_lines[@]}"
} | put_file 0644 root:root "$env_file"; then
	restart=1 # the environment is read at start only
fi
# The drop-in: the unit reads the file above last, so its CONFIG wins.
if printf '[Service]\nEnvironmentFile=%s\nLimitNOFILE=1048576\n' "$env_file" |
	put_file 0644 root:root /etc/systemd/system/haproxy.service.d/chatgg.conf; then
	restart=1
fi
if put_copy 0644 root:root "$cfg_src" "$cfg"; then
	reload=1
fi
tune_kernel

# Check before (re)starting: a bad file must not take the balancer down.
# The check changes nothing, so DRY_RUN runs it too where haproxy exists.
if dry_run && ! command -v haproxy >/dev/null; then
	say "dry-run: haproxy -c -f $cfg"
else
	(
		set -a
		# shellcheck disable=SC1090
		. "$DESTDIR$env_file"
		haproxy -c -q -f "$DESTDIR$cfg"
	) || die "$cfg does not check with $env_file"
fi
run systemctl daemon-reload
run systemctl enable --quiet haproxy
if [[ $restart == 1 ]]; then
	say "restarting haproxy"
	run systemctl restart haproxy
elif [[ $reload == 1 ]]; then
	say "reloading haproxy (open connections stay)"
	run systemctl reload haproxy
else
	run systemctl start haproxy
fi
say "haproxy is set up: ws ${LB_WS_BIND:-:9001}, http ${LB_HTTP_BIND:-:9002}, brokers ${addrs[*]:0:slots}"
