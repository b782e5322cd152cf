package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/inference-platform/maistro/client"
	pb "github.com/inference-platform/maistro/internal/gen/inference"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// The fake server's memory: fakeSnapshot at fakeNow. A control session answers every command
// (after a model event for load and unload), or, with err set, answers it with err's code and
// message; subscribe with an interval pushes one evicted event and one snapshot.
var fakeNow = time.Date(2025, 11, 25, 12, 0, 0, 0, time.UTC)

func fakeSnapshot() *pb.MemorySnapshot {
	return &pb.MemorySnapshot{
		Devices: []*pb.DeviceMemory{{Device: "gpu:0", TotalBytes: 80 << 30, UsedBytes: 3 << 30, FreeBytes: 77 << 30}},
		Models: []*pb.ModelMemory{
			{
				Model: "llm", State: pb.ModelState_MODEL_STATE_LOADED, MemoryBytes: 2 << 30, MemorySource: "measured",
				Pinned: true, InFlight: 1, LastUsed: timestamppb.New(fakeNow.Add(-30 * time.Second)),
				ExpiresAt: timestamppb.New(fakeNow.Add(270 * time.Second)),
			},
			{
				Model: "embedding", State: pb.ModelState_MODEL_STATE_LOADED, MemoryBytes: 90 << 20, MemorySource: "metric",
				LastUsed: timestamppb.New(fakeNow.Add(-5 * time.Second)),
			},
			{Model: "image", State: pb.ModelState_MODEL_STATE_FAILED, Reason: "out of memory"},
		},
		BudgetBytes: 70 << 30,
		TakenAt:     timestamppb.New(fakeNow),
	}
}

func (f *fakeServer) memoryStats(context.Context, *pb.GetMemoryStatsRequest) (*pb.GetMemoryStatsResponse, error) {
	if f.err != nil {
		return nil, f.err
	}
	return &pb.GetMemoryStatsResponse{Snapshot: fakeSnapshot()}, nil
}

func (f *fakeServer) clearMemory(_ context.Context, req *pb.ClearMemoryRequest) (*pb.ClearMemoryResponse, error) {
	f.mu.Lock()
	f.lastClear = req
	f.mu.Unlock()
	if f.err != nil {
		return nil, f.err
	}
	return &pb.ClearMemoryResponse{
		UnloadedModels: []string{"embedding", "image"}, SkippedModels: []string{"llm (pinned)"}, FreedBytes: 3 << 29,
	}, nil
}

func (f *fakeServer) manageVRAM(s grpc.BidiStreamingServer[pb.ManageVRAMRequest, pb.ManageVRAMResponse]) error {
	for {
		req, err := s.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		f.mu.Lock()
		f.vramCommands = append(f.vramCommands, req)
		f.mu.Unlock()

		result := &pb.CommandResult{CommandId: req.GetCommandId(), Ok: f.err == nil}
		if f.err != nil {
			result.ErrorCode = client.CodeName(status.Code(f.err))
			result.ErrorMessage = status.Convert(f.err).Message()
		}
		var msgs []*pb.ManageVRAMResponse
		at := timestamppb.New(fakeNow)
		switch {
		case f.err != nil:
		case req.GetLoad() != nil:
			msgs = append(msgs, eventMsg(&pb.ModelEvent{
				Model: req.GetLoad().GetModel(), Kind: pb.ModelEventKind_MODEL_EVENT_KIND_LOADED, MemoryBytes: 2 << 30, At: at,
			}))
		case req.GetUnload() != nil:
			msgs = append(msgs, eventMsg(&pb.ModelEvent{
				Model: req.GetUnload().GetModel(), Kind: pb.ModelEventKind_MODEL_EVENT_KIND_UNLOADED, MemoryBytes: 2 << 30, At: at,
			}))
		case req.GetGetStatus() != nil:
			result.Snapshot = fakeSnapshot()
		}
		msgs = append(msgs, &pb.ManageVRAMResponse{Payload: &pb.ManageVRAMResponse_Result{Result: result}})
		if f.err == nil && req.GetSubscribe().GetSnapshotInterval().AsDuration() > 0 {
			msgs = append(msgs,
				eventMsg(&pb.ModelEvent{
					Model: "embedding", Kind: pb.ModelEventKind_MODEL_EVENT_KIND_EVICTED, Reason: "evicted to load llm",
					MemoryBytes: 90 << 20, At: at,
				}),
				&pb.ManageVRAMResponse{Payload: &pb.ManageVRAMResponse_Snapshot{Snapshot: fakeSnapshot()}})
		}
		for _, m := range msgs {
			if err := s.Send(m); err != nil {
				return err
			}
		}
	}
}

