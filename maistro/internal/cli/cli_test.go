package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/inference-platform/maistro/client"
	pb "github.com/inference-platform/maistro/grpc/inference"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// fakeServer answers every chat and generate with the same reply, or with err when it is set,
// and remembers the last request.
type fakeServer struct {
	pb.UnimplementedInferenceServiceServer
	err error

	mu       sync.Mutex
	lastChat *pb.ChatStreamRequest
	lastGen  *pb.GenerateStreamRequest
}

var reply = []string{"Hello", ", ", "world"}

func (f *fakeServer) ChatStream(req *pb.ChatStreamRequest, s grpc.ServerStreamingServer[pb.ChatStreamResponse]) error {
	f.mu.Lock()
	f.lastChat = req
	f.mu.Unlock()
	if f.err != nil {
		return f.err
	}
	for _, d := range reply {
		if err := s.Send(&pb.ChatStreamResponse{Model: req.GetModel(), Delta: d}); err != nil {
			return err
		}
	}
	return s.Send(&pb.ChatStreamResponse{
		Model: req.GetModel(), Done: true, FinishReason: pb.FinishReason_FINISH_REASON_STOP,
		Usage: &pb.Usage{PromptTokens: 3, CompletionTokens: 3, TotalTokens: 6},
	})
}

func (f *fakeServer) GenerateStream(req *pb.GenerateStreamRequest, s grpc.ServerStreamingServer[pb.GenerateStreamResponse]) error {
	f.mu.Lock()
	f.lastGen = req
	f.mu.Unlock()
	if f.err != nil {
		return f.err
	}
	if err := s.Send(&pb.GenerateStreamResponse{Model: req.GetModel(), Delta: " there was"}); err != nil {
		return err
	}
	return s.Send(&pb.GenerateStreamResponse{
		Model: req.GetModel(), Delta: " a cat", Done: true, FinishReason: pb.FinishReason_FINISH_REASON_LENGTH,
		Usage: &pb.Usage{PromptTokens: 4, CompletionTokens: 2, TotalTokens: 6},
	})
}

// serve starts srv on a loopback TCP port (the CLI dials a real address) and returns it.
func serve(t *testing.T, srv *fakeServer) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	pb.RegisterInferenceServiceServer(gs, srv)
	go func() { _ = gs.Serve(lis) }()
	t.Cleanup(gs.Stop)
	return lis.Addr().String()
}

// run runs the CLI and returns its exit code, stdout and stderr. The process environment must
// not redirect it elsewhere.
func run(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	for _, k := range []string{client.EnvAddress, client.EnvAPIKey, client.EnvSecure} {
		t.Setenv(k, "")
	}
	var stdout, stderr bytes.Buffer
	code := Run(context.Background(), args, &stdout, &stderr)
	return code, stdout.String(), stderr.String()
}

