package client

import (
	"context"
	"errors"
	"net"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/inference-platform/maistro/internal/fakeserver"
	pb "github.com/inference-platform/maistro/internal/gen/inference"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
)

// waitLimit bounds every wait for something the server should observe; tests never sleep.
const waitLimit = 5 * time.Second

// newTestClient serves srv over bufconn and returns a Client connected to it. cfg.Address is
// set to a loopback name (the bufconn dialer ignores it) unless the test sets one.
func newTestClient(t *testing.T, srv *fakeserver.Server, cfg Config) *Client {
	t.Helper()
	dial := fakeserver.Serve(t, srv)

	if cfg.Address == "" {
		cfg.Address = "passthrough:///localhost"
	}
	if cfg.Retry == (RetryPolicy{}) {
		cfg.Retry = fastRetry(DefaultRetryMaxAttempts) // the default attempts, without the waits
	}
	c, err := New(cfg, dial)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func chatRequest(content string) *ChatRequest {
	return &ChatRequest{Model: "llm", Messages: []Message{{Role: RoleUser, Content: content}}}
}

// waitClosed fails the test unless ch is closed within waitLimit.
func waitClosed(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(waitLimit):
		t.Fatalf("timed out waiting for: %s", what)
	}
}

func TestChatStreamsChunksInOrderAndReturnsTheResult(t *testing.T) {
	var got *pb.ChatStreamRequest
	srv := &fakeserver.Server{OnChat: func(req *pb.ChatStreamRequest, s grpc.ServerStreamingServer[pb.ChatStreamResponse]) error {
		got = req
		for _, d := range []string{"Hel", "lo", " world"} {
			if err := s.Send(&pb.ChatStreamResponse{Model: "llm", Delta: d}); err != nil {
				return err
			}
		}
		return s.Send(&pb.ChatStreamResponse{
			Model: "llm", Delta: "!", Done: true,
			FinishReason: pb.FinishReason_FINISH_REASON_LENGTH,
			Usage:        &pb.Usage{PromptTokens: 5, CompletionTokens: 4, TotalTokens: 9},
			Timings: &pb.Timings{
				LoadDuration:     durationpb.New(2 * time.Second),
				TimeToFirstToken: durationpb.New(30 * time.Millisecond),
				TotalDuration:    durationpb.New(2100 * time.Millisecond),
			},
		})
	}}
	c := newTestClient(t, srv, Config{})

	keep := -time.Second
	req := &ChatRequest{
		Model: "llm",
		Messages: []Message{
			{Role: RoleSystem, Content: "Be brief."},
			{Role: RoleUser, Content: "Hello"},
		},
		Options: Options{
			MaxTokens:   new(int32(4)),
			Temperature: new(float32(0)),
			Seed:        new(uint64(1)),
			Stop:        []string{"\n\n", "END"},
		},
		KeepAlive: &keep,
	}
	var chunks []ChatChunk
	res, err := c.Chat(context.Background(), req, func(ch ChatChunk) error {
		chunks = append(chunks, ch)
		return nil
	})
	if err != nil {
		t.Fatalf("Chat: %v", err)
	}

	// What the server received.
	if got.GetModel() != "llm" || len(got.GetMessages()) != 2 ||
		got.GetMessages()[0].GetRole() != "system" || got.GetMessages()[1].GetContent() != "Hello" {
		t.Errorf("server got model/messages %q %v", got.GetModel(), got.GetMessages())
	}
	o := got.GetOptions()
	if o.MaxTokens == nil || *o.MaxTokens != 4 || o.Temperature == nil || *o.Temperature != 0 ||
		o.Seed == nil || *o.Seed != 1 || !reflect.DeepEqual(o.Stop, []string{"\n\n", "END"}) {
		t.Errorf("server got options %v", o)
	}
	if o.TopP != nil || o.TopK != nil || o.RepetitionPenalty != nil {
		t.Errorf("unset options arrived set: %v", o)
	}
	if got.GetKeepAlive().AsDuration() != -time.Second {
		t.Errorf("server got keep_alive %v, want -1s", got.GetKeepAlive())
	}

	// What the callback saw, in order.
	var deltas []string
	for _, ch := range chunks {
		deltas = append(deltas, ch.Delta)
	}
	if want := []string{"Hel", "lo", " world", "!"}; !reflect.DeepEqual(deltas, want) {
		t.Errorf("deltas = %q, want %q", deltas, want)
	}
	for i, ch := range chunks {
		if ch.Done != (i == len(chunks)-1) {
			t.Errorf("chunk %d: Done = %v", i, ch.Done)
		}
	}

	want := &ChatResult{
		Model:        "llm",
		Text:         "Hello world!",
		FinishReason: FinishReasonLength,
		Usage:        Usage{PromptTokens: 5, CompletionTokens: 4, TotalTokens: 9},
		Timings:      Timings{Load: 2 * time.Second, TimeToFirstToken: 30 * time.Millisecond, Total: 2100 * time.Millisecond},
	}
	if !reflect.DeepEqual(res, want) {
		t.Errorf("result\n got %+v\nwant %+v", res, want)
	}
	if m := res.Message(); !reflect.DeepEqual(m, Message{Role: RoleAssistant, Content: "Hello world!"}) {
		t.Errorf("Message() = %+v", m)
	}
}

