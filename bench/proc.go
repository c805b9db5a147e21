package main

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
	"time"

	"golang.org/x/sys/unix"
)

// epoch is the origin of now(), taken once at start-up and never changed.
var epoch = time.Now()

// now returns nanoseconds on the tool's monotonic clock. Payloads carry it
// as their send time; the tool both sends and receives, so no clock needs
// to agree with another.
func now() int64 { return int64(time.Since(epoch)) }

// clockTicks is USER_HZ, the unit of /proc/<pid>/stat's times: 100 on every
// Linux architecture Go supports (sysconf(_SC_CLK_TCK) is not reachable
// without cgo).
const clockTicks = 100

// cpuSample is a reading of the CPU time used so far by the tool and, when
// a pid was given, by the server.
type cpuSample struct {
	wall      int64   // now()
	user, sys float64 // the tool's, in seconds
	server    float64 // the server's utime+stime, in seconds
	srvUser   float64 // the server's utime, in seconds
	serverOK  bool
}

func sampleCPU(pid int) cpuSample {
	s := cpuSample{wall: now()}
	var ru unix.Rusage
	if unix.Getrusage(unix.RUSAGE_SELF, &ru) == nil {
		s.user = tvSeconds(ru.Utime)
		s.sys = tvSeconds(ru.Stime)
	}
	if pid > 0 {
		if u, st, err := procCPU(pid); err == nil {
			s.server, s.srvUser, s.serverOK = u+st, u, true
		}
	}
	return s
}

func tvSeconds(tv unix.Timeval) float64 { return float64(tv.Sec) + float64(tv.Usec)/1e6 }

// procCPU returns utime and stime of pid in seconds, from /proc/<pid>/stat.
func procCPU(pid int) (user, sys float64, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, 0, err
	}
	return parseStatCPU(b)
}

// parseStatCPU reads fields 14 (utime) and 15 (stime) of a /proc/<pid>/stat
// line. The command name (field 2) may hold spaces and parentheses, so
// fields are counted from its last ')'.
func parseStatCPU(b []byte) (user, sys float64, err error) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, 0, fmt.Errorf("bench: malformed /proc stat")
	}
	f := bytes.Fields(b[i+1:])
	// f[0] is field 3 (state); utime is field 14, stime field 15.
	if len(f) < 13 {
		return 0, 0, fmt.Errorf("bench: short /proc stat")
	}
	ut, err1 := strconv.ParseUint(string(f[11]), 10, 64)
	st, err2 := strconv.ParseUint(string(f[12]), 10, 64)
	if err1 != nil || err2 != nil {
		return 0, 0, fmt.Errorf("bench: malformed /proc stat times")
	}
	return float64(ut) / clockTicks, float64(st) / clockTicks, nil
}

// procRSS returns the resident set size of pid in bytes (VmRSS of
// /proc/<pid>/status).
func procRSS(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	return parseVmRSS(b)
}

func parseVmRSS(b []byte) (int64, error) {
	for _, line := range bytes.Split(b, []byte("\n")) {
		v, ok := bytes.CutPrefix(line, []byte("VmRSS:"))
		if !ok {
			continue
		}
		f := bytes.Fields(v)
		if len(f) < 1 {
			break
		}
		kb, err := strconv.ParseInt(string(f[0]), 10, 64)
		if err != nil {
			break
		}
		return kb << 10, nil
	}
	return 0, fmt.Errorf("bench: no VmRSS in /proc status")
}

// cpuUse is CPU use over a window.
type cpuUse struct {
	UserS   float64 `json:"user_s"`
	SysS    float64 `json:"sys_s"`
	Percent float64 `json:"percent"` // of one core
}

// serverUse is the server's CPU use over a window.
type serverUse struct {
	PID      int     `json:"pid"`
	CPUS     float64 `json:"cpu_s"`
	UserS    float64 `json:"user_s"`
	SysS     float64 `json:"sys_s"`
	Percent  float64 `json:"cpu_percent"` // of one core
	RSSBytes int64   `json:"rss_bytes,omitempty"`
}

// between returns the tool's and the server's use from a to b.
func between(a, b cpuSample, pid int) (cpuUse, *serverUse) {
	wall := float64(b.wall-a.wall) / 1e9
	u := cpuUse{UserS: b.user - a.user, SysS: b.sys - a.sys}
	if wall > 0 {
		u.Percent = 100 * (u.UserS + u.SysS) / wall
	}
	if pid <= 0 || !a.serverOK || !b.serverOK {
		return u, nil
	}
	s := &serverUse{PID: pid, CPUS: b.server - a.server, UserS: b.srvUser - a.srvUser}
	s.SysS = s.CPUS - s.UserS
	if wall > 0 {
		s.Percent = 100 * s.CPUS / wall
	}
	if rss, err := procRSS(pid); err == nil {
		s.RSSBytes = rss
	}
	return u, s
}
