package client

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/inference-platform/maistro/internal/fakeserver"
	pb "github.com/inference-platform/maistro/internal/gen/inference"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// fastRetry is a policy with the given attempts and backoffs short enough for tests.
func fastRetry(attempts int) RetryPolicy {
	return RetryPolicy{MaxAttempts: attempts, InitialBackoff: time.Millisecond, MaxBackoff: 4 * time.Millisecond}
}

func TestUnaryCallsAreRetriedOnUnavailableOnly(t *testing.T) {
	tests := []struct {
		name        string
		attempts    int
		failures    int        // how many calls fail before one succeeds
		code        codes.Code // how they fail
		wantCalls   int32
		wantErrCode codes.Code // OK: the call succeeds
	}{
		{name: "two UNAVAILABLE then success", attempts: 4, failures: 2, code: codes.Unavailable, wantCalls: 3},
		{name: "UNAVAILABLE until the attempts run out", attempts: 3, failures: 10, code: codes.Unavailable,
			wantCalls: 3, wantErrCode: codes.Unavailable},
		{name: "one attempt means no retry", attempts: 1, failures: 1, code: codes.Unavailable,
			wantCalls: 1, wantErrCode: codes.Unavailable},
		{name: "NOT_FOUND is not retried", attempts: 4, failures: 1, code: codes.NotFound,
			wantCalls: 1, wantErrCode: codes.NotFound},
		{name: "RESOURCE_EXHAUSTED is not retried", attempts: 4, failures: 1, code: codes.ResourceExhausted,
			wantCalls: 1, wantErrCode: codes.ResourceExhausted},
		{name: "INTERNAL is not retried", attempts: 4, failures: 1, code: codes.Internal,
			wantCalls: 1, wantErrCode: codes.Internal},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var calls atomic.Int32
			srv := &fakeserver.Server{OnMemoryStats: func(context.Context, *pb.GetMemoryStatsRequest) (*pb.GetMemoryStatsResponse, error) {
				if n := calls.Add(1); int(n) <= tt.failures {
					return nil, status.Errorf(tt.code, "attempt %d failed", n)
				}
				return &pb.GetMemoryStatsResponse{Snapshot: &pb.MemorySnapshot{}}, nil
			}}
			c := newTestClient(t, srv, Config{Retry: fastRetry(tt.attempts)})

			_, err := c.MemoryStats(context.Background())
			if got := codeOf(err); got != tt.wantErrCode {
				t.Fatalf("MemoryStats error %v, want code %s", err, CodeName(tt.wantErrCode))
			}
			if got := calls.Load(); got != tt.wantCalls {
				t.Errorf("the server saw %d calls, want %d", got, tt.wantCalls)
			}
			if err != nil {
				// The last attempt's message, as the server said it, not a retry wrapper's.
				var e *Error
				if !errors.As(err, &e) || !strings.HasPrefix(e.Message, "attempt ") {
					t.Errorf("error %v does not carry the server's message", err)
				}
			}
		})
	}
}