func TestGenerateStreamsChunksAndReturnsTheResult(t *testing.T) {
	var gotPrompt string
	srv := &fakeserver.Server{OnGenerate: func(req *pb.GenerateStreamRequest, s grpc.ServerStreamingServer[pb.GenerateStreamResponse]) error {
		gotPrompt = req.GetPrompt()
		if err := s.Send(&pb.GenerateStreamResponse{Model: "llm", Delta: " there"}); err != nil {
			return err
		}
		return s.Send(&pb.GenerateStreamResponse{
			Model: "llm", Done: true, FinishReason: pb.FinishReason_FINISH_REASON_STOP,
			Usage: &pb.Usage{PromptTokens: 4, CompletionTokens: 1, TotalTokens: 5},
		})
	}}
	c := newTestClient(t, srv, Config{})

	var deltas []string
	res, err := c.Generate(context.Background(), &GenerateRequest{Model: "llm", Prompt: "Once upon a time"},
		func(ch GenerateChunk) error {
			deltas = append(deltas, ch.Delta)
			return nil
		})
	if err != nil {
		t.Fatalf("Generate: %v", err)
	}
	if gotPrompt != "Once upon a time" {
		t.Errorf("server got prompt %q", gotPrompt)
	}
	if !reflect.DeepEqual(deltas, []string{" there", ""}) {
		t.Errorf("deltas = %q", deltas)
	}
	if res.Text != " there" || res.FinishReason != FinishReasonStop || res.Usage.CompletionTokens != 1 {
		t.Errorf("result = %+v", res)
	}
}

func TestNilCallbackStillReturnsTheResult(t *testing.T) {
	srv := &fakeserver.Server{OnChat: func(_ *pb.ChatStreamRequest, s grpc.ServerStreamingServer[pb.ChatStreamResponse]) error {
		return s.Send(&pb.ChatStreamResponse{Delta: "hi", Done: true, FinishReason: pb.FinishReason_FINISH_REASON_STOP})
	}}
	c := newTestClient(t, srv, Config{})
	res, err := c.Chat(context.Background(), chatRequest("x"), nil)
	if err != nil || res.Text != "hi" {
		t.Fatalf("Chat = %+v, %v", res, err)
	}
}

// endlessChat streams chunks until the call is cancelled, then closes cancelled.
func endlessChat(cancelled chan<- struct{}) func(*pb.ChatStreamRequest, grpc.ServerStreamingServer[pb.ChatStreamResponse]) error {
	return func(_ *pb.ChatStreamRequest, s grpc.ServerStreamingServer[pb.ChatStreamResponse]) error {
		defer close(cancelled)
		tick := time.NewTicker(time.Millisecond)
		defer tick.Stop()
		for {
			if err := s.Send(&pb.ChatStreamResponse{Delta: "x"}); err != nil {
				<-s.Context().Done()
				return err
			}
			select {
			case <-s.Context().Done():
				return s.Context().Err()
			case <-tick.C:
			}
		}
	}
}

