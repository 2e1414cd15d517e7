package main

import (
	"context"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sluicehq/sluice/adapters/comfyui/comfyuitest"
	"github.com/sluicehq/sluice/adapters/etcd"
	"github.com/sluicehq/sluice/engine/jobs"
)

// freezer is a TCP proxy that can stop passing bytes while keeping every
// connection open: etcd unreachable, as a dead peer or a network that drops
// everything looks to a client.
type freezer struct {
	ln     net.Listener
	target string

	mu     sync.Mutex
	cond   *sync.Cond
	frozen bool
	conns  []net.Conn
}

func newFreezer(t *testing.T, target string) *freezer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &freezer{ln: ln, target: target}
	f.cond = sync.NewCond(&f.mu)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			up, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			f.mu.Lock()
			f.conns = append(f.conns, c, up)
			f.mu.Unlock()
			go f.pipe(up, c)
			go f.pipe(c, up)
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		f.freeze(false)
		f.mu.Lock()
		defer f.mu.Unlock()
		for _, c := range f.conns {
			c.Close()
		}
	})
	return f
}

func (f *freezer) pipe(dst, src net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		f.mu.Lock()
		for f.frozen {
			f.cond.Wait()
		}
		f.mu.Unlock()
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			dst.Close()
			return
		}
	}
}

func (f *freezer) freeze(on bool) {
	f.mu.Lock()
	f.frozen = on
	f.mu.Unlock()
	f.cond.Broadcast()
}

// outageGateway is a gateway on an etcd it reaches through a freezer.
func outageGateway(t *testing.T, extra ...string) (*gateway, *freezer, *etcd.Embedded) {
	t.Helper()
	e, err := etcd.StartEmbedded(etcd.EmbeddedConfig{Dir: t.TempDir(), ClientURL: "http://127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	proxy := newFreezer(t, strings.TrimPrefix(e.Endpoints()[0], "http://"))
	g := startServe(t, append([]string{"--etcd-endpoints", "http://" + proxy.ln.Addr().String(), "--etcd-watch-progress", "100ms"}, extra...)...)
	t.Cleanup(func() {
		proxy.freeze(false)
		g.stop() // before etcd, which waits for open watches
		e.Close()
	})
	return g, proxy, e
}

func readyz(t *testing.T, base string) int {
	t.Helper()
	resp, err := http.Get(base + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// TestReadyzOnHalfOpenEtcd: when the path to etcd goes half-open (bytes
// stop, connections stay), the gateway keeps enforcing the rules it has,
// but /readyz turns not ready within a bound (three progress intervals
// and the check), and ready again once etcd is heard from.
func TestReadyzOnHalfOpenEtcd(t *testing.T) {
	g, proxy, _ := outageGateway(t)
	eventually(t, func() bool { return readyz(t, g.base) == http.StatusOK })
	proxy.freeze(true)
	start := time.Now()
	eventually(t, func() bool { return readyz(t, g.base) == http.StatusServiceUnavailable })
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("not ready only after %s", took)
	}
	proxy.freeze(false)
	eventually(t, func() bool { return readyz(t, g.base) == http.StatusOK })
}

// TestAsyncSubmitWithEtcdDown: with etcd unreachable, an async submit is
// answered 202 within a second (kept in the local journal), the job runs
// and succeeds without waiting on its record writes, sync jobs go on, and
// the record reaches etcd once it is back.
func TestAsyncSubmitWithEtcdDown(t *testing.T) {
	comfy := comfyuitest.NewServer(comfyuitest.Options{JobTime: func(comfyuitest.Prompt) time.Duration { return 10 * time.Millisecond }})
	defer comfy.Close()
	g, proxy, e := outageGateway(t, "--comfyui", comfy.URL, "--slots", "1", "--gpu-interval", "1m")
	eventually(t, func() bool { return readyz(t, g.base) == http.StatusOK })
	proxy.freeze(true)

	start := time.Now()
	id := submitAsync(t, g.base)
	if took := time.Since(start); took > time.Second {
		t.Fatalf("the async submit took %s with etcd down; want under a second", took)
	}
	var job struct{ State, Error string }
	eventually(t, func() bool {
		getJSON(t, g.base+"/api/jobs/"+id, &job)
		return job.State == "succeeded" || job.State == "failed"
	})
	if job.State != "succeeded" {
		t.Fatalf("job %s with etcd down: %s", job.State, job.Error)
	}
	// A sync job is not held up behind record writes either.
	start = time.Now()
	resp, err := http.Post(g.base+"/v1/generate", "application/json", strings.NewReader(`{"prompt": "a lighthouse", "width": 256, "height": 256}`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("sync job with etcd down: %d", resp.StatusCode)
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("sync job took %s with etcd down", took)
	}

	proxy.freeze(false)
	c, err := etcd.NewClient(etcd.ClientConfig{Endpoints: e.Endpoints()})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	store := etcd.NewJobStore(c, "", 0)
	eventually(t, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		resp, err := c.Get(ctx, store.Key(id))
		if err != nil || len(resp.Kvs) == 0 {
			return false
		}
		rec, err := jobs.UnmarshalRecord(resp.Kvs[0].Value)
		return err == nil && rec.State == jobs.Succeeded
	})
}