func eventMsg(e *pb.ModelEvent) *pb.ManageVRAMResponse {
	return &pb.ManageVRAMResponse{Payload: &pb.ManageVRAMResponse_Event{Event: e}}
}

// fixClock makes the CLI's clock read fakeNow for the test.
func fixClock(t *testing.T) {
	t.Helper()
	now = func() time.Time { return fakeNow }
	t.Cleanup(func() { now = time.Now })
}

const wantStats = `DEVICE  TOTAL     USED     FREE
gpu:0   80.0 GiB  3.0 GiB  77.0 GiB

MODEL      STATE   MEMORY              PINNED  IN-FLIGHT  LAST USED  EXPIRES   REASON
llm        loaded  2.0 GiB (measured)  yes     1          30s ago    in 4m30s
embedding  loaded  90.0 MiB (metric)   no      0          5s ago     never
image      failed  -                   no      0          -          -         out of memory

budget: 70.0 GiB (2.1 GiB held by models)
`

func TestMemoryCommands(t *testing.T) {
	notFound := status.Error(codes.NotFound, `model "x" is not known`)
	tests := []struct {
		name       string
		args       []string // --address is prepended
		serverErr  error
		wantCode   int
		wantStdout string
		wantStderr string // substring; "" means stderr must be empty
	}{
		{name: "stats prints the devices, the models and the budget", args: []string{"stats"}, wantStdout: wantStats},
		{
			name:       "clear prints what was unloaded, skipped and freed",
			args:       []string{"clear"},
			wantStdout: "unloaded: embedding, image\nskipped: llm (pinned)\nfreed: 1.5 GiB\n",
		},
		{name: "vram load", args: []string{"vram", "load", "llm"}, wantStdout: "loaded llm\n"},
		{name: "vram unload", args: []string{"vram", "unload", "llm"}, wantStdout: "unloaded llm\n"},
		{name: "vram pin", args: []string{"vram", "pin", "llm"}, wantStdout: "pinned llm\n"},
		{name: "vram unpin", args: []string{"vram", "unpin", "llm"}, wantStdout: "unpinned llm\n"},
		{
			name:       "vram keep-alive",
			args:       []string{"vram", "keep-alive", "llm", "90s"},
			wantStdout: "keep-alive of llm set to 1m30s\n",
		},
		{
			name:       "vram keep-alive forever",
			args:       []string{"vram", "keep-alive", "llm", "forever"},
			wantStdout: "keep-alive of llm set to forever\n",
		},
		{
			name:       "vram keep-alive negative after --",
			args:       []string{"vram", "keep-alive", "--", "llm", "-1s"},
			wantStdout: "keep-alive of llm set to forever\n",
		},
		{
			name:       "vram keep-alive rejects a bad duration",
			args:       []string{"vram", "keep-alive", "llm", "soon"},
			wantCode:   1,
			wantStderr: `error: keep-alive "soon": want a duration`,
		},
		{
			name:       "vram load error result is printed with its code and message",
			args:       []string{"vram", "load", "x"},
			serverErr:  notFound,
			wantCode:   1,
			wantStderr: "error: NOT_FOUND: model \"x\" is not known\n",
		},
		{
			name:       "stats server error",
			args:       []string{"stats"},
			serverErr:  status.Error(codes.Unavailable, "Triton is down"),
			wantCode:   1,
			wantStderr: "error: UNAVAILABLE: Triton is down\n",
		},
		{
			name:       "clear server error",
			args:       []string{"clear"},
			serverErr:  status.Error(codes.Unavailable, "Triton is down"),
			wantCode:   1,
			wantStderr: "error: UNAVAILABLE: Triton is down\n",
		},
		{
			name:       "vram load needs a model",
			args:       []string{"vram", "load"},
			wantCode:   1,
			wantStderr: "error: accepts 1 arg(s), received 0",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fixClock(t)
			addr := serve(t, &fakeServer{err: tt.serverErr})
			code, stdout, stderr := run(t, append([]string{"--address", addr}, tt.args...)...)
			if code != tt.wantCode {
				t.Errorf("exit code %d, want %d (stderr %q)", code, tt.wantCode, stderr)
			}
			if tt.wantCode == 0 && stdout != tt.wantStdout {
				t.Errorf("stdout\n%s\nwant\n%s", stdout, tt.wantStdout)
			}
			if tt.wantStderr == "" && stderr != "" {
				t.Errorf("stderr %q, want nothing", stderr)
			}
			if !strings.Contains(stderr, tt.wantStderr) {
				t.Errorf("stderr %q, want it to contain %q", stderr, tt.wantStderr)
			}
		})
	}
}

