package engine

import (
	"fmt"
	"testing"
	"time"

	"github.com/sluicehq/sluice/engine/clock"
	"github.com/sluicehq/sluice/rules"
)

var testBan = &rules.BanRule{Blocks: 2, Within: rules.Duration(10 * time.Second), For: rules.Duration(time.Minute)}

func TestBanTableStaysWithinItsBound(t *testing.T) {
	c := clock.NewFake(time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC))
	b := newBanTable(c, 8)
	for i := range 1000 {
		b.refused("ddcolor_person", banSubject{who: fmt.Sprint("2001:db8::", i)}, testBan)
		if n := b.len(); n > 8 {
			t.Fatalf("after %d origins the table holds %d, bound 8", i+1, n)
		}
	}
}

func TestBanTableDropsExpiredEntries(t *testing.T) {
	c := clock.NewFake(time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC))
	b := newBanTable(c, 1024)
	const abuser = "192.0.2.66"
	b.refused("ddcolor_person", banSubject{who: abuser}, testBan)
	if !b.refused("ddcolor_person", banSubject{who: abuser}, testBan) {
		t.Fatal("two refusals did not ban")
	}
	b.refused("ddcolor_person", banSubject{who: "192.0.2.1"}, testBan) // one refusal, no ban
	if n := b.len(); n != 2 {
		t.Fatalf("table holds %d, want 2", n)
	}
	c.Advance(time.Minute)
	if _, banned := b.banned("ddcolor_person", banSubject{who: abuser}); banned {
		t.Fatal("still banned after the ban ended")
	}
	b.refused("ddcolor_person", banSubject{who: "192.0.2.99"}, testBan) // a new origin drops expired ones
	if n := b.len(); n != 1 {
		t.Fatalf("after every ban and window expired the table holds %d, want 1 (the newest)", n)
	}
	if _, ok := b.bans.Peek(banKey{"ddcolor_person", banSubject{who: abuser}}); ok {
		t.Fatal("the expired ban is still held")
	}
}

func TestApplyKeepsEachResourcesLockAndCounters(t *testing.T) {
	e, err := New(Options{Namespace: t.Name() + "/", CPU: idleCPU{}, Clock: clock.NewFake(time.Unix(0, 0))}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	before := e.state.Load().res[rules.ResourceZImageGenerate]
	set, err := rules.ParseSet("concurrency.yaml", []byte("resource: zimage_generate\nconcurrency: 2\n"))
	if err != nil {
		t.Fatal(err)
	}
	if err := e.Apply(set); err != nil {
		t.Fatal(err)
	}
	after := e.state.Load().res[rules.ResourceZImageGenerate]
	if after.concurrency != 2 || before.concurrency != 0 {
		t.Fatalf("concurrency before %d, after %d", before.concurrency, after.concurrency)
	}
	if before.resource != after.resource {
		t.Fatal("Apply gave the resource a new lock and in-flight count: guards on the old and new rules would not exclude each other")
	}
}

type idleCPU struct{}

func (idleCPU) CPUUsage() (float64, error) { return 0, nil }

// BenchmarkBanTableNewOrigin refuses a new origin each time on a table
// already full, so every refusal evicts: the cost per new origin must not
// grow with the table.
func BenchmarkBanTableNewOrigin(b *testing.B) {
	for _, size := range []int{1 << 10, 1 << 13, banTableSize} {
		b.Run(fmt.Sprint(size), func(b *testing.B) {
			c := clock.NewFake(time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC))
			t := newBanTable(c, size)
			origins := make([]string, size+1<<16)
			for i := range origins {
				origins[i] = fmt.Sprintf("2001:db8:%x::1", i)
			}
			for i := range size {
				t.refused("ddcolor_person", banSubject{who: origins[i]}, testBan)
			}
			if t.len() != size {
				b.Fatalf("table holds %d, want %d", t.len(), size)
			}
			b.ReportAllocs()
			b.ResetTimer()
			i := size
			for b.Loop() {
				t.refused("ddcolor_person", banSubject{who: origins[i%len(origins)]}, testBan)
				i++
			}
		})
	}
}

// A flood of new origins pushes counted refusals out, never an active ban.
func TestBanOutlivesAFloodOfNewOrigins(t *testing.T) {
	c := clock.NewFake(time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC))
	b := newBanTable(c, 64)
	const abuser = "192.0.2.66"
	b.refused("ddcolor_person", banSubject{who: abuser}, testBan)
	if !b.refused("ddcolor_person", banSubject{who: abuser}, testBan) {
		t.Fatal("two refusals did not ban")
	}
	for i := range 10 * 64 {
		b.refused("ddcolor_person", banSubject{who: fmt.Sprintf("2001:db8:%x::/64", i)}, testBan)
	}
	if _, banned := b.banned("ddcolor_person", banSubject{who: abuser}); !banned {
		t.Fatal("the ban was forgotten under a flood of new origins")
	}
	if n := b.len(); n > 64+1 {
		t.Fatalf("the table holds %d entries, bound 64 counted + 1 ban", n)
	}
}

// len returns how many entries the table holds.
func (b *banTable) len() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.hits.Len() + b.bans.Len()
}
