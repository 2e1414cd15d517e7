package console_test

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"

	"github.com/gin-gonic/gin"

	"github.com/sluicehq/sluice/adapters/console"
	dashboardapi "github.com/sluicehq/sluice/dashboard-api"
)

// The console mounts beside the operator API, whose Config.Session it
// is; the page logs in with the admin token and gets a session cookie.
func Example() {
	gin.SetMode(gin.ReleaseMode)
	r := gin.New()
	con, err := console.Register(r, console.Config{Engine: &fakeSource{}, AdminToken: "s3cret"})
	if err != nil {
		panic(err)
	}
	defer con.Close() // in serve: srv.RegisterOnShutdown(con.Close)
	_ = dashboardapi.Config{AdminToken: "s3cret", Session: con}

	req := httptest.NewRequest(http.MethodPost, "/dashboard/login", strings.NewReader(`{"token": "s3cret"}`))
	rec := httptest.NewRecorder()
	r.ServeHTTP(rec, req)
	ck := rec.Result().Cookies()[0]
	fmt.Println(rec.Code, ck.Name, ck.HttpOnly, ck.SameSite == http.SameSiteStrictMode)
	// Output: 204 sluice_session true true
}
