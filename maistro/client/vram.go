package client

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	pb "github.com/inference-platform/maistro/internal/gen/inference"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
)

// EventBuffer is how many events a VRAMSession holds for a consumer of Events that is behind;
// see VRAMSession.Events for what happens beyond it.
const EventBuffer = 64

// ErrSessionClosed is returned by the commands of a VRAMSession that has ended without an error
// of the server's: it was closed with Close (or its context was cancelled), or the server ended
// it cleanly. Test for it with errors.Is.
var ErrSessionClosed = errors.New("maistro: VRAM session closed")

// ModelEventKind says what happened to a model.
type ModelEventKind string

// Model event kinds; the empty string means the server did not say.
const (
	// ModelLoaded: the model finished loading and serves requests.
	ModelLoaded ModelEventKind = "loaded"
	// ModelUnloaded: the model was unloaded on request or because its keep-alive expired.
	ModelUnloaded ModelEventKind = "unloaded"
	// ModelEvicted: the model was unloaded to make room for another one.
	ModelEvicted ModelEventKind = "evicted"
	// ModelLoadFailed: the model failed to load; ModelEvent.Reason says why.
	ModelLoadFailed ModelEventKind = "load_failed"
)

// ModelEvent is something that happened to a model, pushed to every open VRAMSession whoever
// caused it.
type ModelEvent struct {
	// Model is the model's name.
	Model string `json:"model"`
	// Kind says what happened.
	Kind ModelEventKind `json:"kind"`
	// Reason says why, for example "keep-alive expired" or "evicted to load llm".
	Reason string `json:"reason,omitempty"`
	// MemoryBytes is the memory the model took (loaded) or gave back (unloaded, evicted).
	MemoryBytes uint64 `json:"memory_bytes"`
	// At is when it happened; zero if the server did not say.
	At time.Time `json:"at,omitzero"`
}

// SessionEvent is one message that a VRAMSession's server pushed: exactly one of Event and
// Snapshot is set.
type SessionEvent struct {
	// Event is a model event.
	Event *ModelEvent `json:"event,omitempty"`
	// Snapshot is a periodic memory snapshot (see VRAMSession.Subscribe).
	Snapshot *MemorySnapshot `json:"snapshot,omitempty"`
}

// VRAMSession is an open control session (ManageVRAM): its commands load, unload and pin models
// and set their keep-alive, and Events delivers what the server pushes meanwhile. It is safe for
// concurrent use: commands from several goroutines are in flight together, each matched to its
// own answer. Create one with Client.OpenVRAMSession and Close it when done.
type VRAMSession struct {
	stream grpc.BidiStreamingClient[pb.ManageVRAMRequest, pb.ManageVRAMResponse]
	cancel context.CancelFunc
	client *Client

	sendMu sync.Mutex // gRPC allows one SendMsg at a time

	mu      sync.Mutex
	pending map[string]chan *pb.CommandResult // by command id; each channel has room for one
	err     error                             // why the session ended; set before done is closed
	closed  bool                              // Close was called

	nextID atomic.Uint64
	events chan SessionEvent
	done   chan struct{} // closed when the receiving goroutine has ended
}

// OpenVRAMSession opens a control session. It returns without waiting for the server, so an
// error of the server's (a server without the RPC: UNIMPLEMENTED) comes back from the first
// command, and ends the session.
//
// The session lasts until Close, until ctx is cancelled (which is as Close), or until the
// stream fails; Config.RequestTimeout does not bound it, but bounds each command's wait for its
// answer.
func (c *Client) OpenVRAMSession(ctx context.Context) (*VRAMSession, error) {
	ctx, cancel := context.WithCancel(ctx)
	stream, err := c.rpc.ManageVRAM(ctx)
	if err != nil {
		cancel()
		return nil, fromRPC(err)
	}
	s := &VRAMSession{
		stream:  stream,
		cancel:  cancel,
		client:  c,
		pending: make(map[string]chan *pb.CommandResult),
		events:  make(chan SessionEvent, EventBuffer),
		done:    make(chan struct{}),
	}
	go s.receive(ctx)
	return s, nil
}

// Load loads model, evicting idle models if the budget needs it, and returns once it is loaded.
// An unknown model is IsNotFound, one that cannot fit IsResourceExhausted, one that fails to
// load IsFailedPrecondition.
func (s *VRAMSession) Load(ctx context.Context, model string) error {
	_, err := s.do(ctx, &pb.ManageVRAMRequest{Command: &pb.ManageVRAMRequest_Load{
		Load: &pb.LoadModelCommand{Model: model}}})
	return err
}

// Unload unloads model, pinned or not, once it is idle.
func (s *VRAMSession) Unload(ctx context.Context, model string) error {
	_, err := s.do(ctx, &pb.ManageVRAMRequest{Command: &pb.ManageVRAMRequest_Unload{
		Unload: &pb.UnloadModelCommand{Model: model}}})
	return err
}

