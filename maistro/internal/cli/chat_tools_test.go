package cli

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/inference-platform/maistro/client"
	pb "github.com/inference-platform/maistro/internal/gen/inference"
	"google.golang.org/protobuf/proto"
)

const (
	personSchema = `{
  "type": "object",
  "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
  "required": ["name", "age"]
}`
	weatherParams = `{"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}`
)

// writeFile writes content to name in a new temporary directory and returns its path.
func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestChatReplyFlagsReachTheServer(t *testing.T) {
	schema := writeFile(t, "person.json", personSchema+"\n")
	bare := writeFile(t, "weather.json",
		`{"name": "get_weather", "description": "Weather in a city", "parameters": `+weatherParams+`}`)
	wrapped := writeFile(t, "now.json",
		`{"type": "function", "function": {"name": "now", "description": "The time", "parameters": null}}`)
	tests := []struct {
		name string
		args []string // before the message
		want *pb.ChatStreamRequest
	}{
		{
			name: "no reply flags leave the fields unset",
			want: &pb.ChatStreamRequest{},
		},
		{
			name: "--json-schema sends the file's schema, strict, named after the file",
			args: []string{"--json-schema", schema},
			want: &pb.ChatStreamRequest{ResponseFormat: &pb.ResponseFormat{
				Type: pb.ResponseFormat_TYPE_JSON_SCHEMA, JsonSchema: personSchema, Name: "person", Strict: true,
			}},
		},
		{
			name: "--json-object",
			args: []string{"--json-object"},
			want: &pb.ChatStreamRequest{ResponseFormat: &pb.ResponseFormat{Type: pb.ResponseFormat_TYPE_JSON_OBJECT}},
		},
		{
			name: "--tool bare and wrapped, in order, with --tool-choice required",
			args: []string{"--tool", bare, "--tool", wrapped, "--tool-choice", "required"},
			want: &pb.ChatStreamRequest{
				Tools: []*pb.Tool{
					{Name: "get_weather", Description: "Weather in a city", ParametersJson: weatherParams},
					{Name: "now", Description: "The time"},
				},
				ToolChoice: &pb.ToolChoice{Mode: pb.ToolChoice_MODE_REQUIRED},
			},
		},
		{
			name: "--tool-choice auto",
			args: []string{"--tool", bare, "--tool-choice", "auto"},
			want: &pb.ChatStreamRequest{
				Tools:      []*pb.Tool{{Name: "get_weather", Description: "Weather in a city", ParametersJson: weatherParams}},
				ToolChoice: &pb.ToolChoice{Mode: pb.ToolChoice_MODE_AUTO},
			},
		},
		{
			name: "--tool-choice none",
			args: []string{"--tool-choice", "none"},
			want: &pb.ChatStreamRequest{ToolChoice: &pb.ToolChoice{Mode: pb.ToolChoice_MODE_NONE}},
		},
		{
			name: "--parallel-tool-calls=false",
			args: []string{"--tool", bare, "--parallel-tool-calls=false"},
			want: &pb.ChatStreamRequest{
				Tools:             []*pb.Tool{{Name: "get_weather", Description: "Weather in a city", ParametersJson: weatherParams}},
				ParallelToolCalls: proto.Bool(false),
			},
		},
		{
			name: "--parallel-tool-calls given true is sent too",
			args: []string{"--parallel-tool-calls"},
			want: &pb.ChatStreamRequest{ParallelToolCalls: proto.Bool(true)},
		},
		{
			name: "--tool-choice with a tool's name",
			args: []string{"--tool", bare, "--tool-choice", "get_weather"},
			want: &pb.ChatStreamRequest{
				Tools:      []*pb.Tool{{Name: "get_weather", Description: "Weather in a city", ParametersJson: weatherParams}},
				ToolChoice: &pb.ToolChoice{Mode: pb.ToolChoice_MODE_FUNCTION, Function: "get_weather"},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := &fakeServer{}
			addr := serve(t, srv)
			args := append(append([]string{"chat", "--address", addr}, tt.args...), "Hello")
			if code, _, stderr := run(t, args...); code != 0 {
				t.Fatalf("exit code %d: %s", code, stderr)
			}
			srv.mu.Lock()
			req := srv.lastChat
			srv.mu.Unlock()
			got := &pb.ChatStreamRequest{
				Tools: req.GetTools(), ToolChoice: req.GetToolChoice(), ResponseFormat: req.GetResponseFormat(),
				ParallelToolCalls: req.ParallelToolCalls,
			}
			if !proto.Equal(got, tt.want) {
				t.Errorf("server got\n %v\nwant\n %v", got, tt.want)
			}
		})
	}
}

