#!/usr/bin/env bash
# fuzz.sh runs every fuzz target in the repository for a fixed time each.
# Targets are found by grepping for `func FuzzXxx(f *testing.F)` in _test.go
# files, so new ones are picked up without editing anything.
#
# usage: scripts/fuzz.sh [FUZZTIME]   (default 3s; extra go test flags via GOTESTFLAGS)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
fuzztime=${1:-3s}
GO=${GO:-go}

# file:func pairs, e.g. codec/frame_test.go:FuzzDecode
mapfile -t targets < <(
	grep -rEo --include='*_test.go' \
		--exclude-dir=node_modules --exclude-dir=.cache --exclude-dir=testdata --exclude-dir='.git' \
		'^func Fuzz[A-Za-z0-9_]*\([A-Za-z_][A-Za-z0-9_]* \*testing\.F\)' . |
		sed -E 's/^\.\/(.*):func (Fuzz[A-Za-z0-9_]*)\(.*/\1:\2/' | sort -u
)

if [[ ${#targets[@]} -eq 0 ]]; then
	echo "fuzz: no fuzz targets found"
	exit 0
fi

log=$(mktemp)
trap 'rm -f "$log"' EXIT

# run_target PKG NAME: one fuzz run, its output shown and kept in $log.
run_target() {
	# -fuzz takes one package and one target; -run '^$' skips the unit tests
	# (make test ran them) but the seed corpus still runs first.
	# shellcheck disable=SC2086 # GOTESTFLAGS is a list of flags
	"$GO" test ${GOTESTFLAGS:-} -run '^$' -fuzz "^${2}\$" -fuzztime "$fuzztime" "$1" 2>&1 | tee "$log"
	return "${PIPESTATUS[0]}"
}

# deadline_flake: the run failed with nothing but "context deadline
# exceeded" as -fuzztime ran out, and wrote no failing input: Go's fuzz
# coordinator race (go.dev/issue/75804, fixed in Go 1.27), not a finding.
deadline_flake() {
	grep -q 'context deadline exceeded' "$log" &&
		! grep -qE 'Failing input written|panic:|_test\.go:[0-9]+:' "$log"
}

failed=()
for t in "${targets[@]}"; do
	file=${t%%:*}
	name=${t##*:}
	pkg=./$(dirname "$file")
	echo "fuzz: $pkg $name for $fuzztime"
	if run_target "$pkg" "$name"; then
		continue
	fi
	if deadline_flake; then
		echo "fuzz: $pkg $name: the -fuzztime deadline race (go.dev/issue/75804), no input found; once more"
		if run_target "$pkg" "$name"; then
			continue
		fi
	fi
	failed+=("$pkg $name")
done

if [[ ${#failed[@]} -gt 0 ]]; then
	echo "fuzz: FAILED: ${failed[*]}" >&2
	echo "fuzz: failing inputs are saved under the package's testdata/fuzz/; commit them as regression seeds" >&2
	exit 1
fi
echo "fuzz: ${#targets[@]} targets passed"