// Pin keeps model loaded, never evicted, until it is unpinned or named in an Unload.
func (s *VRAMSession) Pin(ctx context.Context, model string) error {
	_, err := s.do(ctx, &pb.ManageVRAMRequest{Command: &pb.ManageVRAMRequest_Pin{
		Pin: &pb.PinModelCommand{Model: model}}})
	return err
}

// Unpin makes model evictable again.
func (s *VRAMSession) Unpin(ctx context.Context, model string) error {
	_, err := s.do(ctx, &pb.ManageVRAMRequest{Command: &pb.ManageVRAMRequest_Unpin{
		Unpin: &pb.UnpinModelCommand{Model: model}}})
	return err
}

// SetKeepAlive sets how long model stays loaded once idle: 0 unloads it as soon as it is idle,
// a negative d keeps it loaded forever.
func (s *VRAMSession) SetKeepAlive(ctx context.Context, model string, d time.Duration) error {
	_, err := s.do(ctx, &pb.ManageVRAMRequest{Command: &pb.ManageVRAMRequest_SetKeepAlive{
		SetKeepAlive: &pb.SetKeepAliveCommand{Model: model, KeepAlive: durationpb.New(d)}}})
	return err
}

// Status returns the memory picture now, as Client.MemoryStats does.
func (s *VRAMSession) Status(ctx context.Context) (*MemorySnapshot, error) {
	res, err := s.do(ctx, &pb.ManageVRAMRequest{Command: &pb.ManageVRAMRequest_GetStatus{
		GetStatus: &pb.GetStatusCommand{}}})
	if err != nil {
		return nil, err
	}
	if res.GetSnapshot() == nil {
		return nil, fmt.Errorf("maistro: %w: status without a snapshot", ErrBadResponse)
	}
	return memorySnapshotFromProto(res.GetSnapshot()), nil
}

// Subscribe asks the server to push a memory snapshot every interval to Events; zero stops
// them. The server rejects a negative interval (IsInvalidArgument).
func (s *VRAMSession) Subscribe(ctx context.Context, interval time.Duration) error {
	_, err := s.do(ctx, &pb.ManageVRAMRequest{Command: &pb.ManageVRAMRequest_Subscribe{
		Subscribe: &pb.SubscribeCommand{SnapshotInterval: durationpb.New(interval)}}})
	return err
}

// Events delivers what the server pushes, in order: model events, whoever caused them, and the
// snapshots asked for with Subscribe. The channel is closed when the session ends, once the
// events received before the end have been taken; Err then says why.
//
// The session never waits for the consumer, so that command answers keep flowing: it holds up
// to EventBuffer events, and when a new one finds the buffer full it drops the oldest snapshot
// held (the newer ones supersede it), or, when it holds no snapshot, the oldest model event.
// A consumer that does not want events need not read the channel.
func (s *VRAMSession) Events() <-chan SessionEvent {
	return s.events
}

// Err returns why the session ended: nil while it is open, ErrSessionClosed after Close or a
// clean end by the server, or the stream's error (an *Error) when it failed.
func (s *VRAMSession) Err() error {
	select {
	case <-s.done:
		return s.err // written before done was closed
	default:
		return nil
	}
}

// Close ends the session: commands in flight and later ones return ErrSessionClosed, and Events
// is closed once the consumer has taken the events it still holds. It waits for the session's
// goroutine to end, may be called more than once, and always returns nil.
func (s *VRAMSession) Close() error {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	s.cancel()
	<-s.done
	return nil
}

// do sends one command with a fresh id and waits for its answer, which it returns; an answer
// that is not ok becomes an *Error.
func (s *VRAMSession) do(ctx context.Context, req *pb.ManageVRAMRequest) (*pb.CommandResult, error) {
	ctx, cancel := s.client.callContext(ctx)
	defer cancel()

	id := strconv.FormatUint(s.nextID.Add(1), 10)
	req.CommandId = id
	answer := make(chan *pb.CommandResult, 1)
	s.mu.Lock()
	if s.err != nil || s.closed {
		err := s.err
		s.mu.Unlock()
		if err == nil {
			err = ErrSessionClosed
		}
		return nil, err
	}
	s.pending[id] = answer
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.pending, id)
		s.mu.Unlock()
	}()

	if ctx.Err() != nil {
		return nil, contextError(ctx)
	}
	s.sendMu.Lock()
	err := s.stream.Send(req)
	s.sendMu.Unlock()
	if err != nil {
		// A failed Send ends the stream (io.EOF: it had ended already), and the receiving
		// goroutine learns why from Recv.
		select {
		case <-s.done:
			return nil, s.err
		case <-ctx.Done():
			return nil, contextError(ctx)
		}
	}

	select {
	case res := <-answer:
		return res, resultError(res)
	case <-s.done:
		select {
		case res := <-answer: // answered just before the end
			return res, resultError(res)
		default:
			return nil, s.err
		}
	case <-ctx.Done():
		return nil, contextError(ctx)
	}
}

