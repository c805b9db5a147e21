#!/usr/bin/env bash
# broker.sh provisions a chatgg broker (`chatgg serve`: WebSocket and REST)
# on a Debian or Ubuntu host: the binary, the chatgg user, the systemd unit
# chatgg@serve, /etc/chatgg/chatgg.env, file limits and kernel settings.
# The Vagrantfile runs it on the broker VMs; on a VPS run it as root from a
# checkout holding bin/chatgg (make build):
#
#   sudo NODE_INDEX=1 REDIS_URL=redis://10.0.0.10:6379 \
#     COUCHDB_URL=http://admin:SECRET@10.0.0.11:5984/chatgg deploy/provision/broker.sh
#
# Settings (environment):
#   NODE_INDEX             this broker's index, unique among brokers (1-65535)  required
#   REDIS_URL              Redis for pub/sub and the queue                       required
#   COUCHDB_URL            CouchDB database URL                                  required
#   CHATGG_PROXY_PROTOCOL  behind the HAProxy of deploy/haproxy: true            default true
#   CHATGG_DRAIN_PERIOD, CHATGG_CLOSE_WINDOW, CHATGG_SHUTDOWN_TIMEOUT,
#   CHATGG_LOG_LEVEL       as in the README                     defaults as in docker-compose.yml
#   CHATGG_BIN             the binary to install                  default REPO/bin/chatgg
# and DESTDIR, DRY_RUN (common.sh).
# shellcheck source-path=SCRIPTDIR
set -euo pipefail
SCRIPT_NAME=broker
# shellcheck source=common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

require NODE_INDEX REDIS_URL COUCHDB_URL
need_root
tune_kernel
install_chatgg
write_env "$CHATGG_ENV" \
	"REDIS_URL=$REDIS_URL" \
	"COUCHDB_URL=$COUCHDB_URL" \
	"NODE_INDEX=$NODE_INDEX" \
	"CHATGG_LOG_LEVEL=${CHATGG_LOG_LEVEL:-info}"
# The same timings as the stack's brokers; TimeoutStopSec in the unit
# covers their sum.
write_env "$CHATGG_ETC/chatgg-serve.env" \
	"CHATGG_PROXY_PROTOCOL=${CHATGG_PROXY_PROTOCOL:-true}" \
	"CHATGG_DRAIN_PERIOD=${CHATGG_DRAIN_PERIOD:-8s}" \
	"CHATGG_CLOSE_WINDOW=${CHATGG_CLOSE_WINDOW:-5s}" \
	"CHATGG_SHUTDOWN_TIMEOUT=${CHATGG_SHUTDOWN_TIMEOUT:-20s}"
restart_unit chatgg@serve
say "chatgg@serve is set up: node $NODE_INDEX, ws :9001, http :9002"
