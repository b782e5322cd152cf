package client

import (
	"context"
	"errors"
	"fmt"
	"io"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/inference-platform/maistro/internal/fakeserver"
	pb "github.com/inference-platform/maistro/internal/gen/inference"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// vramStream is the server's side of a control session.
type vramStream = grpc.BidiStreamingServer[pb.ManageVRAMRequest, pb.ManageVRAMResponse]

// fakeSession is one control session of the fake server. Its send may be called from several
// goroutines (a handler and a snapshot ticker); gRPC allows one Send at a time.
type fakeSession struct {
	stream vramStream
	mu     sync.Mutex
}

func (f *fakeSession) send(msgs ...*pb.ManageVRAMResponse) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, m := range msgs {
		if err := f.stream.Send(m); err != nil {
			return err
		}
	}
	return nil
}

// serveSession runs a control session that hands every command to handle. An error from handle
// ends the session with it (io.EOF: cleanly, as the client's half-close does).
func serveSession(handle func(*fakeSession, *pb.ManageVRAMRequest) error) func(vramStream) error {
	return func(s vramStream) error {
		fs := &fakeSession{stream: s}
		for {
			req, err := s.Recv()
			if errors.Is(err, io.EOF) {
				return nil
			}
			if err != nil {
				return err
			}
			if err := handle(fs, req); errors.Is(err, io.EOF) {
				return nil
			} else if err != nil {
				return err
			}
		}
	}
}

func okResult(id string) *pb.ManageVRAMResponse {
	return &pb.ManageVRAMResponse{Payload: &pb.ManageVRAMResponse_Result{Result: &pb.CommandResult{CommandId: id, Ok: true}}}
}

func errorResult(id, code, message string) *pb.ManageVRAMResponse {
	return &pb.ManageVRAMResponse{Payload: &pb.ManageVRAMResponse_Result{Result: &pb.CommandResult{
		CommandId: id, ErrorCode: code, ErrorMessage: message,
	}}}
}

func statusResult(id string, budget uint64) *pb.ManageVRAMResponse {
	return &pb.ManageVRAMResponse{Payload: &pb.ManageVRAMResponse_Result{Result: &pb.CommandResult{
		CommandId: id, Ok: true, Snapshot: &pb.MemorySnapshot{BudgetBytes: budget},
	}}}
}

func modelEvent(model string, kind pb.ModelEventKind) *pb.ManageVRAMResponse {
	return &pb.ManageVRAMResponse{Payload: &pb.ManageVRAMResponse_Event{Event: &pb.ModelEvent{Model: model, Kind: kind}}}
}

// snapshotMsg is a pushed snapshot told apart by its budget.
func snapshotMsg(budget uint64) *pb.ManageVRAMResponse {
	return &pb.ManageVRAMResponse{Payload: &pb.ManageVRAMResponse_Snapshot{Snapshot: &pb.MemorySnapshot{BudgetBytes: budget}}}
}

// describe names a session event for comparisons: "loaded m" or "snapshot 7" (its budget).
func describe(e SessionEvent) string {
	switch {
	case e.Event != nil:
		return string(e.Event.Kind) + " " + e.Event.Model
	case e.Snapshot != nil:
		return "snapshot " + strconv.FormatUint(e.Snapshot.BudgetBytes, 10)
	}
	return "empty"
}

