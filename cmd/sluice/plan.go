package main

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/sluicehq/sluice/engine/dispatch"
	"github.com/sluicehq/sluice/engine/plan"
	"github.com/sluicehq/sluice/rules"
)

// planOptions are the flags of `sluice plan`.
type planOptions struct {
	// Server is the gateway's base URL (--server).
	Server string
	// Token is the admin token (--admin-token, or $SLUICE_ADMIN_TOKEN),
	// needed when the gateway protects its reads.
	Token string
	// Output is text (a table and the YAML), yaml (the rule documents
	// alone, for `sluice rules apply -f -`) or json (GET /api/plan's body).
	Output string
	// Shadow proposes the flow rules and concurrency in mode: shadow.
	Shadow bool
	// Timeout bounds the request (0: defaultPlanTimeout).
	Timeout time.Duration
}

// Defaults of `sluice plan`.
const (
	defaultPlanServer  = "http://127.0.0.1:8080"
	defaultPlanTimeout = 10 * time.Second
)

// errGatewayUnreachable marks a gateway that could not be reached (exit
// code 2).
var errGatewayUnreachable = errors.New("the gateway cannot be reached")

// isUnreachable says whether err is planMain's "the gateway cannot be
// reached".
func isUnreachable(err error) bool { return errors.Is(err, errGatewayUnreachable) }

// planMain runs `sluice plan`: GET /api/plan from the gateway at o.Server
// and print it as o.Output says. A gateway that cannot be reached is an
// error for which isUnreachable holds (exit 2); a 4xx answer is invalid
// input (exit 1).
func planMain(ctx context.Context, o planOptions, stdout io.Writer) error {
	switch o.Output {
	case "", "text", "yaml", "json":
	default:
		return &usageError{fmt.Sprintf("-o %q: want text, yaml or json", o.Output)}
	}
	base, err := url.Parse(strings.TrimSuffix(cmp.Or(o.Server, defaultPlanServer), "/"))
	if err != nil || (base.Scheme != "http" && base.Scheme != "https") || base.Host == "" {
		return &usageError{fmt.Sprintf("--server %q: want the gateway's base URL, e.g. %s", o.Server, defaultPlanServer)}
	}
	u := base.JoinPath("api", "plan")
	if o.Shadow {
		u.RawQuery = "shadow=true"
	}
	ctx, cancel := context.WithTimeout(ctx, max(cmp.Or(o.Timeout, defaultPlanTimeout), time.Millisecond))
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return fmt.Errorf("plan: %w", err)
	}
	if o.Token != "" {
		req.Header.Set("Authorization", "Bearer "+o.Token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return unreachable(fmt.Errorf("plan: %s: %w: %w", u.Redacted(), errGatewayUnreachable, err))
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 8<<20))
	if err != nil {
		return unreachable(fmt.Errorf("plan: %s: reading the answer: %w: %w", u.Redacted(), errGatewayUnreachable, err))
	}
	if resp.StatusCode != http.StatusOK {
		err := fmt.Errorf("plan: GET %s: %s: %s", u.Redacted(), resp.Status, problemDetail(body))
		if resp.StatusCode < 500 {
			return invalid(err)
		}
		return err
	}
	if o.Output == "json" {
		_, err := stdout.Write(body)
		return err
	}
	var p plan.Plan
	if err := json.Unmarshal(body, &p); err != nil {
		return fmt.Errorf("plan: GET %s: not a plan: %w", u.Redacted(), err)
	}
	if o.Output == "yaml" {
		_, err := io.WriteString(stdout, p.YAML)
		return err
	}
	return writePlanText(stdout, p)
}

// problemDetail is the detail of a problem body, or the body's start.
func problemDetail(body []byte) string {
	var p struct {
		Detail string `json:"detail"`
	}
	if json.Unmarshal(body, &p) == nil && p.Detail != "" {
		return p.Detail
	}
	s := strings.TrimSpace(string(body))
	if len(s) > 200 {
		s = s[:200] + "…"
	}
	return s
}

// writePlanText prints the plan as a table, its notes, then its YAML.
func writePlanText(w io.Writer, p plan.Plan) error {
	var b strings.Builder
	fmt.Fprintf(&b, "Farm: %s, %s\n", plural(len(p.Backends), "backend"), plural(p.SlotsTotal, "slot"))
	for _, be := range p.Backends {
		fmt.Fprintf(&b, "  %s  %d slots\n", be.Name, be.Slots)
	}
	b.WriteString("\n")
	tw := tabwriter.NewWriter(&b, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "RESOURCE\tSOURCE\tJOBS\tMEAN\tP95\tJOBS/S\tFLOW\tCONCURRENCY\tQUEUE WAIT")
	for _, r := range p.Resources {
		p95 := "-"
		if r.Measured {
			p95 = seconds(r.P95Millis)
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%.2f\t%g per %s\t%d\t%gs\n", r.Resource, r.Source, r.Samples, seconds(r.JobTimeMillis), p95,
			r.SustainablePerSec, r.Proposed.FlowThreshold, r.Proposed.Window, r.Proposed.Concurrency, r.Proposed.QueueWaitSeconds)
		for _, s := range r.Sizes {
			fmt.Fprintf(tw, "  size %d\t\t%d\t%s\t\t\tcost %d\t\t\n", s.Size, s.Samples, seconds(s.JobTimeMillis), s.Cost)
		}
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(p.Notes) > 0 {
		b.WriteString("\nNotes:\n")
		for _, n := range p.Notes {
			fmt.Fprintf(&b, "  - %s\n", n)
		}
	}
	b.WriteString("\nProposed rules (sluice plan -o yaml | sluice rules apply -f -):\n\n")
	b.WriteString(p.YAML)
	_, err := io.WriteString(w, b.String())
	return err
}

// seconds writes milliseconds as seconds: "3.00s".
func seconds(ms float64) string { return fmt.Sprintf("%.2fs", ms/1000) }

// newPlanner is serve's capacity planner (GET /api/plan) over the farm's
// slots, the slot times recorded in times and the rules in force. A
// resource with no measured job is planned with --job-estimate, or the
// simulator's fixed --sim-job-time when it runs, or dispatch's default.
func newPlanner(f *serveFlags, simulated bool, farmStats func() dispatch.Stats, inForce func() *rules.Set, times *plan.Recorder) (*plan.Planner, error) {
	cfg := plan.Config{Farm: farmStats, Times: times, Rules: inForce}
	switch {
	case f.jobEstimate != 0:
		cfg.Estimate, cfg.EstimateSource = f.jobEstimate, "--job-estimate"
	case simulated && f.simJobTime > 0:
		cfg.Estimate, cfg.EstimateSource = f.simJobTime, "the simulator's --sim-job-time"
	}
	p, err := plan.New(cfg)
	if err != nil {
		return nil, fmt.Errorf("--job-estimate: %w", err)
	}
	return p, nil
}

// plural is "1 slot", "2 slots".
func plural(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return fmt.Sprintf("%d %ss", n, noun)
}
