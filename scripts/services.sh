#!/usr/bin/env bash
# services.sh installs what chatgg's tests need and prints the versions.
# Every step checks first and skips what is already there, so a warm run takes
# about a second. The tests start their own servers (internal/testsvc); this
# script only installs.
#
# usage: scripts/services.sh [install|install-apt|install-go|install-node|install-browser|versions]
#
#   install          everything below except the browser (make services)
#   install-apt      Debian packages redis-server and haproxy, and for make
#                    deploy-check docker-compose, shellcheck and ruby
#   install-go       staticcheck into .cache/bin (make lint)
#   install-node     tools/node/node_modules from package-lock.json
#   install-browser  Debian package chromium (not part of make test yet)
#   versions         print the versions of what is installed
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
readonly ROOT
readonly BIN_DIR="$ROOT/.cache/bin"
readonly NODE_DIR="$ROOT/tools/node"
readonly STATICCHECK_VERSION=v0.8.2
# docker-compose (v1) only validates docker-compose.yml (`config`), ruby
# checks the Vagrantfile (`ruby -c`): no container or VM runs here.
readonly APT_PACKAGES=(redis-server haproxy docker-compose shellcheck ruby)

say() { printf 'services: %s\n' "$*"; }
die() { printf 'services: error: %s\n' "$*" >&2; exit 1; }

as_root() {
	if [[ $EUID -eq 0 ]]; then
		"$@"
	elif command -v sudo >/dev/null; then
		sudo "$@"
	else
		die "need root to run: $*"
	fi
}

# apt_missing prints the packages among its arguments that dpkg does not
# have fully installed.
apt_missing() {
	local p
	for p in "$@"; do
		if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q '^install ok installed$'; then
			echo "$p"
		fi
	done
}

# apt_install installs the missing packages, running apt-get update only when
# something is missing. Debian's postinst would normally start redis-server
# and haproxy as system services; on these machines /usr/sbin/policy-rc.d
# forbids that, and the tests never use a system service anyway: testsvc
# starts its own on free ports.
apt_install() {
	local missing
	mapfile -t missing < <(apt_missing "$@")
	if [[ ${#missing[@]} -eq 0 ]]; then
		say "apt: $* already installed"
		return
	fi
	say "apt: installing ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	as_root apt-get update -qq
	as_root apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

install_apt() {
	command -v dpkg-query >/dev/null || die "not a Debian system: install ${APT_PACKAGES[*]} by hand"
	apt_install "${APT_PACKAGES[@]}"
}

# install_go puts staticcheck in .cache/bin. A repo-local binary (rather than
# `go run pkg@version` on every lint) starts instantly and does not depend on
# go.mod. It is rebuilt when the pinned version or the Go toolchain changes:
# staticcheck built by an older Go refuses code for a newer one.
install_go() {
	command -v go >/dev/null || die "go not found in PATH"
	local bin="$BIN_DIR/staticcheck" goversion have built
	goversion=$(go env GOVERSION)
	if [[ -x $bin ]]; then
		have=$(go version -m "$bin" | awk '$1 == "mod" { print $3 }')
		built=$(go version "$bin" | awk '{ print $2 }')
		if [[ $have == "$STATICCHECK_VERSION" && $built == "$goversion" ]]; then
			say "go: staticcheck $STATICCHECK_VERSION already installed"
			return
		fi
	fi
	say "go: installing staticcheck $STATICCHECK_VERSION"
	mkdir -p "$BIN_DIR"
	# Outside the module so go.mod's requirements and GOFLAGS=-mod=... do not
	# interfere with the pinned tool version.
	(cd "$BIN_DIR" && GOBIN="$BIN_DIR" GOFLAGS='' go install "honnef.co/go/tools/cmd/staticcheck@$STATICCHECK_VERSION")
}

# install_node runs npm ci in tools/node when package-lock.json (or the node
# version) changed since the last install.
#
# --ignore-scripts is deliberate. pouchdb-server 4.2.0 pulls in two native
# modules: leveldown (LevelDB backend) and sqlite3 (--sqlite backend). Their
# install scripts try to download prebuilt binaries or node headers from
# hosts other than the package registries, which this network cannot reach,
# and building sqlite3 from source takes a minute. Neither is used: testsvc always runs
# `pouchdb-server --in-memory`, which loads only pouchdb-adapter-memory
# (memdown, pure JavaScript), and pouchdb-server requires the leveldb and
# sqlite adapters lazily, only for the other modes. (leveldown also ships its
# prebuilds inside the npm tarball, so the default leveldb mode would work
# too.) ws and playwright-core have no install scripts we need; playwright
# browsers come from Debian's chromium (install-browser), never a download.
# The lockfile carries versions and integrity hashes but no tarball URLs
# (npm's omit-lockfile-registry-resolved), so npm ci asks whichever registry
# npm is configured with.
install_node() {
	if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
		say "node: node/npm not found, installing Debian's nodejs and npm"
		apt_install nodejs npm
	fi
	local stamp="$NODE_DIR/node_modules/.chatgg-stamp" want
	want="$(sha256sum "$NODE_DIR/package-lock.json" | cut -d' ' -f1) node-$(node --version)"
	if [[ -f $stamp && $(<"$stamp") == "$want" && -x $NODE_DIR/node_modules/.bin/pouchdb-server ]]; then
		say "node: tools/node/node_modules up to date"
		return
	fi
	say "node: npm ci in tools/node"
	(cd "$NODE_DIR" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error)
	printf '%s\n' "$want" >"$stamp"
}

install_browser() {
	apt_install chromium
	chromium --version
}

pkg_version() {
	node -p "require('$NODE_DIR/node_modules/$1/package.json').version" 2>/dev/null || echo missing
}

versions() {
	say "versions:"
	{
		echo "go|$(go env GOVERSION 2>/dev/null || echo missing)"
		echo "staticcheck|$("$BIN_DIR/staticcheck" -version 2>/dev/null || echo missing)"
		echo "redis-server|$(redis-server --version 2>/dev/null | awk '{ print $3 }' || echo missing)"
		echo "haproxy|$( (haproxy -v 2>/dev/null || /usr/sbin/haproxy -v 2>/dev/null) | awk 'NR == 1 { print $3 }')"
		echo "docker-compose|$(docker-compose version --short 2>/dev/null || echo missing)"
		echo "shellcheck|$(shellcheck --version 2>/dev/null | awk '$1 == "version:" { print $2 }')"
		echo "ruby|$(ruby -e 'print RUBY_VERSION' 2>/dev/null || echo missing)"
		echo "node|$(node --version 2>/dev/null || echo missing)"
		echo "npm|$(npm --version 2>/dev/null || echo missing)"
		echo "pouchdb-server|$(pkg_version pouchdb-server)"
		echo "ws|$(pkg_version ws)"
		echo "playwright-core|$(pkg_version playwright-core)"
		if command -v chromium >/dev/null; then
			echo "chromium|$(chromium --version 2>/dev/null)"
		fi
	} | awk -F'|' '{ printf "  %-16s %s\n", $1, ($2 == "" ? "missing" : $2) }'
}

main() {
	local cmd=${1:-install}
	case $cmd in
	install)
		install_apt
		install_go
		install_node
		versions
		;;
	install-apt) install_apt ;;
	install-go) install_go ;;
	install-node) install_node ;;
	install-browser) install_browser ;;
	versions) versions ;;
	-h | --help | help) sed -n '2,14s/^# \{0,1\}//p' "${BASH_SOURCE[0]}" ;;
	*) die "unknown command '$cmd' (try --help)" ;;
	esac
}

main "$@"
