#!/usr/bin/env bash
# couchdb.sh provisions the CouchDB that stores chatgg's messages: Apache's
# couchdb package (Debian has none) as a single node, with an admin account,
# listening on the private network. chatgg creates its own database, the
# path of its COUCHDB_URL (http://ADMIN:PASSWORD@HOST:5984/chatgg).
#
#   sudo COUCHDB_PASSWORD=SECRET deploy/provision/couchdb.sh
#
# Settings (environment):
#   COUCHDB_PASSWORD  the admin's password; URL-safe (it goes into
#                     COUCHDB_URL), e.g. openssl rand -hex 24         required
#   COUCHDB_USER      the admin's name                             default admin
# and DESTDIR, DRY_RUN (common.sh).
# shellcheck source-path=SCRIPTDIR
set -euo pipefail
SCRIPT_NAME=couchdb
# shellcheck source=common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

require COUCHDB_PASSWORD
need_root
user=${COUCHDB_USER:-admin}
readonly keyring=/usr/share/keyrings/couchdb-archive-keyring.gpg
readonly etc=/opt/couchdb/etc/local.d

# Apache's package repository, signed with Apache's key.
if [[ ! -f $DESTDIR$keyring ]]; then
	apt_install ca-certificates curl gnupg
	say "fetching Apache CouchDB's signing key"
	run bash -c "curl -fsSL https://couchdb.apache.org/repo/keys.asc | gpg --dearmor --yes -o $DESTDIR$keyring"
fi
codename=$( . /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")
# apt_install below runs apt-get update when it installs.
echo "deb [signed-by=$keyring] https://apache.jfrog.io/artifactory/couchdb-deb/ $codename main" |
	put_file 0644 root:root /etc/apt/sources.list.d/couchdb.list || true

# The package's questions, answered: a standalone node. Its admin answer is
# not always applied (apache/couchdb#4138), hence the admin file below.
if ! dpkg-query -W -f='${Status}' couchdb 2>/dev/null | grep -q '^install ok installed$'; then
	cookie=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
	if dry_run; then
		say "dry-run: debconf-set-selections (standalone, admin, cookie)"
	else
		debconf-set-selections <<-EOF
			couchdb couchdb/mode select standalone
			couchdb couchdb/mode seen true
			couchdb couchdb/bindaddress string 0.0.0.0
			couchdb couchdb/bindaddress seen true
			couchdb couchdb/nodename string couchdb@127.0.0.1
			couchdb couchdb/cookie string $cookie
			couchdb couchdb/adminpass password $COUCHDB_PASSWORD
			couchdb couchdb/adminpass_again password $COUCHDB_PASSWORD
			couchdb couchdb/adminpass seen true
			couchdb couchdb/adminpass_again seen true
		EOF
	fi
	apt_install couchdb
fi

restart=0
# single_node (system databases created at start) and the bind address:
# the same file as the stack's.
if put_copy 0644 couchdb:couchdb "$REPO_DIR/deploy/couchdb/chatgg.ini" "$etc/10-chatgg.ini"; then
	restart=1
fi
# The admin, written once: CouchDB replaces the password with its hash in
# this file at start, so a later run must not write it again.
if [[ ! -f $DESTDIR$etc/20-chatgg-admin.ini ]]; then
	printf '; chatgg admin (deploy/provision/couchdb.sh); CouchDB hashes the password.\n[admins]\n%s = %s\n' \
		"$user" "$COUCHDB_PASSWORD" | put_file 0640 couchdb:couchdb "$etc/20-chatgg-admin.ini" || true
	restart=1
fi
# CouchDB keeps a file per database shard: raise its open-file limit.
if printf '[Service]\nLimitNOFILE=65536\n' |
	put_file 0644 root:root /etc/systemd/system/couchdb.service.d/chatgg.conf; then
	run systemctl daemon-reload
	restart=1
fi

run systemctl enable --quiet couchdb
if [[ $restart == 1 ]]; then
	say "restarting couchdb"
	run systemctl restart couchdb
else
	run systemctl start couchdb
fi
if ! dry_run; then
	# Up, and the admin can log in: what chatgg's COUCHDB_URL needs.
	for _ in $(seq 60); do
		curl -fsS -o /dev/null http://127.0.0.1:5984/_up && break
		sleep 1
	done
	curl -fsS -o /dev/null -u "$user:$COUCHDB_PASSWORD" http://127.0.0.1:5984/_session ||
		die "CouchDB does not accept $user's password: see /opt/couchdb/etc/local.d and journalctl -u couchdb"
fi
say "couchdb is set up on :5984 (admin $user)"