func TestMemoryCommandsJSON(t *testing.T) {
	forever := time.Duration(-1)
	tests := []struct {
		name string
		args []string // --json and --address are prepended
		into func() any
		want any
	}{
		{
			name: "stats prints the snapshot",
			args: []string{"stats"},
			into: func() any { return new(client.MemorySnapshot) },
			want: &client.MemorySnapshot{
				Devices: []client.DeviceMemory{{Device: "gpu:0", TotalBytes: 80 << 30, UsedBytes: 3 << 30, FreeBytes: 77 << 30}},
				Models: []client.ModelMemory{
					{
						Model: "llm", State: client.ModelStateLoaded, MemoryBytes: 2 << 30, MemorySource: client.MemorySourceMeasured,
						Pinned: true, InFlight: 1, LastUsed: fakeNow.Add(-30 * time.Second), ExpiresAt: fakeNow.Add(270 * time.Second),
					},
					{
						Model: "embedding", State: client.ModelStateLoaded, MemoryBytes: 90 << 20, MemorySource: client.MemorySourceMetric,
						LastUsed: fakeNow.Add(-5 * time.Second),
					},
					{Model: "image", State: client.ModelStateFailed, Reason: "out of memory"},
				},
				BudgetBytes: 70 << 30,
				TakenAt:     fakeNow,
			},
		},
		{
			name: "clear prints the result",
			args: []string{"clear"},
			into: func() any { return new(client.ClearResult) },
			want: &client.ClearResult{Unloaded: []string{"embedding", "image"}, Skipped: []string{"llm (pinned)"}, FreedBytes: 3 << 29},
		},
		{
			name: "vram load",
			args: []string{"vram", "load", "llm"},
			into: func() any { return new(vramResult) },
			want: &vramResult{Command: "load", Model: "llm", OK: true},
		},
		{
			name: "vram keep-alive",
			args: []string{"vram", "keep-alive", "llm", "forever"},
			into: func() any { return new(vramResult) },
			want: &vramResult{Command: "keep-alive", Model: "llm", OK: true, KeepAlive: &forever},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			addr := serve(t, &fakeServer{})
			code, stdout, stderr := run(t, append([]string{"--json", "--address", addr}, tt.args...)...)
			if code != 0 {
				t.Fatalf("exit code %d: %s", code, stderr)
			}
			if strings.Count(stdout, "\n") != 1 || !strings.HasSuffix(stdout, "\n") {
				t.Errorf("stdout is not one line:\n%s", stdout)
			}
			got := tt.into()
			dec := json.NewDecoder(strings.NewReader(stdout))
			dec.DisallowUnknownFields()
			if err := dec.Decode(got); err != nil {
				t.Fatalf("%q: %v", stdout, err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got %+v\nwant %+v", got, tt.want)
			}
		})
	}
}