func openSession(t *testing.T, c *Client) *VRAMSession {
	t.Helper()
	s, err := c.OpenVRAMSession(context.Background())
	if err != nil {
		t.Fatalf("OpenVRAMSession: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// nextEvent returns the next event of s, failing the test if none comes or Events is closed.
func nextEvent(t *testing.T, s *VRAMSession) SessionEvent {
	t.Helper()
	select {
	case e, ok := <-s.Events():
		if !ok {
			t.Fatalf("Events closed: %v", s.Err())
		}
		return e
	case <-time.After(waitLimit):
		t.Fatal("timed out waiting for an event")
	}
	return SessionEvent{}
}

// waitEventsClosed takes what Events still holds until it is closed, and returns it.
func waitEventsClosed(t *testing.T, s *VRAMSession) []string {
	t.Helper()
	var held []string
	timeout := time.After(waitLimit)
	for {
		select {
		case e, ok := <-s.Events():
			if !ok {
				return held
			}
			held = append(held, describe(e))
		case <-timeout:
			t.Fatal("timed out waiting for Events to be closed")
		}
	}
}

func TestVRAMSessionCommandsSendTheirCommandAndGetTheirResult(t *testing.T) {
	tests := []struct {
		name string
		call func(context.Context, *VRAMSession) error
		want *pb.ManageVRAMRequest // without command_id
	}{
		{"Load", func(ctx context.Context, s *VRAMSession) error { return s.Load(ctx, "llm") },
			&pb.ManageVRAMRequest{Command: &pb.ManageVRAMRequest_Load{Load: &pb.LoadModelCommand{Model: "llm"}}}},
		{"Unload", func(ctx context.Context, s *VRAMSession) error { return s.Unload(ctx, "llm") },
			&pb.ManageVRAMRequest{Command: &pb.ManageVRAMRequest_Unload{Unload: &pb.UnloadModelCommand{Model: "llm"}}}},
		{"Pin", func(ctx context.Context, s *VRAMSession) error { return s.Pin(ctx, "embedding") },
			&pb.ManageVRAMRequest{Command: &pb.ManageVRAMRequest_Pin{Pin: &pb.PinModelCommand{Model: "embedding"}}}},
		{"Unpin", func(ctx context.Context, s *VRAMSession) error { return s.Unpin(ctx, "embedding") },
			&pb.ManageVRAMRequest{Command: &pb.ManageVRAMRequest_Unpin{Unpin: &pb.UnpinModelCommand{Model: "embedding"}}}},
		{"SetKeepAlive", func(ctx context.Context, s *VRAMSession) error { return s.SetKeepAlive(ctx, "llm", 90*time.Second) },
			&pb.ManageVRAMRequest{Command: &pb.ManageVRAMRequest_SetKeepAlive{SetKeepAlive: &pb.SetKeepAliveCommand{
				Model: "llm", KeepAlive: durationpb.New(90 * time.Second)}}}},
		{"SetKeepAlive forever", func(ctx context.Context, s *VRAMSession) error { return s.SetKeepAlive(ctx, "llm", -1) },
			&pb.ManageVRAMRequest{Command: &pb.ManageVRAMRequest_SetKeepAlive{SetKeepAlive: &pb.SetKeepAliveCommand{
				Model: "llm", KeepAlive: durationpb.New(-1)}}}},
		{"Subscribe", func(ctx context.Context, s *VRAMSession) error { return s.Subscribe(ctx, 0) },
			&pb.ManageVRAMRequest{Command: &pb.ManageVRAMRequest_Subscribe{Subscribe: &pb.SubscribeCommand{
				SnapshotInterval: durationpb.New(0)}}}},
		{"Status", func(ctx context.Context, s *VRAMSession) error {
			snap, err := s.Status(ctx)
			if err == nil && snap.BudgetBytes != 42 {
				return fmt.Errorf("status budget %d, want 42", snap.BudgetBytes)
			}
			return err
		}, &pb.ManageVRAMRequest{Command: &pb.ManageVRAMRequest_GetStatus{GetStatus: &pb.GetStatusCommand{}}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got []*pb.ManageVRAMRequest
			var mu sync.Mutex
			// Every answer comes between an event and a snapshot, which must not disturb it.
			srv := &fakeserver.Server{OnManageVRAM: serveSession(func(fs *fakeSession, req *pb.ManageVRAMRequest) error {
				mu.Lock()
				got = append(got, req)
				mu.Unlock()
				answer := okResult(req.GetCommandId())
				if req.GetGetStatus() != nil {
					answer = statusResult(req.GetCommandId(), 42)
				}
				return fs.send(modelEvent("before", pb.ModelEventKind_MODEL_EVENT_KIND_LOADED), answer, snapshotMsg(7))
			})}
			s := openSession(t, newTestClient(t, srv, Config{}))

			for range 2 { // twice: the session goes on after a command
				if err := tt.call(context.Background(), s); err != nil {
					t.Fatalf("%s: %v", tt.name, err)
				}
			}
			mu.Lock()
			defer mu.Unlock()
			if len(got) != 2 || got[0].GetCommandId() == "" || got[0].GetCommandId() == got[1].GetCommandId() {
				t.Fatalf("server got %v: want 2 commands with distinct ids", got)
			}
			for _, req := range got {
				req = proto.Clone(req).(*pb.ManageVRAMRequest)
				req.CommandId = ""
				if !proto.Equal(req, tt.want) {
					t.Errorf("server got %v, want %v", req, tt.want)
				}
			}
			var events []string
			for range 4 {
				events = append(events, describe(nextEvent(t, s)))
			}
			if want := []string{"loaded before", "snapshot 7", "loaded before", "snapshot 7"}; !reflect.DeepEqual(events, want) {
				t.Errorf("events %q, want %q", events, want)
			}
		})
	}
}

func TestVRAMSessionMatchesConcurrentCommandsToTheirResults(t *testing.T) {
	const n = 20
	// The server waits for all n commands, then answers them in reverse order, an event between
	// two answers: Pin of an odd model fails with the model's name in the message.
	srv := &fakeserver.Server{OnManageVRAM: func(s vramStream) error {
		fs := &fakeSession{stream: s}
		var reqs []*pb.ManageVRAMRequest
		for len(reqs) < n {
			req, err := s.Recv()
			if err != nil {
				return err
			}
			reqs = append(reqs, req)
		}
		for i := len(reqs) - 1; i >= 0; i-- {
			model := reqs[i].GetPin().GetModel()
			k, _ := strconv.Atoi(strings.TrimPrefix(model, "m-"))
			answer := okResult(reqs[i].GetCommandId())
			if k%2 == 1 {
				answer = errorResult(reqs[i].GetCommandId(), "NOT_FOUND", fmt.Sprintf("model %q is not known", model))
			}
			if err := fs.send(modelEvent(model, pb.ModelEventKind_MODEL_EVENT_KIND_EVICTED), answer); err != nil {
				return err
			}
		}
		<-s.Context().Done()
		return nil
	}}
	s := openSession(t, newTestClient(t, srv, Config{}))

	errs := make([]error, n)
	var wg sync.WaitGroup
	for k := range n {
		wg.Go(func() { errs[k] = s.Pin(context.Background(), "m-"+strconv.Itoa(k)) })
	}
	wg.Wait()
	for k, err := range errs {
		if k%2 == 0 {
			if err != nil {
				t.Errorf("Pin(m-%d): %v, want nil", k, err)
			}
			continue
		}
		if want := fmt.Sprintf("model \"m-%d\" is not known", k); !IsNotFound(err) || !strings.HasSuffix(err.Error(), want) {
			t.Errorf("Pin(m-%d): %v, want NOT_FOUND: %s", k, err, want)
		}
	}
}

func TestVRAMSessionErrorResultsBecomeTypedErrorsAndTheSessionGoesOn(t *testing.T) {
	tests := []struct {
		errorCode string
		message   string
		want      codes.Code
		wantText  string
	}{
		{"NOT_FOUND", `model "x" is not known`, codes.NotFound, `NOT_FOUND: model "x" is not known`},
		{"RESOURCE_EXHAUSTED", "needs 9 GiB, 2 GiB free", codes.ResourceExhausted, "RESOURCE_EXHAUSTED: needs 9 GiB, 2 GiB free"},
		{"FAILED_PRECONDITION", "x failed to load: boom", codes.FailedPrecondition, "FAILED_PRECONDITION: x failed to load: boom"},
		{"INVALID_ARGUMENT", "model is required", codes.InvalidArgument, "INVALID_ARGUMENT: model is required"},
		{"UNAVAILABLE", "Triton is not ready", codes.Unavailable, "UNAVAILABLE: Triton is not ready"},
		{"", "no code", codes.Unknown, "UNKNOWN: no code"},
		{"OK", "not ok, yet OK", codes.Unknown, "UNKNOWN: not ok, yet OK"},
		{"SOMETHING_NEW", "a code from the future", codes.Unknown, "UNKNOWN: a code from the future"},
	}
	// The model named in Load is the code the server answers with, and its message follows.
	srv := &fakeserver.Server{OnManageVRAM: serveSession(func(fs *fakeSession, req *pb.ManageVRAMRequest) error {
		if req.GetGetStatus() != nil {
			return fs.send(statusResult(req.GetCommandId(), 1))
		}
		code, message, _ := strings.Cut(req.GetLoad().GetModel(), "|")
		return fs.send(errorResult(req.GetCommandId(), code, message))
	})}
	s := openSession(t, newTestClient(t, srv, Config{}))

	for _, tt := range tests {
		t.Run(tt.errorCode, func(t *testing.T) {
			err := s.Load(context.Background(), tt.errorCode+"|"+tt.message)
			var e *Error
			if !errors.As(err, &e) {
				t.Fatalf("Load error %v (%T) is not an *Error", err, err)
			}
			if e.Code != tt.want || e.Message != tt.message || err.Error() != tt.wantText {
				t.Errorf("Load error %+v (%q), want code %v message %q", e, err.Error(), tt.want, tt.message)
			}
			if status.Code(err) != tt.want {
				t.Errorf("status.Code = %v, want %v", status.Code(err), tt.want)
			}
			if IsNotFound(err) != (tt.want == codes.NotFound) {
				t.Errorf("IsNotFound = %v", IsNotFound(err))
			}
			// The session still answers.
			if _, err := s.Status(context.Background()); err != nil {
				t.Fatalf("Status after an error result: %v", err)
			}
			if err := s.Err(); err != nil {
				t.Errorf("Err() = %v on an open session", err)
			}
		})
	}
}

func TestVRAMSessionSubscribeDeliversSnapshots(t *testing.T) {
	var (
		mu        sync.Mutex
		intervals []time.Duration
	)
	// On subscribe the server pushes a snapshot every interval (budgets 1, 2, 3...) until the
	// next subscribe.
	srv := &fakeserver.Server{OnManageVRAM: func(s vramStream) error {
		fs := &fakeSession{stream: s}
		var stop chan struct{}
		for {
			req, err := s.Recv()
			if err != nil {
				return err
			}
			every := req.GetSubscribe().GetSnapshotInterval().AsDuration()
			mu.Lock()
			intervals = append(intervals, every)
			mu.Unlock()
			if stop != nil {
				close(stop)
				stop = nil
			}
			if every > 0 {
				stop = make(chan struct{})
				go pushSnapshots(s.Context(), fs, every, stop)
			}
			if err := fs.send(okResult(req.GetCommandId())); err != nil {
				return err
			}
		}
	}}
	s := openSession(t, newTestClient(t, srv, Config{}))

	if err := s.Subscribe(context.Background(), 5*time.Millisecond); err != nil {
		t.Fatalf("Subscribe: %v", err)
	}
	var got []string
	for range 3 {
		got = append(got, describe(nextEvent(t, s)))
	}
	if want := []string{"snapshot 1", "snapshot 2", "snapshot 3"}; !reflect.DeepEqual(got, want) {
		t.Errorf("events %q, want %q", got, want)
	}
	if err := s.Subscribe(context.Background(), 0); err != nil {
		t.Fatalf("Subscribe(0): %v", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if want := []time.Duration{5 * time.Millisecond, 0}; !reflect.DeepEqual(intervals, want) {
		t.Errorf("server got intervals %v, want %v", intervals, want)
	}
}

// pushSnapshots sends a snapshot every interval, with budgets 1, 2, 3..., until stop is closed
// or the session ends.
func pushSnapshots(ctx context.Context, fs *fakeSession, every time.Duration, stop <-chan struct{}) {
	tick := time.NewTicker(every)
	defer tick.Stop()
	for budget := uint64(1); ; budget++ {
		select {
		case <-stop:
			return
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		select {
		case <-stop: // stopped while waiting: send nothing more
			return
		default:
		}
		if fs.send(snapshotMsg(budget)) != nil {
			return
		}
	}
}

func TestVRAMSessionEndedByTheServerFailsPendingCommandsAndClosesEvents(t *testing.T) {
	tests := []struct {
		name      string
		serverEnd error // what the server's handler returns
		check     func(error) bool
	}{
		{"with an error", status.Error(codes.Unavailable, "shutting down"), IsUnavailable},
		{"cleanly", nil, func(err error) bool { return errors.Is(err, ErrSessionClosed) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// The first command gets an event, then the end of the stream, and no answer.
			srv := &fakeserver.Server{OnManageVRAM: serveSession(func(fs *fakeSession, req *pb.ManageVRAMRequest) error {
				if err := fs.send(modelEvent("llm", pb.ModelEventKind_MODEL_EVENT_KIND_UNLOADED)); err != nil {
					return err
				}
				if tt.serverEnd == nil {
					return io.EOF // ends the stream cleanly
				}
				return tt.serverEnd
			})}
			s := openSession(t, newTestClient(t, srv, Config{}))

			err := s.Load(context.Background(), "llm")
			if !tt.check(err) {
				t.Fatalf("Load error %v", err)
			}
			// Events delivers what came before the end, then is closed.
			if held := waitEventsClosed(t, s); !reflect.DeepEqual(held, []string{"unloaded llm"}) {
				t.Errorf("events %q, want the one event before the end", held)
			}
			if !tt.check(s.Err()) {
				t.Errorf("Err() = %v", s.Err())
			}
			// Later commands fail at once with the same error.
			if err := s.Pin(context.Background(), "llm"); !tt.check(err) {
				t.Errorf("Pin after the end: %v", err)
			}
			if err := s.Close(); err != nil {
				t.Errorf("Close: %v", err)
			}
		})
	}
}

func TestVRAMSessionCommandContext(t *testing.T) {
	tests := []struct {
		name  string
		cfg   Config
		ctx   func(started <-chan struct{}) (context.Context, context.CancelFunc)
		check func(error) bool
		is    error
	}{
		{
			name: "cancelled",
			ctx: func(started <-chan struct{}) (context.Context, context.CancelFunc) {
				ctx, cancel := context.WithCancel(context.Background())
				go func() { <-started; cancel() }()
				return ctx, cancel
			},
			check: IsCanceled, is: context.Canceled,
		},
		{
			name: "deadline",
			ctx: func(<-chan struct{}) (context.Context, context.CancelFunc) {
				return context.WithTimeout(context.Background(), 20*time.Millisecond)
			},
			check: IsDeadlineExceeded, is: context.DeadlineExceeded,
		},
		{
			name: "Config.RequestTimeout bounds the wait",
			cfg:  Config{RequestTimeout: 20 * time.Millisecond},
			ctx: func(<-chan struct{}) (context.Context, context.CancelFunc) {
				return context.WithCancel(context.Background())
			},
			check: IsDeadlineExceeded, is: context.DeadlineExceeded,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// Load of "slow" is never answered until the next command comes, which gets the
			// late answer first (for a command that gave up), then its own.
			started := make(chan struct{}, 1)
			var late string
			srv := &fakeserver.Server{OnManageVRAM: serveSession(func(fs *fakeSession, req *pb.ManageVRAMRequest) error {
				if req.GetLoad().GetModel() == "slow" {
					late = req.GetCommandId()
					started <- struct{}{}
					return nil
				}
				return fs.send(okResult(late), statusResult(req.GetCommandId(), 9))
			})}
			s := openSession(t, newTestClient(t, srv, tt.cfg))

			ctx, cancel := tt.ctx(started)
			defer cancel()
			err := s.Load(ctx, "slow")
			if !tt.check(err) || !errors.Is(err, tt.is) {
				t.Fatalf("Load error %v, want %v", err, tt.is)
			}
			var e *Error
			if !errors.As(err, &e) {
				t.Errorf("Load error %T is not an *Error", err)
			}
			snap, err := s.Status(context.Background())
			if err != nil || snap.BudgetBytes != 9 {
				t.Fatalf("Status after a command gave up: %+v, %v", snap, err)
			}
		})
	}
}

func TestVRAMSessionClose(t *testing.T) {
	serverDone := make(chan struct{})
	received := make(chan struct{}, 1)
	srv := &fakeserver.Server{OnManageVRAM: func(s vramStream) error {
		defer close(serverDone)
		if _, err := s.Recv(); err != nil { // a command it never answers
			return err
		}
		received <- struct{}{}
		<-s.Context().Done()
		return s.Context().Err()
	}}
	s := openSession(t, newTestClient(t, srv, Config{}))

	loadErr := make(chan error, 1)
	go func() { loadErr <- s.Load(context.Background(), "llm") }()
	select {
	case <-received:
	case <-time.After(waitLimit):
		t.Fatal("the server did not get the command")
	}
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	select {
	case err := <-loadErr:
		if !errors.Is(err, ErrSessionClosed) {
			t.Errorf("pending Load: %v, want ErrSessionClosed", err)
		}
	case <-time.After(waitLimit):
		t.Fatal("the pending command did not end with Close")
	}
	if held := waitEventsClosed(t, s); len(held) != 0 {
		t.Errorf("events %q", held)
	}
	if !errors.Is(s.Err(), ErrSessionClosed) {
		t.Errorf("Err() = %v, want ErrSessionClosed", s.Err())
	}
	if err := s.Unpin(context.Background(), "llm"); !errors.Is(err, ErrSessionClosed) {
		t.Errorf("Unpin after Close: %v, want ErrSessionClosed", err)
	}
	if err := s.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	waitClosed(t, serverDone, "the server's stream to end")
}

func TestVRAMSessionEndsWithItsContext(t *testing.T) {
	srv := &fakeserver.Server{OnManageVRAM: func(s vramStream) error {
		<-s.Context().Done()
		return nil
	}}
	c := newTestClient(t, srv, Config{})
	ctx, cancel := context.WithCancel(context.Background())
	s, err := c.OpenVRAMSession(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	cancel()
	waitEventsClosed(t, s)
	if !errors.Is(s.Err(), ErrSessionClosed) {
		t.Errorf("Err() = %v, want ErrSessionClosed", s.Err())
	}
}

func TestVRAMSessionOnAServerWithoutTheRPC(t *testing.T) {
	s := openSession(t, newTestClient(t, &fakeserver.Server{}, Config{}))
	if err := s.Load(context.Background(), "llm"); status.Code(err) != codes.Unimplemented {
		t.Fatalf("Load: %v, want UNIMPLEMENTED", err)
	}
	if status.Code(s.Err()) != codes.Unimplemented {
		t.Errorf("Err() = %v", s.Err())
	}
}

func TestVRAMSessionNeverWaitsForASlowConsumer(t *testing.T) {
	var (
		eventA = modelEvent("a", pb.ModelEventKind_MODEL_EVENT_KIND_LOADED)
		eventB = modelEvent("b", pb.ModelEventKind_MODEL_EVENT_KIND_EVICTED)
	)
	snapshots := func(from, to int) (msgs []*pb.ManageVRAMResponse, names []string) {
		for i := from; i <= to; i++ {
			msgs = append(msgs, snapshotMsg(uint64(i)))
			names = append(names, "snapshot "+strconv.Itoa(i))
		}
		return msgs, names
	}
	events := func(from, to int) (msgs []*pb.ManageVRAMResponse, names []string) {
		for i := from; i <= to; i++ {
			msgs = append(msgs, modelEvent("m"+strconv.Itoa(i), pb.ModelEventKind_MODEL_EVENT_KIND_UNLOADED))
			names = append(names, "unloaded m"+strconv.Itoa(i))
		}
		return msgs, names
	}
	manySnapshots, _ := snapshots(1, 100)
	_, newestSnapshots := snapshots(100-(EventBuffer-2)+1, 100)
	manyEvents, _ := events(1, EventBuffer+6)
	_, newestEvents := events(7, EventBuffer+6)

	tests := []struct {
		name string
		push []*pb.ManageVRAMResponse
		want []string
	}{
		{
			name: "all fit",
			push: []*pb.ManageVRAMResponse{eventA, snapshotMsg(1), eventB},
			want: []string{"loaded a", "snapshot 1", "evicted b"},
		},
		{
			name: "the oldest snapshots are dropped, model events kept",
			push: append(append([]*pb.ManageVRAMResponse{eventA}, manySnapshots...), eventB),
			want: append(append([]string{"loaded a"}, newestSnapshots...), "evicted b"),
		},
		{
			name: "with no snapshot held, the oldest model events are dropped",
			push: manyEvents,
			want: newestEvents,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// Status gets everything pushed before its answer; nobody reads Events meanwhile.
			srv := &fakeserver.Server{OnManageVRAM: serveSession(func(fs *fakeSession, req *pb.ManageVRAMRequest) error {
				return fs.send(append(tt.push, statusResult(req.GetCommandId(), 1))...)
			})}
			s := openSession(t, newTestClient(t, srv, Config{}))
			ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
			defer cancel()
			if _, err := s.Status(ctx); err != nil {
				t.Fatalf("Status: %v (blocked by the events nobody reads?)", err)
			}
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			if held := waitEventsClosed(t, s); !reflect.DeepEqual(held, tt.want) {
				t.Errorf("events held (%d):\n%q\nwant (%d):\n%q", len(held), held, len(tt.want), tt.want)
			}
		})
	}
}

func TestVRAMSessionStatusWithoutSnapshotBreaksTheContract(t *testing.T) {
	srv := &fakeserver.Server{OnManageVRAM: serveSession(func(fs *fakeSession, req *pb.ManageVRAMRequest) error {
		return fs.send(okResult(req.GetCommandId()))
	})}
	s := openSession(t, newTestClient(t, srv, Config{}))
	if _, err := s.Status(context.Background()); !errors.Is(err, ErrBadResponse) {
		t.Fatalf("Status: %v, want ErrBadResponse", err)
	}
}

// fullSnapshot has every field set; wantSnapshot is what the client makes of it.
var (
	taken    = time.Date(2025, 11, 25, 12, 0, 0, 0, time.UTC)
	lastUsed = taken.Add(-30 * time.Second)
	expires  = taken.Add(270 * time.Second)

	fullSnapshot = &pb.MemorySnapshot{
		Devices: []*pb.DeviceMemory{{Device: "gpu:0", TotalBytes: 80 << 30, UsedBytes: 3 << 30, FreeBytes: 77 << 30}},
		Models: []*pb.ModelMemory{
			{
				Model: "llm", State: pb.ModelState_MODEL_STATE_LOADED, MemoryBytes: 2 << 30, MemorySource: "measured",
				Pinned: true, InFlight: 2, LastUsed: timestamppb.New(lastUsed), ExpiresAt: timestamppb.New(expires),
			},
			{Model: "image", State: pb.ModelState_MODEL_STATE_FAILED, Reason: "out of memory"},
		},
		BudgetBytes: 70 << 30,
		TakenAt:     timestamppb.New(taken),
	}
	wantSnapshot = &MemorySnapshot{
		Devices: []DeviceMemory{{Device: "gpu:0", TotalBytes: 80 << 30, UsedBytes: 3 << 30, FreeBytes: 77 << 30}},
		Models: []ModelMemory{
			{
				Model: "llm", State: ModelStateLoaded, MemoryBytes: 2 << 30, MemorySource: MemorySourceMeasured,
				Pinned: true, InFlight: 2, LastUsed: lastUsed, ExpiresAt: expires,
			},
			{Model: "image", State: ModelStateFailed, Reason: "out of memory"},
		},
		BudgetBytes: 70 << 30,
		TakenAt:     taken,
	}
)

func TestMemoryStats(t *testing.T) {
	tests := []struct {
		name    string
		resp    *pb.GetMemoryStatsResponse
		err     error
		want    *MemorySnapshot
		wantErr func(error) bool
	}{
		{name: "every field", resp: &pb.GetMemoryStatsResponse{Snapshot: fullSnapshot}, want: wantSnapshot},
		{
			name: "an empty snapshot has empty lists and zero times",
			resp: &pb.GetMemoryStatsResponse{Snapshot: &pb.MemorySnapshot{}},
			want: &MemorySnapshot{Devices: []DeviceMemory{}, Models: []ModelMemory{}},
		},
		{
			name:    "no snapshot breaks the contract",
			resp:    &pb.GetMemoryStatsResponse{},
			wantErr: func(err error) bool { return errors.Is(err, ErrBadResponse) },
		},
		{name: "server error", err: status.Error(codes.Unavailable, "Triton is down"), wantErr: IsUnavailable},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := &fakeserver.Server{OnMemoryStats: func(context.Context, *pb.GetMemoryStatsRequest) (*pb.GetMemoryStatsResponse, error) {
				return tt.resp, tt.err
			}}
			got, err := newTestClient(t, srv, Config{}).MemoryStats(context.Background())
			if tt.wantErr != nil {
				if !tt.wantErr(err) {
					t.Fatalf("MemoryStats error %v", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("MemoryStats: %v", err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("snapshot\n got %+v\nwant %+v", got, tt.want)
			}
		})
	}
}

func TestMemorySnapshotModel(t *testing.T) {
	if m := wantSnapshot.Model("image"); m == nil || m.State != ModelStateFailed {
		t.Errorf("Model(image) = %+v", m)
	}
	if m := wantSnapshot.Model("nope"); m != nil {
		t.Errorf("Model(nope) = %+v, want nil", m)
	}
}

func TestClearMemory(t *testing.T) {
	tests := []struct {
		name    string
		opts    ClearOptions
		resp    *pb.ClearMemoryResponse
		want    *pb.ClearMemoryRequest
		wantRes *ClearResult
	}{
		{
			name:    "defaults leave wait_for_idle unset; nothing to clear is empty lists",
			resp:    &pb.ClearMemoryResponse{},
			want:    &pb.ClearMemoryRequest{},
			wantRes: &ClearResult{Unloaded: []string{}, Skipped: []string{}},
		},
		{
			name: "every option",
			opts: ClearOptions{IncludePinned: true, WaitForIdle: 10 * time.Second},
			resp: &pb.ClearMemoryResponse{
				UnloadedModels: []string{"embedding", "image"}, SkippedModels: []string{"llm (busy)"}, FreedBytes: 3 << 30,
			},
			want: &pb.ClearMemoryRequest{IncludePinned: true, WaitForIdle: durationpb.New(10 * time.Second)},
			wantRes: &ClearResult{
				Unloaded: []string{"embedding", "image"}, Skipped: []string{"llm (busy)"}, FreedBytes: 3 << 30,
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got *pb.ClearMemoryRequest
			srv := &fakeserver.Server{OnClearMemory: func(_ context.Context, req *pb.ClearMemoryRequest) (*pb.ClearMemoryResponse, error) {
				got = req
				return tt.resp, nil
			}}
			res, err := newTestClient(t, srv, Config{}).ClearMemory(context.Background(), tt.opts)
			if err != nil {
				t.Fatalf("ClearMemory: %v", err)
			}
			if !proto.Equal(got, tt.want) {
				t.Errorf("server got %v, want %v", got, tt.want)
			}
			if !reflect.DeepEqual(res, tt.wantRes) {
				t.Errorf("result %+v, want %+v", res, tt.wantRes)
			}
		})
	}
}

func TestClearMemoryErrorsAndDeadline(t *testing.T) {
	var deadline time.Duration
	srv := &fakeserver.Server{OnClearMemory: func(ctx context.Context, req *pb.ClearMemoryRequest) (*pb.ClearMemoryResponse, error) {
		if d, ok := ctx.Deadline(); ok {
			deadline = time.Until(d)
		}
		if req.GetIncludePinned() {
			return nil, status.Error(codes.Unavailable, "Triton is down")
		}
		return &pb.ClearMemoryResponse{}, nil
	}}
	c := newTestClient(t, srv, Config{RequestTimeout: time.Second})

	if _, err := c.ClearMemory(context.Background(), ClearOptions{IncludePinned: true}); !IsUnavailable(err) {
		t.Errorf("ClearMemory error %v, want IsUnavailable", err)
	}
	// The wait for idle models must not use up Config.RequestTimeout.
	if _, err := c.ClearMemory(context.Background(), ClearOptions{WaitForIdle: time.Minute}); err != nil {
		t.Fatal(err)
	}
	if deadline < time.Minute {
		t.Errorf("server saw a deadline in %v, want more than the 1m wait", deadline)
	}
}

func TestModelStateAndEventKindFromProto(t *testing.T) {
	states := []struct {
		in   pb.ModelState
		want ModelState
	}{
		{pb.ModelState_MODEL_STATE_UNSPECIFIED, ""},
		{pb.ModelState_MODEL_STATE_UNLOADED, ModelStateUnloaded},
		{pb.ModelState_MODEL_STATE_LOADING, ModelStateLoading},
		{pb.ModelState_MODEL_STATE_LOADED, ModelStateLoaded},
		{pb.ModelState_MODEL_STATE_UNLOADING, ModelStateUnloading},
		{pb.ModelState_MODEL_STATE_FAILED, ModelStateFailed},
		{pb.ModelState(42), "42"},
	}
	for _, tt := range states {
		if got := modelStateFromProto(tt.in); got != tt.want {
			t.Errorf("modelStateFromProto(%v) = %q, want %q", tt.in, got, tt.want)
		}
	}
	kinds := []struct {
		in   pb.ModelEventKind
		want ModelEventKind
	}{
		{pb.ModelEventKind_MODEL_EVENT_KIND_UNSPECIFIED, ""},
		{pb.ModelEventKind_MODEL_EVENT_KIND_LOADED, ModelLoaded},
		{pb.ModelEventKind_MODEL_EVENT_KIND_UNLOADED, ModelUnloaded},
		{pb.ModelEventKind_MODEL_EVENT_KIND_EVICTED, ModelEvicted},
		{pb.ModelEventKind_MODEL_EVENT_KIND_LOAD_FAILED, ModelLoadFailed},
		{pb.ModelEventKind(42), "42"},
	}
	for _, tt := range kinds {
		if got := modelEventKindFromProto(tt.in); got != tt.want {
			t.Errorf("modelEventKindFromProto(%v) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestModelEventFromProto(t *testing.T) {
	at := time.Date(2025, 11, 25, 12, 0, 0, 0, time.UTC)
	got := modelEventFromProto(&pb.ModelEvent{
		Model: "embedding", Kind: pb.ModelEventKind_MODEL_EVENT_KIND_EVICTED, Reason: "evicted to load llm",
		MemoryBytes: 90 << 20, At: timestamppb.New(at),
	})
	want := &ModelEvent{Model: "embedding", Kind: ModelEvicted, Reason: "evicted to load llm", MemoryBytes: 90 << 20, At: at}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got %+v, want %+v", got, want)
	}
}
