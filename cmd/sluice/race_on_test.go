//go:build race

package main

// raceBuild says whether this test binary was built with -race, so that a
// binary built by a test reuses the same compiled packages.
const raceBuild = true