func TestMemoryCommandsSendTheirRequest(t *testing.T) {
	tests := []struct {
		name      string
		args      []string
		wantClear *pb.ClearMemoryRequest
		wantVRAM  *pb.ManageVRAMRequest // without command_id
	}{
		{name: "clear defaults", args: []string{"clear"}, wantClear: &pb.ClearMemoryRequest{}},
		{
			name:      "clear with every flag",
			args:      []string{"clear", "--include-pinned", "--wait", "10s"},
			wantClear: &pb.ClearMemoryRequest{IncludePinned: true, WaitForIdle: durationpb.New(10 * time.Second)},
		},
		{
			name:     "vram load",
			args:     []string{"vram", "load", "llm"},
			wantVRAM: &pb.ManageVRAMRequest{Command: &pb.ManageVRAMRequest_Load{Load: &pb.LoadModelCommand{Model: "llm"}}},
		},
		{
			name:     "vram unload",
			args:     []string{"vram", "unload", "embedding"},
			wantVRAM: &pb.ManageVRAMRequest{Command: &pb.ManageVRAMRequest_Unload{Unload: &pb.UnloadModelCommand{Model: "embedding"}}},
		},
		{
			name:     "vram pin",
			args:     []string{"vram", "pin", "llm"},
			wantVRAM: &pb.ManageVRAMRequest{Command: &pb.ManageVRAMRequest_Pin{Pin: &pb.PinModelCommand{Model: "llm"}}},
		},
		{
			name:     "vram unpin",
			args:     []string{"vram", "unpin", "llm"},
			wantVRAM: &pb.ManageVRAMRequest{Command: &pb.ManageVRAMRequest_Unpin{Unpin: &pb.UnpinModelCommand{Model: "llm"}}},
		},
		{
			name: "vram keep-alive",
			args: []string{"vram", "keep-alive", "llm", "5m"},
			wantVRAM: &pb.ManageVRAMRequest{Command: &pb.ManageVRAMRequest_SetKeepAlive{SetKeepAlive: &pb.SetKeepAliveCommand{
				Model: "llm", KeepAlive: durationpb.New(5 * time.Minute)}}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := &fakeServer{}
			addr := serve(t, srv)
			if code, _, stderr := run(t, append([]string{"--address", addr}, tt.args...)...); code != 0 {
				t.Fatalf("exit code %d: %s", code, stderr)
			}
			srv.mu.Lock()
			defer srv.mu.Unlock()
			if tt.wantClear != nil && !proto.Equal(srv.lastClear, tt.wantClear) {
				t.Errorf("server got %v, want %v", srv.lastClear, tt.wantClear)
			}
			if tt.wantVRAM != nil {
				if len(srv.vramCommands) != 1 {
					t.Fatalf("server got %d commands, want 1: %v", len(srv.vramCommands), srv.vramCommands)
				}
				got := proto.Clone(srv.vramCommands[0]).(*pb.ManageVRAMRequest)
				if got.GetCommandId() == "" {
					t.Error("command without an id")
				}
				got.CommandId = ""
				if !proto.Equal(got, tt.wantVRAM) {
					t.Errorf("server got %v, want %v", got, tt.wantVRAM)
				}
			}
		})
	}
}

// lineWriter collects output from the CLI's goroutine and closes enough once it holds n lines.
type lineWriter struct {
	mu     sync.Mutex
	buf    bytes.Buffer
	n      int
	enough chan struct{}
}

func (w *lineWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	n, err := w.buf.Write(p)
	if w.n > 0 && strings.Count(w.buf.String(), "\n") >= w.n {
		close(w.enough)
		w.n = 0
	}
	return n, err
}

func (w *lineWriter) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.String()
}

