package engine

import (
	"context"
	"log/slog"
)

// slogLogger carries sentinel-golang's logs to slog. sentinel-golang's Info
// messages (rule loads, configuration) are debug detail here: the engine
// logs what matters itself.
type slogLogger struct{ l *slog.Logger }

func (s slogLogger) Debug(msg string, kv ...any) { s.l.Debug(msg, kv...) }
func (s slogLogger) DebugEnabled() bool          { return s.l.Enabled(context.Background(), slog.LevelDebug) }
func (s slogLogger) Info(msg string, kv ...any)  { s.l.Debug(msg, kv...) }
func (s slogLogger) InfoEnabled() bool           { return s.DebugEnabled() }
func (s slogLogger) Warn(msg string, kv ...any)  { s.l.Warn(msg, kv...) }
func (s slogLogger) WarnEnabled() bool           { return s.l.Enabled(context.Background(), slog.LevelWarn) }
func (s slogLogger) Error(err error, msg string, kv ...any) {
	s.l.Error(msg, append([]any{slog.Any("error", err)}, kv...)...)
}
func (s slogLogger) ErrorEnabled() bool { return s.l.Enabled(context.Background(), slog.LevelError) }