func TestCallbackErrorStopsTheStreamAndCancelsTheServer(t *testing.T) {
	cancelled := make(chan struct{})
	c := newTestClient(t, &fakeserver.Server{OnChat: endlessChat(cancelled)}, Config{})

	errStop := errors.New("enough")
	calls := 0
	res, err := c.Chat(context.Background(), chatRequest("x"), func(ChatChunk) error {
		calls++
		if calls == 3 {
			return errStop
		}
		return nil
	})
	if !errors.Is(err, errStop) {
		t.Fatalf("Chat error = %v, want the callback's error", err)
	}
	if res != nil {
		t.Errorf("result = %+v, want nil on error", res)
	}
	if calls != 3 {
		t.Errorf("callback called %d times after returning an error at call 3", calls)
	}
	waitClosed(t, cancelled, "the server's context to be cancelled")
}

func TestCancellingTheContextCancelsTheServer(t *testing.T) {
	cancelled := make(chan struct{})
	c := newTestClient(t, &fakeserver.Server{OnChat: endlessChat(cancelled)}, Config{})

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	_, err := c.Chat(ctx, chatRequest("x"), func(ChatChunk) error {
		cancel() // the caller gives up; the callback itself does not fail
		return nil
	})
	if !IsCanceled(err) {
		t.Fatalf("Chat error = %v, want IsCanceled", err)
	}
	if !errors.Is(err, context.Canceled) {
		t.Errorf("errors.Is(%v, context.Canceled) = false", err)
	}
	waitClosed(t, cancelled, "the server's context to be cancelled")
}

func TestDeadlines(t *testing.T) {
	tests := []struct {
		name           string
		requestTimeout time.Duration
		ctxTimeout     time.Duration
	}{
		{name: "the caller's deadline", ctxTimeout: 50 * time.Millisecond},
		{name: "Config.RequestTimeout when the caller has none", requestTimeout: 50 * time.Millisecond},
		{name: "the caller's deadline wins over RequestTimeout", requestTimeout: time.Hour, ctxTimeout: 50 * time.Millisecond},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// The server's context ends either by its own copy of the deadline or by the
			// client's cancellation, whichever comes first; either way it must end.
			serverDone := make(chan struct{})
			srv := &fakeserver.Server{OnChat: func(_ *pb.ChatStreamRequest, s grpc.ServerStreamingServer[pb.ChatStreamResponse]) error {
				<-s.Context().Done()
				close(serverDone)
				return s.Context().Err()
			}}
			c := newTestClient(t, srv, Config{RequestTimeout: tt.requestTimeout})
			ctx := context.Background()
			if tt.ctxTimeout > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, tt.ctxTimeout)
				defer cancel()
			}
			_, err := c.Chat(ctx, chatRequest("x"), nil)
			if !IsDeadlineExceeded(err) || !errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("Chat error = %v, want DEADLINE_EXCEEDED", err)
			}
			waitClosed(t, serverDone, "the server's context to end")
		})
	}
}

