package etcd

import (
	"slices"
	"testing"

	"go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// A watch response's changes are in force before the follower is told the
// response's revision: whoever waits for that revision (the key table's
// WaitRevision) then finds them applied. Told first, a waiter could wake
// and find a key created at that revision still unknown.
func TestFollowerAppliesBeforeItHears(t *testing.T) {
	var order []string
	f := Follower{
		Apply: func(events []*clientv3.Event) { order = append(order, "apply") },
		Heard: func(int64) { order = append(order, "heard") },
	}
	resp := clientv3.WatchResponse{
		Header: &etcdserverpb.ResponseHeader{Revision: 12},
		Events: []*clientv3.Event{{Type: clientv3.EventTypePut, Kv: &mvccpb.KeyValue{Key: []byte("/k"), ModRevision: 12}}},
	}
	if err := f.handle(resp, 10); err != nil {
		t.Fatal(err)
	}
	if want := []string{"apply", "heard"}; !slices.Equal(order, want) {
		t.Fatalf("order %q, want %q", order, want)
	}
}
