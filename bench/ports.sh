# shellcheck shell=bash
# Sourced by compare.sh and store-compare.sh.
#
# free_port VAR sets VAR to a free loopback port: one nobody answers on, not
# handed out before, and below the kernel's ephemeral range, so that an
# outgoing connection (ours or another program's) does not take it before
# the server binds it. Call it directly, not in a $(subshell): USED_PORTS
# must stick. It fails (status 1, a message on stderr) when it finds none.
read -r EPHEMERAL_LOW _ </proc/sys/net/ipv4/ip_local_port_range
PORT_LOW=10000 PORT_HIGH=$((EPHEMERAL_LOW > 12000 ? EPHEMERAL_LOW - 1 : 60000))
USED_PORTS=" "
free_port() {
	local p
	for _ in $(seq 1 200); do
		p=$((PORT_LOW + (RANDOM * 32768 + RANDOM) % (PORT_HIGH - PORT_LOW)))
		if [[ $USED_PORTS != *" $p "* ]] && ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
			USED_PORTS+="$p "
			printf -v "$1" '%s' "$p"
			return 0
		fi
	done
	echo "$(basename "$0"): no free port" >&2
	return 1
}
