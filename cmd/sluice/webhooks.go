package main

import (
	"context"
	"log/slog"
	"time"

	"github.com/sluicehq/sluice/adapters/webhook"
	"github.com/sluicehq/sluice/engine/jobs"
)

// webhookNotifier returns the jobs' OnFinish hook that tells a job's
// webhook, if it has one, that the job ended; nil without a secret (the API
// then refuses webhooks).
func webhookNotifier(secret string, allowPrivate bool, log *slog.Logger) (func(jobs.Job), error) {
	if secret == "" {
		return nil, nil
	}
	sender, err := webhook.New(webhook.Config{Secret: secret, Logger: log, AllowPrivate: allowPrivate})
	if err != nil {
		return nil, &usageError{"--webhook-secret: " + err.Error()}
	}
	return func(j jobs.Job) {
		if j.Webhook == "" {
			return
		}
		// Called on the job's goroutine: a shutdown's drain waits for the
		// delivery, whose attempts are bounded.
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		ev := webhook.Event{Type: "job." + string(j.State), Timestamp: j.Finished, Data: j}
		if err := sender.Send(ctx, j.Webhook, j.ID+"."+string(j.State), ev); err == nil {
			log.Info("webhook delivered", slog.String("job", j.ID), slog.String("state", string(j.State)))
		}
	}, nil
}
