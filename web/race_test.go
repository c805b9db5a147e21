//go:build race

package web

// raceEnabled says the test binary, and so the chatgg it builds, runs with
// the race detector.
const raceEnabled = true