func TestVRAMWatchPrintsEventsAndSnapshotsUntilInterrupted(t *testing.T) {
	fixClock(t)
	clk := fakeNow.Local().Format("15:04:05")
	snapshotText := clk + "  snapshot     gpu:0 3.0 GiB/80.0 GiB  budget 2.1 GiB/70.0 GiB  " +
		"llm loaded 2.0 GiB pinned 1 in flight  embedding loaded 90.0 MiB  image failed"
	tests := []struct {
		name  string
		json  bool
		check func(t *testing.T, lines []string)
	}{
		{
			name: "text",
			check: func(t *testing.T, lines []string) {
				want := []string{
					snapshotText, // the picture at the start
					clk + "  evicted      embedding  90.0 MiB  (evicted to load llm)",
					snapshotText,
				}
				if !reflect.DeepEqual(lines, want) {
					t.Errorf("lines\n%s\nwant\n%s", strings.Join(lines, "\n"), strings.Join(want, "\n"))
				}
			},
		},
		{
			name: "json",
			json: true,
			check: func(t *testing.T, lines []string) {
				var got []string
				for _, l := range lines {
					var ev client.SessionEvent
					dec := json.NewDecoder(strings.NewReader(l))
					dec.DisallowUnknownFields()
					if err := dec.Decode(&ev); err != nil {
						t.Fatalf("%q: %v", l, err)
					}
					switch {
					case ev.Event != nil:
						got = append(got, string(ev.Event.Kind)+" "+ev.Event.Model+" "+ev.Event.Reason)
					case ev.Snapshot != nil:
						got = append(got, "snapshot "+ev.Snapshot.Models[0].Model)
					}
				}
				want := []string{"snapshot llm", "evicted embedding evicted to load llm", "snapshot llm"}
				if !reflect.DeepEqual(got, want) {
					t.Errorf("got %q, want %q", got, want)
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := &fakeServer{}
			addr := serve(t, srv)
			for _, k := range []string{client.EnvAddress, client.EnvAPIKey, client.EnvSecure} {
				t.Setenv(k, "")
			}
			args := []string{"vram", "watch", "--address", addr, "--interval", "1s"}
			if tt.json {
				args = append(args, "--json")
			}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			stdout := &lineWriter{n: 3, enough: make(chan struct{})}
			var stderr bytes.Buffer
			code := make(chan int, 1)
			go func() { code <- Run(ctx, args, strings.NewReader(""), stdout, &stderr) }()

			select {
			case <-stdout.enough:
			case c := <-code:
				t.Fatalf("watch ended with %d before printing 3 lines: %q %q", c, stdout.String(), stderr.String())
			case <-time.After(5 * time.Second):
				t.Fatalf("watch printed %q", stdout.String())
			}
			cancel() // Ctrl-C
			select {
			case c := <-code:
				if c != 0 {
					t.Errorf("exit code %d after Ctrl-C, want 0 (stderr %q)", c, stderr.String())
				}
			case <-time.After(5 * time.Second):
				t.Fatal("watch did not end after Ctrl-C")
			}
			tt.check(t, strings.Split(strings.TrimSuffix(stdout.String(), "\n"), "\n"))

			srv.mu.Lock()
			defer srv.mu.Unlock()
			if len(srv.vramCommands) != 2 || srv.vramCommands[0].GetGetStatus() == nil ||
				srv.vramCommands[1].GetSubscribe().GetSnapshotInterval().AsDuration() != time.Second {
				t.Errorf("server got %v, want get_status then subscribe 1s", srv.vramCommands)
			}
		})
	}
}

func TestVRAMWatchEndsWithTheSessionsError(t *testing.T) {
	addr := serve(t, &fakeServer{err: status.Error(codes.Unavailable, "Triton is down")})
	code, _, stderr := run(t, "vram", "watch", "--address", addr)
	if code != 1 || !strings.Contains(stderr, "error: UNAVAILABLE: Triton is down") {
		t.Errorf("exit code %d, stderr %q", code, stderr)
	}
}

func TestHumanBytes(t *testing.T) {
	tests := []struct {
		in   uint64
		want string
	}{
		{0, "0 B"},
		{1023, "1023 B"},
		{1024, "1.0 KiB"},
		{1536, "1.5 KiB"},
		{90 << 20, "90.0 MiB"},
		{3 << 29, "1.5 GiB"},
		{80 << 30, "80.0 GiB"},
		{2 << 40, "2.0 TiB"},
		{5 << 50, "5.0 PiB"},
		{1 << 62, "4096.0 PiB"},
	}
	for _, tt := range tests {
		if got := humanBytes(tt.in); got != tt.want {
			t.Errorf("humanBytes(%d) = %q, want %q", tt.in, got, tt.want)
		}
	}
}
