package rules

import (
	"fmt"
	"slices"
	"strings"

	"github.com/pmezard/go-difflib/difflib"
)

// Lost lists the rules inForce has and candidate, its replacement, would
// not: a document written whole replaces the one in force, so a one-rule
// file drops the resource's hotspot, cost and ban. Flow rules are matched
// by position (a shorter list loses its tail), hotspot rules by parameter,
// cost values by size. Either may be nil: a nil candidate (a delete) loses
// every rule. Examples of what it names:
//
//	flow[1] (threshold 5 per 1s)
//	hotspot[1] (param origin)
//	concurrency
//	cost
//	cost.values["1280"]
//	ban
//	flow[0] (threshold 5 per 1s) now shadow
//
// A rule that stays but goes from enforce to shadow stops refusing: it is
// lost too, named with "now shadow".
func Lost(inForce, candidate *Resource) []string {
	if inForce == nil {
		return nil
	}
	if candidate == nil {
		candidate = &Resource{}
	}
	var lost []string
	for i, f := range inForce.Flow {
		window := f.Window
		if window == 0 {
			window = Duration(DefaultWindow)
		}
		name := fmt.Sprintf("flow[%d] (threshold %v per %s)", i, f.Threshold, window)
		switch {
		case i >= len(candidate.Flow):
			lost = append(lost, name)
		case shadowed(f.Mode, candidate.Flow[i].Mode):
			lost = append(lost, name+" now shadow")
		}
	}
	// Hotspot rules match by parameter, an enforcing one first with an
	// enforcing one.
	type key struct {
		param  string
		shadow bool
	}
	left := make(map[key]int)
	for _, h := range candidate.Hotspot {
		left[key{h.Param, h.Mode.IsShadow()}]++
	}
	for i, h := range inForce.Hotspot {
		same, other := key{h.Param, h.Mode.IsShadow()}, key{h.Param, !h.Mode.IsShadow()}
		name := fmt.Sprintf("hotspot[%d] (param %s)", i, h.Param)
		switch {
		case left[same] > 0:
			left[same]--
		case left[other] > 0:
			left[other]--
			if other.shadow {
				lost = append(lost, name+" now shadow")
			}
		default:
			lost = append(lost, name)
		}
	}
	switch {
	case inForce.Concurrency > 0 && candidate.Concurrency == 0:
		lost = append(lost, "concurrency")
	case inForce.Concurrency > 0 && shadowed(inForce.ConcurrencyMode, candidate.ConcurrencyMode):
		lost = append(lost, "concurrency now shadow")
	}
	switch {
	case inForce.Cost != nil && candidate.Cost == nil:
		lost = append(lost, "cost")
	case inForce.Cost != nil:
		for _, k := range sortedKeys(inForce.Cost.Values) {
			if _, ok := candidate.Cost.Values[k]; !ok {
				lost = append(lost, fmt.Sprintf("cost.values[%q]", k))
			}
		}
	}
	switch {
	case inForce.Ban != nil && candidate.Ban == nil:
		lost = append(lost, "ban")
	case inForce.Ban != nil && shadowed(inForce.Ban.Mode, candidate.Ban.Mode):
		lost = append(lost, "ban now shadow")
	}
	return lost
}

// shadowed says whether a rule in mode was, enforcing, and is to be
// shadow: it would stop refusing.
func shadowed(was, will Mode) bool { return !was.IsShadow() && will.IsShadow() }

// LostDocument is Lost for whole documents, the system document included:
// its rules that are set (load, avg_rt, concurrency, inbound_qps,
// cpu_usage) and its gpu section. Either may be nil (no document).
func LostDocument(inForce, candidate *Document) []string {
	if inForce == nil {
		return nil
	}
	if candidate == nil {
		candidate = &Document{}
	}
	if inForce.Resource != nil {
		return Lost(inForce.Resource, candidate.Resource)
	}
	var lost []string
	if s := inForce.System; s != nil {
		c := candidate.System
		if c == nil {
			c = &System{}
		}
		for _, f := range []struct {
			name      string
			was, left bool
		}{
			{"load", s.Load != 0, c.Load != 0},
			{"avg_rt", s.AvgRT != 0, c.AvgRT != 0},
			{"concurrency", s.Concurrency != 0, c.Concurrency != 0},
			{"inbound_qps", s.InboundQPS != 0, c.InboundQPS != 0},
			{"cpu_usage", s.CPUUsage != 0, c.CPUUsage != 0},
		} {
			switch {
			case f.was && !f.left:
				lost = append(lost, "system."+f.name)
			case f.was && shadowed(s.Mode, c.Mode):
				lost = append(lost, "system."+f.name+" now shadow")
			}
		}
	}
	if g := inForce.GPU; g != nil {
		if candidate.GPU == nil {
			return append(lost, "gpu")
		}
		if shadowed(g.Mode, candidate.GPU.Mode) {
			lost = append(lost, "gpu now shadow")
		}
		for _, k := range sortedKeys(g.Devices) {
			if _, ok := candidate.GPU.Devices[k]; !ok {
				lost = append(lost, fmt.Sprintf("gpu.devices[%q]", k))
			}
		}
	}
	return lost
}

// Diff is the unified diff between two documents as Encode writes them
// (the form etcd stores), labelled "<name> (in force)" and
// "<name> (candidate)"; "" when they are the same. A nil document is
// empty: nil inForce is a document to create, nil candidate one to
// delete.
func Diff(name string, inForce, candidate *Document) (string, error) {
	from, err := encodeOrEmpty(inForce)
	if err != nil {
		return "", err
	}
	to, err := encodeOrEmpty(candidate)
	if err != nil {
		return "", err
	}
	return DiffText(name+" (in force)", name+" (candidate)", from, to)
}

func encodeOrEmpty(d *Document) ([]byte, error) {
	if d == nil {
		return nil, nil
	}
	return Encode(*d)
}

// DiffText is the unified diff (3 lines of context) of two texts; "" when
// they are equal.
func DiffText(fromName, toName string, from, to []byte) (string, error) {
	out, err := difflib.GetUnifiedDiffString(difflib.UnifiedDiff{
		A:        lines(from),
		B:        lines(to),
		FromFile: fromName,
		ToFile:   toName,
		Context:  3,
	})
	if err != nil {
		return "", fmt.Errorf("diff %s: %w", toName, err)
	}
	return out, nil
}

// lines splits text into lines that each end in a newline, as difflib
// wants them.
func lines(text []byte) []string {
	if len(text) == 0 {
		return nil
	}
	ls := strings.SplitAfter(string(text), "\n")
	if ls[len(ls)-1] == "" {
		ls = ls[:len(ls)-1]
	} else {
		ls[len(ls)-1] += "\n"
	}
	return slices.Clip(ls)
}
