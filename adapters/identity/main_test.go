package identity

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/sluicehq/sluice/adapters/etcd"
	"github.com/sluicehq/sluice/adapters/internal/leaktest"
)

// One real etcd serves the package's tests; each test works under its own
// prefix.
var shared struct {
	etcd   *etcd.Embedded
	client *clientv3.Client
}

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "sluice-identity-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	e, err := etcd.StartEmbedded(etcd.EmbeddedConfig{Dir: dir, ClientURL: "http://127.0.0.1:0"})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	c, err := etcd.NewClient(etcd.ClientConfig{Endpoints: e.Endpoints()})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	shared.etcd, shared.client = e, c
	code := m.Run()
	c.Close()
	e.Close()
	os.RemoveAll(dir)
	if code == 0 {
		if leaked := leaktest.Leaked(3*time.Second, "sluice/adapters/identity", "lestrrat-go/httprc"); leaked != "" {
			fmt.Fprintf(os.Stderr, "leaked goroutines:\n%s\n", leaked)
			code = 1
		}
	}
	os.Exit(code)
}

// logBuffer is a slog handler's output, safe for concurrent writes.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// newLogger returns a logger whose output the test checks, at its end, for
// every secret it was told about.
func newLogger(t testing.TB) (*slog.Logger, func(secret string)) {
	t.Helper()
	var (
		buf     logBuffer
		mu      sync.Mutex
		secrets []string
	)
	t.Cleanup(func() {
		out := buf.String()
		mu.Lock()
		defer mu.Unlock()
		for _, s := range secrets {
			if strings.Contains(out, s) {
				t.Errorf("the logs hold a credential:\n%s", out)
			}
		}
	})
	return slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug})), func(s string) {
		mu.Lock()
		defer mu.Unlock()
		secrets = append(secrets, s)
	}
}

var (
	prefixes  sync.Map // testing.TB → string
	prefixSeq atomic.Int64
)

// prefix is the test's own etcd prefix, new for each run of it (-count).
func prefix(t testing.TB) string {
	p, _ := prefixes.LoadOrStore(t, fmt.Sprintf("/test/%s-%d", strings.NewReplacer("/", "_", " ", "_").Replace(t.Name()), prefixSeq.Add(1)))
	return p.(string)
}

// start runs r until the test ends and waits until it is ready.
func start(t testing.TB, r *Resolver) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	select {
	case <-r.Ready():
	case err := <-done:
		t.Fatalf("Run ended before ready: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("resolver not ready after 30s")
	}
}

// revision returns etcd's current revision.
func revision(t testing.TB) int64 {
	t.Helper()
	resp, err := shared.client.Get(context.Background(), "/none")
	if err != nil {
		t.Fatal(err)
	}
	return resp.Header.Revision
}

// waitRevision waits until every resolver has seen etcd's current revision.
func waitRevision(t testing.TB, rs ...*Resolver) {
	t.Helper()
	rev := revision(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, r := range rs {
		if err := r.WaitRevision(ctx, rev); err != nil {
			t.Fatalf("resolver did not see revision %d: %v", rev, err)
		}
	}
}
