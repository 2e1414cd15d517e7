// Package web holds the web console's page and assets, embedded in the
// binary: index.html and everything under assets/ (scripts, styles and any
// vendored library, each with its licence). Package console serves them.
package web

import "embed"

// Files are the page (index.html) and its assets (assets/...).
//
//go:embed index.html assets
var Files embed.FS