func TestChatPrintsToolCalls(t *testing.T) {
	calls := [][]*pb.ToolCallDelta{
		{{Index: 0, Id: "call_1", Name: "get_weather", Arguments: `{"city": `}},
		{{Index: 0, Arguments: `"Paris"}`}, {Index: 1, Id: "call_2", Name: "now"}},
	}
	tool := writeFile(t, "weather.json", `{"name": "get_weather", "parameters": `+weatherParams+`}`)
	tests := []struct {
		name       string
		text       []string
		wantStdout string
	}{
		{
			name:       "one line per call: the name and the arguments' JSON",
			text:       []string{},
			wantStdout: "get_weather {\"city\":\"Paris\"}\nnow {}\n",
		},
		{
			name:       "after the reply's text, on lines of their own",
			text:       []string{"Let me ", "check."},
			wantStdout: "Let me check.\nget_weather {\"city\":\"Paris\"}\nnow {}\n",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			addr := serve(t, &fakeServer{chatReply: tt.text, toolCalls: calls})
			code, stdout, stderr := run(t, "chat", "--address", addr, "--tool", tool, "--verbose", "Weather in Paris?")
			if code != 0 {
				t.Fatalf("exit code %d: %s", code, stderr)
			}
			if stdout != tt.wantStdout {
				t.Errorf("stdout %q, want %q", stdout, tt.wantStdout)
			}
			if !strings.Contains(stderr, "finish_reason=tool_calls") {
				t.Errorf("stderr %q: no finish_reason=tool_calls", stderr)
			}
		})
	}

	t.Run("--json: the result carries the assembled calls", func(t *testing.T) {
		addr := serve(t, &fakeServer{chatReply: []string{}, toolCalls: calls})
		code, stdout, stderr := run(t, "chat", "--address", addr, "--json", "--tool", tool, "Weather in Paris?")
		if code != 0 {
			t.Fatalf("exit code %d: %s", code, stderr)
		}
		lines := strings.Split(strings.TrimSuffix(stdout, "\n"), "\n")
		var first client.ChatChunk
		if err := json.Unmarshal([]byte(lines[0]), &first); err != nil || len(first.ToolCalls) != 1 ||
			first.ToolCalls[0].Name != "get_weather" {
			t.Errorf("first line %q (%v): want the first call's delta", lines[0], err)
		}
		var res client.ChatResult
		if err := json.Unmarshal([]byte(lines[len(lines)-1]), &res); err != nil {
			t.Fatal(err)
		}
		want := []client.ToolCall{
			{ID: "call_1", Name: "get_weather", Arguments: `{"city": "Paris"}`},
			{ID: "call_2", Name: "now"},
		}
		if res.FinishReason != client.FinishReasonToolCalls || len(res.ToolCalls) != 2 ||
			res.ToolCalls[0] != want[0] || res.ToolCalls[1] != want[1] {
			t.Errorf("result %+v, want tool calls %+v", res, want)
		}
	})
}

func TestChatJSONSchemaPrintsTheJSONReply(t *testing.T) {
	schema := writeFile(t, "person.json", personSchema)
	addr := serve(t, &fakeServer{chatReply: []string{`{"name": `, `"Ada", "age": 36}`}})
	code, stdout, stderr := run(t, "chat", "--address", addr, "--json-schema", schema, "Invent a person")
	if code != 0 {
		t.Fatalf("exit code %d: %s", code, stderr)
	}
	var person struct {
		Name string `json:"name"`
		Age  int    `json:"age"`
	}
	if err := json.Unmarshal([]byte(stdout), &person); err != nil || person.Name != "Ada" || person.Age != 36 {
		t.Errorf("stdout %q (%v): want the JSON reply", stdout, err)
	}
}

func TestChatReplyFlagErrorsNameTheFlagAndTheFile(t *testing.T) {
	dir := t.TempDir()
	absent := filepath.Join(dir, "absent.json")
	badSchema := writeFile(t, "bad-schema.json", "{\n  \"type\": \"object\",\n  oops\n}")
	badTool := writeFile(t, "bad-tool.json", `{"name": "f",`)
	noName := writeFile(t, "no-name.json", `{"description": "nameless", "parameters": {}}`)
	wrongType := writeFile(t, "retrieval.json", `{"type": "retrieval"}`)
	array := writeFile(t, "array.json", `[{"name": "f"}]`)
	unreadable := t.TempDir() // a directory cannot be read as a file
	tests := []struct {
		name string
		args []string
		want []string // substrings of stderr
	}{
		{"--json-schema: a missing file", []string{"--json-schema", absent},
			[]string{"error: --json-schema " + absent + ": ", "no such file"}},
		{"--json-schema: invalid JSON, with its line", []string{"--json-schema", badSchema},
			[]string{"error: --json-schema " + badSchema + ": not valid JSON: line 3: "}},
		{"--json-schema: not a file", []string{"--json-schema", unreadable},
			[]string{"error: --json-schema " + unreadable + ": "}},
		{"--tool: a missing file", []string{"--tool", absent},
			[]string{"error: --tool " + absent + ": ", "no such file"}},
		{"--tool: invalid JSON", []string{"--tool", badTool},
			[]string{"error: --tool " + badTool + ": not valid JSON: "}},
		{"--tool: no name", []string{"--tool", noName},
			[]string{"error: --tool " + noName + ": no function name: want {\"name\""}},
		{"--tool: not a function tool", []string{"--tool", wrongType},
			[]string{"error: --tool " + wrongType + `: type "retrieval": only function tools`}},
		{"--tool: not one object", []string{"--tool", array},
			[]string{"error: --tool " + array + `: want {"name"`}},
		{"--json-schema and --json-object together", []string{"--json-schema", absent, "--json-object"},
			[]string{"json-schema", "json-object"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := &fakeServer{}
			addr := serve(t, srv)
			code, _, stderr := run(t, append(append([]string{"chat", "--address", addr}, tt.args...), "Hello")...)
			if code != 1 {
				t.Errorf("exit code %d, want 1", code)
			}
			for _, want := range tt.want {
				if !strings.Contains(stderr, want) {
					t.Errorf("stderr %q, want it to contain %q", stderr, want)
				}
			}
			srv.mu.Lock()
			defer srv.mu.Unlock()
			if srv.lastChat != nil {
				t.Error("a request reached the server")
			}
		})
	}
}
