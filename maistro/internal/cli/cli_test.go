package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/inference-platform/maistro/client"
	"github.com/inference-platform/maistro/internal/fakeserver"
	pb "github.com/inference-platform/maistro/internal/gen/inference"
	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// fakeServer is the CLI tests' model of a server, served as a fakeserver.Server by serve: it
// answers every chat and generate with the same reply, every embed with embedDim values per
// input, image jobs as image_test.go describes and the memory RPCs as memory_test.go does, or
// with err when it is set; it remembers the last request.
type fakeServer struct {
	err error
	// chatReply, when set, replaces reply as the chat's text deltas.
	chatReply []string
	// toolCalls, when set, follow the chat's text: one chunk per element, then the last chunk
	// with finish reason TOOL_CALLS.
	toolCalls [][]*pb.ToolCallDelta
	// jobFailure, when set, makes every image job fail with this message.
	jobFailure string

	mu            sync.Mutex
	lastChat      *pb.ChatStreamRequest
	lastGen       *pb.GenerateStreamRequest
	lastEmbed     *pb.GetEmbeddingRequest
	lastGenImage  *pb.GenerateImageRequest
	lastEditImage *pb.EditImageRequest
	numImages     int32 // of the last job submitted
	statusCalls   int
	lastClear     *pb.ClearMemoryRequest
	vramCommands  []*pb.ManageVRAMRequest
}

// embedDim is the fake embedding model's dimension: more than the CLI previews.
const embedDim = 8

var reply = []string{"Hello", ", ", "world"}

func (f *fakeServer) chat(req *pb.ChatStreamRequest, s grpc.ServerStreamingServer[pb.ChatStreamResponse]) error {
	f.mu.Lock()
	f.lastChat = req
	f.mu.Unlock()
	if f.err != nil {
		return f.err
	}
	text := reply
	if f.chatReply != nil {
		text = f.chatReply
	}
	for _, d := range text {
		if err := s.Send(&pb.ChatStreamResponse{Model: req.GetModel(), Delta: d}); err != nil {
			return err
		}
	}
	finish := pb.FinishReason_FINISH_REASON_STOP
	for _, calls := range f.toolCalls {
		if err := s.Send(&pb.ChatStreamResponse{Model: req.GetModel(), ToolCalls: calls}); err != nil {
			return err
		}
		finish = pb.FinishReason_FINISH_REASON_TOOL_CALLS
	}
	return s.Send(&pb.ChatStreamResponse{
		Model: req.GetModel(), Done: true, FinishReason: finish,
		Usage: &pb.Usage{PromptTokens: 3, CompletionTokens: 3, TotalTokens: 6},
	})
}