func TestChatIsRetriedBeforeItsFirstChunkNeverAfter(t *testing.T) {
	tests := []struct {
		name string
		// sendFirst: chunks the server sends before it fails with UNAVAILABLE on the failing calls.
		sendFirst  int
		failures   int
		wantCalls  int32
		wantChunks []string // the deltas the callback sees, in order
		wantErr    bool
	}{
		{name: "UNAVAILABLE before any chunk is retried", sendFirst: 0, failures: 2,
			wantCalls: 3, wantChunks: []string{"a", "b"}},
		{name: "UNAVAILABLE after a chunk is not retried", sendFirst: 1, failures: 2,
			wantCalls: 1, wantChunks: []string{"a"}, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var calls atomic.Int32
			srv := &fakeserver.Server{OnChat: func(_ *pb.ChatStreamRequest, s grpc.ServerStreamingServer[pb.ChatStreamResponse]) error {
				failing := int(calls.Add(1)) <= tt.failures
				deltas := []string{"a", "b"}
				for i, d := range deltas {
					if failing && i == tt.sendFirst {
						return status.Error(codes.Unavailable, "Triton is restarting")
					}
					if err := s.Send(&pb.ChatStreamResponse{Delta: d, Done: i == len(deltas)-1}); err != nil {
						return err
					}
				}
				return nil
			}}
			c := newTestClient(t, srv, Config{Retry: fastRetry(4)})

			var got []string
			res, err := c.Chat(context.Background(), chatRequest("x"), func(ch ChatChunk) error {
				got = append(got, ch.Delta)
				return nil
			})
			if tt.wantErr {
				if !IsUnavailable(err) {
					t.Fatalf("Chat error %v, want IsUnavailable", err)
				}
			} else if err != nil {
				t.Fatalf("Chat: %v", err)
			} else if res.Text != strings.Join(tt.wantChunks, "") {
				t.Errorf("result text %q, want %q", res.Text, strings.Join(tt.wantChunks, ""))
			}
			if n := calls.Load(); n != tt.wantCalls {
				t.Errorf("the server saw %d calls, want %d", n, tt.wantCalls)
			}
			if strings.Join(got, ",") != strings.Join(tt.wantChunks, ",") {
				t.Errorf("callback saw %q, want %q", got, tt.wantChunks)
			}
		})
	}
}

func TestRetryBackoffGrowsWithJitterUpToTheMax(t *testing.T) {
	p := RetryPolicy{MaxAttempts: 10, InitialBackoff: 100 * time.Millisecond, MaxBackoff: time.Second}
	tests := []struct {
		retry int
		ceil  time.Duration
	}{
		{1, 100 * time.Millisecond},
		{2, 200 * time.Millisecond},
		{3, 400 * time.Millisecond},
		{4, 800 * time.Millisecond},
		{5, time.Second},
		{9, time.Second},
	}
	for _, tt := range tests {
		seen := map[time.Duration]bool{}
		for range 200 {
			d := p.backoff(tt.retry)
			if d < tt.ceil/2 || d > tt.ceil {
				t.Fatalf("backoff(%d) = %s, want within [%s, %s]", tt.retry, d, tt.ceil/2, tt.ceil)
			}
			seen[d] = true
		}
		if len(seen) < 10 {
			t.Errorf("backoff(%d) took only %d distinct values in 200 draws: no jitter?", tt.retry, len(seen))
		}
	}
}

func TestRetryGivesUpWhenTheContextEnds(t *testing.T) {
	var calls atomic.Int32
	srv := &fakeserver.Server{OnEmbed: func(context.Context, *pb.GetEmbeddingRequest) (*pb.GetEmbeddingResponse, error) {
		calls.Add(1)
		return nil, status.Error(codes.Unavailable, "down")
	}}
	c := newTestClient(t, srv, Config{Retry: RetryPolicy{MaxAttempts: 5, InitialBackoff: time.Hour, MaxBackoff: time.Hour}})

	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := c.Embed(ctx, &EmbedRequest{Model: "embedding", Inputs: []string{"x"}})
	if !IsUnavailable(err) {
		t.Fatalf("Embed error %v, want the server's UNAVAILABLE", err)
	}
	if waited := time.Since(start); waited > waitLimit {
		t.Errorf("Embed returned after %s: the backoff ignored the context", waited)
	}
	if n := calls.Load(); n != 1 {
		t.Errorf("the server saw %d calls, want 1", n)
	}
}

func TestNewRejectsBadRetryPolicies(t *testing.T) {
	for _, p := range []RetryPolicy{
		{MaxAttempts: -1},
		{InitialBackoff: -time.Second},
		{InitialBackoff: time.Second, MaxBackoff: time.Millisecond},
	} {
		if _, err := New(Config{Address: "localhost:1", Retry: p}); err == nil || !strings.Contains(err.Error(), "retry") {
			t.Errorf("New with retry policy %+v: error %v, want one about the retry policy", p, err)
		}
	}
}
