#!/usr/bin/env bash
# redis.sh provisions the Redis that chatgg uses for pub/sub, the message
# queue and idempotency keys: Debian's redis-server with the append-only
# file on (fsync every second: a crash loses at most a second of queued
# messages) and noeviction (full Redis refuses writes instead of dropping
# queued messages), listening on the private network.
#
#   sudo REDIS_BIND=10.0.0.10 deploy/provision/redis.sh
#
# Settings (environment):
#   REDIS_BIND      addresses to listen on besides loopback: the private
#                   network's, never a public one                     required
#   REDIS_PASSWORD  requirepass; then REDIS_URL is redis://:PASSWORD@HOST:6379   optional
# and DESTDIR, DRY_RUN (common.sh).
# shellcheck source-path=SCRIPTDIR
set -euo pipefail
SCRIPT_NAME=redis
# shellcheck source=common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

require REDIS_BIND
need_root
apt_install redis-server

restart=0
# Debian's redis.conf stays as packaged; a last `include` of ours overrides it.
conf=/etc/redis/redis.conf
if [[ -f $DESTDIR$conf ]] && ! grep -qx 'include /etc/redis/chatgg.conf' "$DESTDIR$conf"; then
	if { cat "$DESTDIR$conf" && printf '\n# chatgg (deploy/provision/redis.sh)\ninclude /etc/redis/chatgg.conf\n'; } |
		put_file 0640 redis:redis "$conf"; then
		restart=1
	fi
fi
if {
	echo "# chatgg's Redis settings (deploy/provision/redis.sh)."
	echo "bind 127.0.0.1 -::1 $REDIS_BIND"
	# Without a password Redis would only answer loopback clients.
	if [[ -n ${REDIS_PASSWORD:-} ]]; then
		echo "requirepass $REDIS_PASSWORD"
	else
		echo "protected-mode no"
	fi
	echo "appendonly yes"
	echo "appendfsync everysec"
	echo "maxmemory-policy noeviction"
	echo "tcp-backlog 4096"
} | put_file 0640 root:redis /etc/redis/chatgg.conf; then
	restart=1
fi
# AOF rewrites fork: without overcommit a large Redis cannot.
if printf 'vm.overcommit_memory = 1\nnet.core.somaxconn = 65535\n' |
	put_file 0644 root:root /etc/sysctl.d/60-chatgg-redis.conf; then
	run sysctl --quiet --system
fi
# Debian's unit allows 65535 files; chatgg holds a few connections per node.
run systemctl enable --quiet redis-server
if [[ $restart == 1 ]]; then
	say "restarting redis-server"
	run systemctl restart redis-server
else
	run systemctl start redis-server
fi
say "redis is set up on ${REDIS_BIND}:6379"