func TestServerStatusCodesBecomeTypedErrors(t *testing.T) {
	predicates := map[string]func(error) bool{
		"IsNotFound":           IsNotFound,
		"IsInvalidArgument":    IsInvalidArgument,
		"IsUnavailable":        IsUnavailable,
		"IsUnauthenticated":    IsUnauthenticated,
		"IsPermissionDenied":   IsPermissionDenied,
		"IsResourceExhausted":  IsResourceExhausted,
		"IsFailedPrecondition": IsFailedPrecondition,
		"IsCanceled":           IsCanceled,
		"IsDeadlineExceeded":   IsDeadlineExceeded,
	}
	tests := []struct {
		code     codes.Code
		message  string
		wantIs   string // the one predicate that must hold; "" for none
		wantText string
	}{
		{codes.NotFound, `model "x" is not known`, "IsNotFound", `NOT_FOUND: model "x" is not known`},
		{codes.InvalidArgument, "options.max_tokens must be > 0", "IsInvalidArgument", "INVALID_ARGUMENT: options.max_tokens must be > 0"},
		{codes.Unavailable, "Triton is not ready", "IsUnavailable", "UNAVAILABLE: Triton is not ready"},
		{codes.Unauthenticated, "missing API key", "IsUnauthenticated", "UNAUTHENTICATED: missing API key"},
		{codes.PermissionDenied, "not allowed", "IsPermissionDenied", "PERMISSION_DENIED: not allowed"},
		{codes.ResourceExhausted, "needs 2 GiB, 1 GiB free", "IsResourceExhausted", "RESOURCE_EXHAUSTED: needs 2 GiB, 1 GiB free"},
		{codes.FailedPrecondition, "llm failed to load: boom", "IsFailedPrecondition", "FAILED_PRECONDITION: llm failed to load: boom"},
		{codes.Canceled, "cancelled by server", "IsCanceled", "CANCELLED: cancelled by server"},
		{codes.DeadlineExceeded, "took too long", "IsDeadlineExceeded", "DEADLINE_EXCEEDED: took too long"},
		{codes.Internal, "oops", "", "INTERNAL: oops"},
	}
	for _, tt := range tests {
		t.Run(CodeName(tt.code), func(t *testing.T) {
			srv := &fakeserver.Server{
				OnChat: func(*pb.ChatStreamRequest, grpc.ServerStreamingServer[pb.ChatStreamResponse]) error {
					return status.Error(tt.code, tt.message)
				},
				OnGenerate: func(_ *pb.GenerateStreamRequest, s grpc.ServerStreamingServer[pb.GenerateStreamResponse]) error {
					// An error after some text must still reach the caller.
					if err := s.Send(&pb.GenerateStreamResponse{Delta: "partial"}); err != nil {
						return err
					}
					return status.Error(tt.code, tt.message)
				},
			}
			c := newTestClient(t, srv, Config{})
			_, chatErr := c.Chat(context.Background(), chatRequest("x"), nil)
			_, genErr := c.Generate(context.Background(), &GenerateRequest{Model: "llm", Prompt: "x"}, nil)

			for call, err := range map[string]error{"Chat": chatErr, "Generate": genErr} {
				var e *Error
				if !errors.As(err, &e) {
					t.Fatalf("%s error %v (%T) is not an *Error", call, err, err)
				}
				if e.Code != tt.code || e.Message != tt.message {
					t.Errorf("%s: *Error{Code: %v, Message: %q}, want %v %q", call, e.Code, e.Message, tt.code, tt.message)
				}
				if err.Error() != tt.wantText {
					t.Errorf("%s: Error() = %q, want %q", call, err.Error(), tt.wantText)
				}
				if status.Code(err) != tt.code {
					t.Errorf("%s: status.Code = %v, want %v", call, status.Code(err), tt.code)
				}
				for name, is := range predicates {
					if got := is(err); got != (name == tt.wantIs) {
						t.Errorf("%s: %s = %v", call, name, got)
					}
				}
			}
		})
	}
}

func TestIsHelpersOnOtherErrors(t *testing.T) {
	tests := []struct {
		name string
		err  error
		is   func(error) bool
		want bool
	}{
		{"nil is nothing", nil, IsNotFound, false},
		{"plain error is nothing", errors.New("x"), IsUnavailable, false},
		{"bare context.Canceled", context.Canceled, IsCanceled, true},
		{"wrapped context.DeadlineExceeded", errWrap{context.DeadlineExceeded}, IsDeadlineExceeded, true},
		{"wrapped status error", errWrap{status.Error(codes.NotFound, "x")}, IsNotFound, true},
		{"wrapped *Error", errWrap{&Error{Code: codes.Unauthenticated}}, IsUnauthenticated, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.is(tt.err); got != tt.want {
				t.Errorf("got %v, want %v", got, tt.want)
			}
		})
	}
}

type errWrap struct{ err error }

func (e errWrap) Error() string { return "wrapped: " + e.err.Error() }
func (e errWrap) Unwrap() error { return e.err }

func TestStreamWithoutFinalMessageIsAnError(t *testing.T) {
	srv := &fakeserver.Server{OnChat: func(_ *pb.ChatStreamRequest, s grpc.ServerStreamingServer[pb.ChatStreamResponse]) error {
		return s.Send(&pb.ChatStreamResponse{Delta: "cut short"})
	}}
	c := newTestClient(t, srv, Config{})
	if _, err := c.Chat(context.Background(), chatRequest("x"), nil); !errors.Is(err, ErrIncompleteStream) {
		t.Fatalf("Chat error = %v, want ErrIncompleteStream", err)
	}
}