func TestCommands(t *testing.T) {
	tests := []struct {
		name       string
		args       []string // --address is prepended
		serverErr  error
		wantCode   int
		wantStdout string
		wantStderr string // substring; "" means stderr must be empty
	}{
		{
			name:       "chat prints the reply and a newline",
			args:       []string{"chat", "Hello"},
			wantStdout: "Hello, world\n",
		},
		{
			name:       "generate prints the continuation and a newline",
			args:       []string{"generate", "Once upon a time"},
			wantStdout: " there was a cat\n",
		},
		{
			name:       "verbose reports usage on stderr",
			args:       []string{"chat", "--verbose", "Hello"},
			wantStdout: "Hello, world\n",
			wantStderr: "finish_reason=stop prompt_tokens=3 completion_tokens=3 total_tokens=6",
		},
		{
			name:       "server error is printed with its code and message",
			args:       []string{"chat", "--model", "x", "Hello"},
			serverErr:  status.Error(codes.NotFound, `model "x" is not known`),
			wantCode:   1,
			wantStderr: "error: NOT_FOUND: model \"x\" is not known\n",
		},
		{
			name:       "a message is required",
			args:       []string{"chat"},
			wantCode:   1,
			wantStderr: "error: requires at least 1 arg",
		},
		{
			name:       "a config file named on purpose must exist",
			args:       []string{"chat", "--config", filepath.Join(t.TempDir(), "absent.yaml"), "Hello"},
			wantCode:   1,
			wantStderr: "does not exist",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			addr := serve(t, &fakeServer{err: tt.serverErr})
			code, stdout, stderr := run(t, append([]string{"--address", addr}, tt.args...)...)
			if code != tt.wantCode {
				t.Errorf("exit code %d, want %d (stderr %q)", code, tt.wantCode, stderr)
			}
			if tt.wantCode == 0 && stdout != tt.wantStdout {
				t.Errorf("stdout %q, want %q", stdout, tt.wantStdout)
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

func TestFlagsReachTheServer(t *testing.T) {
	srv := &fakeServer{}
	addr := serve(t, srv)
	code, _, stderr := run(t, "chat", "--address", addr,
		"--model", "other", "--system", "Be brief.", "--max-tokens", "8", "--temperature", "0.5",
		"--top-p", "0.9", "--top-k", "40", "--seed", "1", "--stop", "a,b", "--stop", "END",
		"--keep-alive", "-1s", "Hello", "there")
	if code != 0 {
		t.Fatalf("exit code %d: %s", code, stderr)
	}
	srv.mu.Lock()
	req := srv.lastChat
	srv.mu.Unlock()

	if req.GetModel() != "other" {
		t.Errorf("model %q", req.GetModel())
	}
	msgs := req.GetMessages()
	if len(msgs) != 2 || msgs[0].GetRole() != "system" || msgs[0].GetContent() != "Be brief." ||
		msgs[1].GetRole() != "user" || msgs[1].GetContent() != "Hello there" {
		t.Errorf("messages %v", msgs)
	}
	o := req.GetOptions()
	if o.GetMaxTokens() != 8 || o.GetTemperature() != 0.5 || o.GetTopP() != 0.9 || o.GetTopK() != 40 || o.GetSeed() != 1 {
		t.Errorf("options %v", o)
	}
	if got := o.GetStop(); len(got) != 2 || got[0] != "a,b" || got[1] != "END" {
		t.Errorf("stop %q, want [\"a,b\" \"END\"] (no splitting on commas)", got)
	}
	if req.GetKeepAlive().AsDuration().Seconds() != -1 {
		t.Errorf("keep_alive %v", req.GetKeepAlive())
	}
}

func TestFlagsLeftOutStayUnset(t *testing.T) {
	srv := &fakeServer{}
	addr := serve(t, srv)
	if code, _, stderr := run(t, "generate", "--address", addr, "x"); code != 0 {
		t.Fatalf("exit code %d: %s", code, stderr)
	}
	srv.mu.Lock()
	req := srv.lastGen
	srv.mu.Unlock()
	o := req.GetOptions()
	if o.MaxTokens != nil || o.Temperature != nil || o.TopP != nil || o.TopK != nil || o.Seed != nil || req.KeepAlive != nil {
		t.Errorf("unset flags arrived set: options %v keep_alive %v", o, req.KeepAlive)
	}
	if req.GetModel() != "llm" {
		t.Errorf("default model %q, want llm", req.GetModel())
	}
}

func TestJSONOutputIsOneObjectPerLine(t *testing.T) {
	addr := serve(t, &fakeServer{})
	code, stdout, stderr := run(t, "chat", "--json", "--address", addr, "Hello")
	if code != 0 {
		t.Fatalf("exit code %d: %s", code, stderr)
	}
	lines := strings.Split(strings.TrimSuffix(stdout, "\n"), "\n")
	if len(lines) != len(reply)+2 { // each delta, the final chunk, the result
		t.Fatalf("%d lines, want %d:\n%s", len(lines), len(reply)+2, stdout)
	}
	for i, line := range lines[:len(lines)-1] {
		var ch client.ChatChunk
		if err := json.Unmarshal([]byte(line), &ch); err != nil {
			t.Fatalf("line %d %q: %v", i, line, err)
		}
		if i < len(reply) && ch.Delta != reply[i] {
			t.Errorf("line %d delta %q, want %q", i, ch.Delta, reply[i])
		}
	}
	var res client.ChatResult
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &res); err != nil {
		t.Fatal(err)
	}
	if res.Text != "Hello, world" || res.FinishReason != client.FinishReasonStop || res.Usage.TotalTokens != 6 {
		t.Errorf("result %+v", res)
	}
}
