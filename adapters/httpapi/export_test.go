package httpapi

// ProblemJSON exposes the problem encoder to the tests.
func ProblemJSON(p *Problem) []byte { return p.appendJSON(nil) }