func TestAPIKeyIsSentAsMetadata(t *testing.T) {
	tests := []struct {
		name string
		key  string
		want []string
	}{
		{"with a key", "s3cret", []string{"s3cret"}},
		{"without a key", "", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var mu sync.Mutex
			var got []string
			srv := &fakeserver.Server{OnChat: func(_ *pb.ChatStreamRequest, s grpc.ServerStreamingServer[pb.ChatStreamResponse]) error {
				md, _ := metadata.FromIncomingContext(s.Context())
				mu.Lock()
				got = md.Get("x-api-key")
				mu.Unlock()
				return s.Send(&pb.ChatStreamResponse{Done: true})
			}}
			c := newTestClient(t, srv, Config{APIKey: tt.key})
			if _, err := c.Chat(context.Background(), chatRequest("x"), nil); err != nil {
				t.Fatalf("Chat: %v", err)
			}
			mu.Lock()
			defer mu.Unlock()
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("server got x-api-key %q, want %q", got, tt.want)
			}
		})
	}
}

func TestNew(t *testing.T) {
	tests := []struct {
		name    string
		cfg     Config
		wantErr string
	}{
		{"defaults", DefaultConfig(), ""},
		{"no address", Config{}, "no server address"},
		{"negative timeout", Config{Address: "localhost:1", DialTimeout: -time.Second}, "negative"},
		{"key over plain text to loopback", Config{Address: "127.0.0.1:50051", APIKey: "k"}, ""},
		{"key over plain text to localhost", Config{Address: "localhost:50051", APIKey: "k"}, ""},
		{"key over plain text to a remote host", Config{Address: "inference.example.com:50051", APIKey: "k"}, "plain text"},
		{"key over TLS to a remote host", Config{Address: "inference.example.com:443", Secure: true, APIKey: "k"}, ""},
		{"no key over plain text to a remote host", Config{Address: "inference.example.com:50051"}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := New(tt.cfg)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("New error = %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("New: %v", err)
			}
			if err := c.Close(); err != nil {
				t.Errorf("Close: %v", err)
			}
		})
	}
}

func TestUnreachableServerIsUnavailable(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := lis.Addr().String()
	lis.Close() // nothing listens there now

	c, err := New(Config{Address: addr, DialTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	defer cancel()
	if _, err := c.Chat(ctx, chatRequest("x"), nil); !IsUnavailable(err) {
		t.Fatalf("Chat error = %v, want IsUnavailable", err)
	}
}

func TestIsLoopback(t *testing.T) {
	tests := []struct {
		target string
		want   bool
	}{
		{"localhost:50051", true},
		{"LOCALHOST:50051", true},
		{"localhost", true},
		{"127.0.0.1:50051", true},
		{"127.8.9.10:1", true},
		{"[::1]:50051", true},
		{"dns:///localhost:50051", true},
		{"passthrough:///127.0.0.1:50051", true},
		{"unix:///run/adapter.sock", true},
		{"unix:adapter.sock", true},
		{"10.0.0.1:50051", false},
		{"inference.example.com:443", false},
		{"dns:///inference.example.com:443", false},
		{"dns://8.8.8.8/inference.example.com:443", false},
		{"localhost.example.com:1", false},
		{"", false},
	}
	for _, tt := range tests {
		if got := isLoopback(tt.target); got != tt.want {
			t.Errorf("isLoopback(%q) = %v, want %v", tt.target, got, tt.want)
		}
	}
}

func TestFinishReasonFromProto(t *testing.T) {
	tests := []struct {
		in   pb.FinishReason
		want FinishReason
	}{
		{pb.FinishReason_FINISH_REASON_UNSPECIFIED, ""},
		{pb.FinishReason_FINISH_REASON_STOP, FinishReasonStop},
		{pb.FinishReason_FINISH_REASON_LENGTH, FinishReasonLength},
		{pb.FinishReason_FINISH_REASON_CANCELLED, FinishReasonCancelled},
		{pb.FinishReason_FINISH_REASON_TOOL_CALLS, FinishReasonToolCalls},
		{pb.FinishReason(42), "42"},
	}
	for _, tt := range tests {
		if got := finishReasonFromProto(tt.in); got != tt.want {
			t.Errorf("finishReasonFromProto(%v) = %q, want %q", tt.in, got, tt.want)
		}
	}
}