// contextError is the error of a command whose ctx ended: an *Error, CANCELLED or
// DEADLINE_EXCEEDED, as a call cancelled by its context gets.
func contextError(ctx context.Context) error {
	return fromRPC(status.FromContextError(ctx.Err()).Err())
}

// resultError turns an answer that is not ok into an *Error, its code taken from error_code.
func resultError(r *pb.CommandResult) error {
	if r.GetOk() {
		return nil
	}
	code, ok := codeByName[r.GetErrorCode()]
	if !ok || code == codes.OK {
		code = codes.Unknown
	}
	return &Error{Code: code, Message: r.GetErrorMessage()}
}

// receive reads the stream until it ends: answers go to the commands that wait for them,
// everything else to Events. Then it records why the stream ended, which fails the commands
// still waiting, and closes Events.
func (s *VRAMSession) receive(ctx context.Context) {
	defer close(s.events)
	var err error
	for {
		var m *pb.ManageVRAMResponse
		if m, err = s.stream.Recv(); err != nil {
			break
		}
		switch p := m.GetPayload().(type) {
		case *pb.ManageVRAMResponse_Result:
			s.mu.Lock()
			answer := s.pending[p.Result.GetCommandId()]
			delete(s.pending, p.Result.GetCommandId())
			s.mu.Unlock()
			if answer != nil { // nil: a command that gave up, or an id that was never sent
				answer <- p.Result
			}
		case *pb.ManageVRAMResponse_Event:
			s.publish(SessionEvent{Event: modelEventFromProto(p.Event)})
		case *pb.ManageVRAMResponse_Snapshot:
			s.publish(SessionEvent{Snapshot: memorySnapshotFromProto(p.Snapshot)})
		}
		// Anything else is a payload added to the proto after this client was built.
	}

	s.mu.Lock()
	switch {
	case s.closed || errors.Is(err, io.EOF):
		s.err = ErrSessionClosed
	case ctx.Err() != nil && codeOf(err) == codes.Canceled:
		s.err = ErrSessionClosed // OpenVRAMSession's context was cancelled: as Close
	default:
		s.err = fromRPC(err)
	}
	s.mu.Unlock()
	close(s.done)
}

// publish hands ev to Events without ever blocking (see Events). Only receive sends on the
// channel, so once it has taken every event out, putting at most EventBuffer back cannot block,
// even while the consumer takes some meanwhile.
func (s *VRAMSession) publish(ev SessionEvent) {
	select {
	case s.events <- ev:
		return
	default:
	}
	held := make([]SessionEvent, 0, EventBuffer+1)
drain:
	for {
		select {
		case e := <-s.events:
			held = append(held, e)
		default:
			break drain
		}
	}
	held = append(held, ev)
	if len(held) > EventBuffer {
		drop := slices.IndexFunc(held, func(e SessionEvent) bool { return e.Snapshot != nil })
		if drop < 0 {
			drop = 0
		}
		held = slices.Delete(held, drop, drop+1)
	}
	for _, e := range held {
		s.events <- e
	}
}

// ---------------------------------------------------------------------------------------------
// Conversions from inference.v1
// ---------------------------------------------------------------------------------------------

func modelEventFromProto(m *pb.ModelEvent) *ModelEvent {
	return &ModelEvent{
		Model:       m.GetModel(),
		Kind:        modelEventKindFromProto(m.GetKind()),
		Reason:      m.GetReason(),
		MemoryBytes: m.GetMemoryBytes(),
		At:          timeFromProto(m.GetAt()),
	}
}

func modelEventKindFromProto(k pb.ModelEventKind) ModelEventKind {
	switch k {
	case pb.ModelEventKind_MODEL_EVENT_KIND_UNSPECIFIED:
		return ""
	case pb.ModelEventKind_MODEL_EVENT_KIND_LOADED:
		return ModelLoaded
	case pb.ModelEventKind_MODEL_EVENT_KIND_UNLOADED:
		return ModelUnloaded
	case pb.ModelEventKind_MODEL_EVENT_KIND_EVICTED:
		return ModelEvicted
	case pb.ModelEventKind_MODEL_EVENT_KIND_LOAD_FAILED:
		return ModelLoadFailed
	}
	// A kind added to the proto after this client was built: keep its name rather than drop it.
	return ModelEventKind(strings.ToLower(strings.TrimPrefix(k.String(), "MODEL_EVENT_KIND_")))
}
