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
func Lost(inForce, candidate *Resource) []string {
	if inForce == nil {
		return nil
	}
	if candidate == nil {
		candidate = &Resource{}
	}
	var lost []string
	for i := len(candidate.Flow); i < len(inForce.Flow); i++ {
		f := inForce.Flow[i]
		window := f.Window
		if window == 0 {
			window = Duration(DefaultWindow)
		}
		lost = append(lost, fmt.Sprintf("flow[%d] (threshold %v per %s)", i, f.Threshold, window))
	}
	left := make(map[string]int)
	for _, h := range candidate.Hotspot {
		left[h.Param]++
	}
	for i, h := range inForce.Hotspot {
		if left[h.Param] > 0 {
			left[h.Param]--
			continue
		}
		lost = append(lost, fmt.Sprintf("hotspot[%d] (param %s)", i, h.Param))
	}
	if inForce.Concurrency > 0 && candidate.Concurrency == 0 {
		lost = append(lost, "concurrency")
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
	if inForce.Ban != nil && candidate.Ban == nil {
		lost = append(lost, "ban")
	}
	return lost
}

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
			if f.was && !f.left {
				lost = append(lost, "system."+f.name)
			}
		}
	}
	if g := inForce.GPU; g != nil {
		if candidate.GPU == nil {
			return append(lost, "gpu")
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
