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

failed=()
for t in "${targets[@]}"; do
	file=${t%%:*}
	name=${t##*:}
	pkg=./$(dirname "$file")
	echo "fuzz: $pkg $name for $fuzztime"
	# -fuzz takes one package and one target; -run '^$' skips the unit tests
	# (make test ran them) but the seed corpus still runs first.
	# shellcheck disable=SC2086 # GOTESTFLAGS is a list of flags
	if ! "$GO" test ${GOTESTFLAGS:-} -run '^$' -fuzz "^${name}\$" -fuzztime "$fuzztime" "$pkg"; then
		failed+=("$pkg $name")
	fi
done

if [[ ${#failed[@]} -gt 0 ]]; then
	echo "fuzz: FAILED: ${failed[*]}" >&2
	echo "fuzz: failing inputs are saved under the package's testdata/fuzz/; commit them as regression seeds" >&2
	exit 1
fi
echo "fuzz: ${#targets[@]} targets passed"
