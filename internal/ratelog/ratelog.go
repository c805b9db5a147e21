// Package ratelog keeps repeated log lines from flooding the log: a line is
// let through at most once per interval, and the lines held back are
// counted so the next one can say how many there were.
package ratelog

import (
	"sync"
	"time"
)

// Limiter lets one kind of line through at most once per Every. The zero
// value with Every set is ready to use; safe for concurrent use.
type Limiter struct {
	Every time.Duration

	mu         sync.Mutex
	last       time.Time
	suppressed int
}

// Allow reports whether a line may be logged now and, if so, how many were
// held back since the last one.
func (l *Limiter) Allow(now time.Time) (ok bool, suppressed int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.last.IsZero() && now.Sub(l.last) < l.Every {
		l.suppressed++
		return false, 0
	}
	l.last = now
	suppressed, l.suppressed = l.suppressed, 0
	return true, suppressed
}

// Keyed is a Limiter per key, for lines that differ by a reason drawn from a
// small fixed set. Safe for concurrent use.
type Keyed struct {
	Every time.Duration

	mu   sync.Mutex
	lims map[string]*Limiter
}

// Allow is Limiter.Allow for key's line.
func (k *Keyed) Allow(key string, now time.Time) (ok bool, suppressed int) {
	k.mu.Lock()
	l := k.lims[key]
	if l == nil {
		if k.lims == nil {
			k.lims = make(map[string]*Limiter)
		}
		l = &Limiter{Every: k.Every}
		k.lims[key] = l
	}
	k.mu.Unlock()
	return l.Allow(now)
}