func (f *fakeServer) generate(req *pb.GenerateStreamRequest, s grpc.ServerStreamingServer[pb.GenerateStreamResponse]) error {
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

// embed gives input i the vector (i+1)*[0.5, -0.25, 0.125, ...], halving and flipping
// the sign at each step, and counts one token per word.
func (f *fakeServer) embed(_ context.Context, req *pb.GetEmbeddingRequest) (*pb.GetEmbeddingResponse, error) {
	f.mu.Lock()
	f.lastEmbed = req
	f.mu.Unlock()
	if f.err != nil {
		return nil, f.err
	}
	resp := &pb.GetEmbeddingResponse{Model: req.GetModel(), Dimension: embedDim}
	total := int32(0)
	for i, in := range req.GetInputs() {
		v := make([]float32, embedDim)
		x := float32(i+1) * 0.5
		for j := range v {
			v[j] = x
			x /= -2
		}
		tokens := int32(len(strings.Fields(in)))
		total += tokens
		resp.Embeddings = append(resp.Embeddings, &pb.Embedding{
			Index: int32(i), Values: v, Tokens: tokens, Truncated: tokens > 3,
		})
	}
	resp.Usage = &pb.Usage{PromptTokens: total, TotalTokens: total}
	return resp, nil
}

// serve starts srv on a loopback TCP port (the CLI dials a real address) and returns it.
func serve(t *testing.T, srv *fakeServer) string {
	t.Helper()
	return fakeserver.ServeTCP(t, &fakeserver.Server{
		OnChat:          srv.chat,
		OnGenerate:      srv.generate,
		OnEmbed:         srv.embed,
		OnGenerateImage: srv.generateImage,
		OnEditImage:     srv.editImage,
		OnImageStatus:   srv.imageStatus,
		OnManageVRAM:    srv.manageVRAM,
		OnClearMemory:   srv.clearMemory,
		OnMemoryStats:   srv.memoryStats,
	})
}

// run runs the CLI and returns its exit code, stdout and stderr. The process environment must
// not redirect it elsewhere.
func run(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	return runWithInput(t, "", args...)
}

// runWithInput is run with stdin reading input.
func runWithInput(t *testing.T, input string, args ...string) (int, string, string) {
	t.Helper()
	for _, k := range []string{client.EnvAddress, client.EnvAPIKey, client.EnvSecure,
		client.EnvCAFile, client.EnvCertFile, client.EnvKeyFile, client.EnvTLSServerName} {
		t.Setenv(k, "")
	}
	var stdout, stderr bytes.Buffer
	code := Run(context.Background(), args, strings.NewReader(input), &stdout, &stderr)
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
			name: "embed prints one line per input with the first values",
			args: []string{"embed", "hello world", "one two three four"},
			wantStdout: "[0] dim=8 tokens=2 truncated=false  0.5000 -0.2500 0.1250 -0.0625 0.0312 -0.0156 ...\n" +
				"[1] dim=8 tokens=4 truncated=true  1.0000 -0.5000 0.2500 -0.1250 0.0625 -0.0312 ...\n",
		},
		{
			name:       "embed verbose reports usage on stderr",
			args:       []string{"embed", "--verbose", "hello world"},
			wantStdout: "[0] dim=8 tokens=2 truncated=false  0.5000 -0.2500 0.1250 -0.0625 0.0312 -0.0156 ...\n",
			wantStderr: "model=embedding dimension=8 inputs=1 prompt_tokens=2 total_tokens=2",
		},
		{
			name:       "embed server error is printed with its code and message",
			args:       []string{"embed", "--model", "x", "hello"},
			serverErr:  status.Error(codes.NotFound, `model "x" is not known`),
			wantCode:   1,
			wantStderr: "error: NOT_FOUND: model \"x\" is not known\n",
		},
		{
			name:       "embed needs an input",
			args:       []string{"embed"},
			wantCode:   1,
			wantStderr: "error: requires at least 1 arg",
		},
		{
			name:       "a message is required",
			args:       []string{"chat"},
			wantCode:   1,
			wantStderr: "error: no message",
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

func TestChatConversations(t *testing.T) {
	tests := []struct {
		name       string
		args       []string // after --address ADDR chat
		input      string   // standard input
		serverErr  error
		wantCode   int
		wantStdout string
		wantStderr []string // substrings
		wantLast   []string // role:content of the last request's messages
	}{
		{
			name: "a message on standard input is a one-shot chat", input: "Hello from a pipe\n",
			wantStdout: "Hello, world\n", wantLast: []string{"user:Hello from a pipe"},
		},
		{
			name: "-i holds a conversation and sends the history with each message",
			args: []string{"-i", "--system", "Be brief."}, input: "Hi\n\nHow are you?\n",
			wantStdout: "Hello, world\nHello, world\n",
			wantStderr: []string{">>> "},
			wantLast: []string{"system:Be brief.", "user:Hi", "assistant:Hello, world",
				"user:How are you?"},
		},
		{
			name: "-i with arguments opens with them",
			args: []string{"-i", "Opening", "line"}, input: "Next\n",
			wantStdout: "Hello, world\nHello, world\n",
			wantLast:   []string{"user:Opening line", "assistant:Hello, world", "user:Next"},
		},
		{
			name: "/reset forgets the conversation and /bye leaves",
			args: []string{"-i"}, input: "One\n/reset\nTwo\n/bye\nnot sent\n",
			wantStdout: "Hello, world\nHello, world\n",
			wantStderr: []string{"conversation forgotten"},
			wantLast:   []string{"user:Two"},
		},
		{
			name: "a server error in a conversation is printed and the conversation goes on",
			args: []string{"-i"}, input: "One\nTwo\n",
			serverErr:  status.Error(codes.Unauthenticated, "missing API key"),
			wantStderr: []string{"error: UNAUTHENTICATED: missing API key\n>>> ", "error: UNAUTHENTICATED"},
			wantLast:   []string{"user:Two"}, // One failed, so it is not history
		},
		{
			name: "a server error in a one-shot chat exits 1", input: "Hello\n",
			serverErr: status.Error(codes.Unauthenticated, "missing API key"), wantCode: 1,
			wantStderr: []string{"error: UNAUTHENTICATED: missing API key"},
		},
		{
			name: "--json in a conversation prints JSON lines only on stdout",
			args: []string{"-i", "--json"}, input: "Hi\n",
			wantStderr: []string{">>> "},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := &fakeServer{err: tt.serverErr}
			addr := serve(t, srv)
			code, stdout, stderr := runWithInput(t, tt.input, append([]string{"--address", addr, "chat"}, tt.args...)...)
			if code != tt.wantCode {
				t.Errorf("exit code %d, want %d (stderr %q)", code, tt.wantCode, stderr)
			}
			if tt.wantStdout != "" && stdout != tt.wantStdout {
				t.Errorf("stdout %q, want %q", stdout, tt.wantStdout)
			}
			if slices.Contains(tt.args, "--json") {
				for l := range strings.SplitSeq(strings.TrimSpace(stdout), "\n") {
					if !json.Valid([]byte(l)) {
						t.Errorf("stdout line %q is not JSON", l)
					}
				}
			}
			for _, want := range tt.wantStderr {
				if !strings.Contains(stderr, want) {
					t.Errorf("stderr %q, want it to contain %q", stderr, want)
				}
			}
			if tt.wantLast != nil {
				srv.mu.Lock()
				var got []string
				for _, m := range srv.lastChat.GetMessages() {
					got = append(got, m.GetRole()+":"+m.GetContent())
				}
				srv.mu.Unlock()
				if !slices.Equal(got, tt.wantLast) {
					t.Errorf("last request's messages %q, want %q", got, tt.wantLast)
				}
			}
		})
	}
}

func TestEveryCommandHasHelp(t *testing.T) {
	var walk func(cmd *cobra.Command)
	var paths []string
	walk = func(cmd *cobra.Command) {
		if !cmd.Hidden {
			paths = append(paths, cmd.CommandPath())
		}
		for _, sub := range cmd.Commands() {
			walk(sub)
		}
	}
	walk(newRootCommand())
	for _, want := range []string{"maistro chat", "maistro generate", "maistro embed", "maistro image generate",
		"maistro image edit", "maistro image status", "maistro vram watch", "maistro vram load",
		"maistro vram unload", "maistro vram pin", "maistro vram unpin", "maistro stats", "maistro clear"} {
		if !slices.Contains(paths, want) {
			t.Errorf("no command %q (have %q)", want, paths)
		}
	}
	for _, path := range paths {
		t.Run(path, func(t *testing.T) {
			args := append(strings.Fields(path)[1:], "--help")
			code, stdout, stderr := run(t, args...)
			if code != 0 || stderr != "" {
				t.Fatalf("%s --help: exit %d, stderr %q", path, code, stderr)
			}
			if !strings.Contains(stdout, "Usage:") || !strings.Contains(stdout, "--json") {
				t.Errorf("%s --help does not show the usage and the global flags:\n%s", path, stdout)
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

func TestEmbedFlagsReachTheServer(t *testing.T) {
	tests := []struct {
		name          string
		args          []string // after "embed --address ADDR"
		wantModel     string
		wantInputs    []string
		wantNormalize bool
		wantKeepAlive *time.Duration
	}{
		{
			name:       "defaults",
			args:       []string{"hello world"},
			wantModel:  "embedding",
			wantInputs: []string{"hello world"},
		},
		{
			name:          "every flag",
			args:          []string{"--model", "other", "--normalize", "--keep-alive", "-1s", "a", "b c"},
			wantModel:     "other",
			wantInputs:    []string{"a", "b c"},
			wantNormalize: true,
			wantKeepAlive: new(-time.Second),
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := &fakeServer{}
			addr := serve(t, srv)
			if code, _, stderr := run(t, append([]string{"embed", "--address", addr}, tt.args...)...); code != 0 {
				t.Fatalf("exit code %d: %s", code, stderr)
			}
			srv.mu.Lock()
			req := srv.lastEmbed
			srv.mu.Unlock()
			if req.GetModel() != tt.wantModel || !reflect.DeepEqual(req.GetInputs(), tt.wantInputs) ||
				req.GetNormalize() != tt.wantNormalize {
				t.Errorf("server got %v", req)
			}
			switch {
			case tt.wantKeepAlive == nil && req.KeepAlive != nil:
				t.Errorf("keep_alive %v, want unset", req.KeepAlive)
			case tt.wantKeepAlive != nil && (req.KeepAlive == nil || req.KeepAlive.AsDuration() != *tt.wantKeepAlive):
				t.Errorf("keep_alive %v, want %v", req.KeepAlive, *tt.wantKeepAlive)
			}
		})
	}
}

func TestEmbedJSONIsTheWholeResult(t *testing.T) {
	addr := serve(t, &fakeServer{})
	code, stdout, stderr := run(t, "embed", "--json", "--address", addr, "hello world", "one two three four")
	if code != 0 {
		t.Fatalf("exit code %d: %s", code, stderr)
	}
	if strings.Count(stdout, "\n") != 1 || !strings.HasSuffix(stdout, "\n") {
		t.Errorf("stdout is not one line:\n%s", stdout)
	}
	var res client.EmbedResult
	dec := json.NewDecoder(strings.NewReader(stdout))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&res); err != nil {
		t.Fatalf("%q: %v", stdout, err)
	}
	if res.Model != "embedding" || res.Dimension != embedDim || len(res.Embeddings) != 2 ||
		res.Usage != (client.Usage{PromptTokens: 6, TotalTokens: 6}) {
		t.Fatalf("result %+v", res)
	}
	for i, e := range res.Embeddings {
		if e.Index != i || len(e.Vector) != embedDim || e.Vector[0] != float32(i+1)*0.5 || e.Vector[embedDim-1] >= 0 {
			t.Errorf("embedding %d: %+v", i, e)
		}
	}
	if !res.Embeddings[1].Truncated || res.Embeddings[1].Tokens != 4 {
		t.Errorf("embedding 1: %+v", res.Embeddings[1])
	}
	// The field names are part of the CLI's output format.
	for _, key := range []string{`"model":`, `"dimension":`, `"embeddings":`, `"vector":`, `"tokens":`, `"truncated":`, `"index":`, `"usage":`} {
		if !strings.Contains(stdout, key) {
			t.Errorf("stdout has no %s: %s", key, stdout)
		}
	}
}
