package identity_test

import (
	"context"
	"fmt"
	"net/http/httptest"

	"github.com/sluicehq/sluice/adapters/identity"
)

// A resolver without etcd or JWT: callers without a credential are
// anonymous, and a credential it cannot check is refused, never taken for
// anonymous.
func ExampleResolver_Identify() {
	r, err := identity.New(identity.Config{})
	if err != nil {
		panic(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- r.Run(ctx) }()
	defer func() { cancel(); <-done }()
	<-r.Ready()

	req := httptest.NewRequest("GET", "/api/me", nil)
	id, err := r.Identify(req, "203.0.113.7")
	fmt.Println(id.Tenant, id.Tier, id.Kind, err)

	req.Header.Set("Authorization", "Bearer eyJhbGciOiJSUzI1NiJ9.e30.c2ln")
	_, err = r.Identify(req, "203.0.113.7")
	fmt.Println(err)
	// Output:
	// 203.0.113.7 anonymous anonymous <nil>
	// unauthorized: the bearer is not an API key (sk_...) and JWT is not configured
}

func ExampleValidateTenant() {
	for _, name := range []string{"acme", "alice@example.com", "10.0.0.1"} {
		fmt.Println(name, identity.ValidateTenant(name))
	}
	// Output:
	// acme <nil>
	// alice@example.com <nil>
	// 10.0.0.1 tenant "10.0.0.1" looks like an IP address, which names anonymous callers
}
