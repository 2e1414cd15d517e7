// Package console serves sluice's web console: one embedded page (package
// web: no CDN, works offline) at /dashboard, its login, and the live feed
// it draws its charts from. The page reads and writes through the operator
// API (package dashboardapi) and nothing else.
//
//	GET  /dashboard, /dashboard/     the page (hash routes #/live #/rules #/refusals #/gpus #/planner)
//	GET  /dashboard/assets/*file     its scripts, styles and vendored libraries (ETag, no-cache)
//	POST /dashboard/login            {"token": "..."} or token=: 204 + cookie sluice_session;
//	                                 401 wrong token, 403 none configured or cross-site, 429 too many wrong tokens
//	POST /dashboard/logout           204, the cookie deleted
//	GET  /dashboard/session          {"logged_in", "can_write", "read_only", "protect_reads", "csrf_token", "expires"}
//	GET  /api/live                   text/event-stream: "event: stats" once a second, the first at once
//
// Sessions are stateless: the cookie holds an expiry (12 h) and a random
// id signed with HMAC-SHA256 under a key derived from the admin token, so
// every replica sharing the token accepts it and changing the token logs
// everyone out. The cookie is HttpOnly, SameSite=Strict, Path=/, and Secure
// when the request came over TLS (or a trusted proxy says https). A
// state-changing request with the cookie also needs the session's CSRF
// token in X-CSRF-Token (compared in constant time) and must not be
// cross-site (Sec-Fetch-Site, Origin). Console implements
// dashboardapi.Session: pass it as the operator API's Config.Session.
// Without an admin token the console is read-only; with ProtectReads the
// live feed (and the operator API's reads) need the login or the bearer
// token.
//
// The live feed samples the engine's and the farm's statistics once per
// Interval into one encoded event that every viewer writes as it is: a
// hundred viewers cost the sampler nothing more than one, and a slow viewer
// skips to the latest event instead of holding anyone up.
//
//	con, err := console.Register(router, console.Config{Engine: eng, Backends: farm.Stats, AdminToken: token})
//	...
//	srv.RegisterOnShutdown(con.Close) // the streams end when shutdown begins
package console
