//go:build race

package e2e

// raceEnabled says the test binary, and so the chatgg it builds, runs with
// the race detector.
const raceEnabled = true
