#!/usr/bin/env bash
# worker.sh provisions a chatgg worker (`chatgg worker`: drains the Redis
# queue into CouchDB) on a Debian or Ubuntu host: the binary, the chatgg
# user, the systemd unit chatgg@worker and /etc/chatgg/chatgg.env. Workers
# take no client traffic; run as many as the queue needs (docs/deploy.md).
#
#   sudo REDIS_URL=redis://10.0.0.10:6379 \
#     COUCHDB_URL=http://admin:SECRET@10.0.0.11:5984/chatgg deploy/provision/worker.sh
#
# Settings (environment):
#   REDIS_URL, COUCHDB_URL   as for broker.sh                      required
#   WORKER_HTTP_ADDR         the worker's REST port (/healthz, /readyz,
#                            /metrics); set :9003 on a host that also runs
#                            a broker, which has :9002               default :9002
#   CHATGG_SHUTDOWN_TIMEOUT, CHATGG_LOG_LEVEL, CHATGG_BIN, DESTDIR, DRY_RUN
# shellcheck source-path=SCRIPTDIR
set -euo pipefail
SCRIPT_NAME=worker
# shellcheck source=common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

require REDIS_URL COUCHDB_URL
need_root
install_chatgg
# The shared file may already hold a broker's NODE_INDEX; workers mint no
# ids, so keep it when it is there.
node_index=${NODE_INDEX:-}
if [[ -z $node_index && -f $DESTDIR$CHATGG_ENV ]]; then
	node_index=$(sed -n 's/^NODE_INDEX=//p' "$DESTDIR$CHATGG_ENV")
fi
write_env "$CHATGG_ENV" \
	"REDIS_URL=$REDIS_URL" \
	"COUCHDB_URL=$COUCHDB_URL" \
	"NODE_INDEX=$node_index" \
	"CHATGG_LOG_LEVEL=${CHATGG_LOG_LEVEL:-info}"
write_env "$CHATGG_ETC/chatgg-worker.env" \
	"CHATGG_HTTP_ADDR=${WORKER_HTTP_ADDR:-:9002}" \
	"CHATGG_SHUTDOWN_TIMEOUT=${CHATGG_SHUTDOWN_TIMEOUT:-20s}"
restart_unit chatgg@worker
say "chatgg@worker is set up: http ${WORKER_HTTP_ADDR:-:9002}"
