#!/usr/bin/env bash
# check.sh validates the deployment files statically (make deploy-check):
# no Docker daemon, VM or network needed. deploy/deploy_test.go (go test)
# checks what these tools cannot: that the stack's and the VMs' settings
# are ones chatgg accepts.
#
#   docker-compose config   docker-compose.yml, alone and with the single-host override
#   docker stack config     the same with swarm's own loader, where the docker CLI exists
#   haproxy -c              deploy/haproxy/haproxy.cfg with its variables set
#   ruby -c                 the Vagrantfile, which is also evaluated with a stand-in for Vagrant
#   bash -n, shellcheck     deploy/**/*.sh and scripts/*.sh
#
# The tools come from make services (scripts/services.sh).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

say() { printf 'deploy-check: %s\n' "$*"; }
die() {
	printf 'deploy-check: error: %s\n' "$*" >&2
	exit 1
}
need() {
	command -v "$1" >/dev/null || die "$1 not found: run make services"
}

# quiet runs a command and shows its output only when it fails.
quiet() {
	local out
	if ! out=$("$@" 2>&1); then
		printf '%s\n' "$out" >&2
		die "failed: $*"
	fi
}

need docker-compose
need ruby
need shellcheck
haproxy=$(command -v haproxy || echo /usr/sbin/haproxy)
[[ -x $haproxy ]] || die "haproxy not found: run make services"

# Compose refuses the stack without a CouchDB password: any will do here.
export COUCHDB_PASSWORD=deploy-check
say "docker-compose config: docker-compose.yml"
quiet docker-compose -f docker-compose.yml config -q
say "docker-compose config: docker-compose.yml + deploy/compose.single-host.yml"
quiet docker-compose -f docker-compose.yml -f deploy/compose.single-host.yml config -q

# docker stack config runs the loader of docker stack deploy itself (schema
# and interpolation as swarm reads them) and needs no daemon.
if command -v docker >/dev/null && docker stack config --help >/dev/null 2>&1; then
	say "docker stack config: docker-compose.yml"
	quiet docker stack config -c docker-compose.yml
	quiet docker stack config -c docker-compose.yml -c deploy/compose.single-host.yml
else
	say "docker stack config: no docker CLI, skipped (docker-compose config covers the schema)"
fi

cfg=deploy/haproxy/haproxy.cfg
if [[ -f $cfg ]]; then
	# Every server line's variable set to a loopback address, as in the
	# end-to-end tests; the stack's and the VMs' values are checked by
	# deploy_test.go.
	vars=(LB_WS_BIND=127.0.0.1:9001 LB_HTTP_BIND=127.0.0.1:9002)
	n=0
	while read -r name; do
		n=$((n + 1))
		vars+=("$name=127.0.0.1:$((10000 + n))")
	done < <(grep -oE 'BROKER[0-9]+_(WS|HTTP)' "$cfg" | sort -u)
	say "haproxy -c: $cfg (${#vars[@]} variables)"
	quiet env "${vars[@]}" "$haproxy" -c -f "$cfg"
else
	say "haproxy -c: $cfg does not exist yet, skipped"
fi

say "ruby -c: Vagrantfile"
quiet ruby -c Vagrantfile
quiet ruby deploy/vagrant_machines.rb Vagrantfile

mapfile -t scripts < <(find deploy scripts -name '*.sh' -type f | sort)
say "bash -n, shellcheck: ${#scripts[@]} scripts"
for f in "${scripts[@]}"; do
	bash -n "$f" || die "bash -n $f"
done
shellcheck -x "${scripts[@]}"
say "ok"
