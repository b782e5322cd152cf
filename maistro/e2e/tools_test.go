//go:build unix

package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/inference-platform/maistro/client"
)

// colourSchema is small enough that even the tiny random-weight model ends its reply quickly:
// every value is an enum or a boolean, so constrained decoding leaves it few tokens to choose.
const colourSchema = `{
  "type": "object",
  "properties": {
    "colour": {"type": "string", "enum": ["red", "green", "blue"]},
    "bright": {"type": "boolean"}
  },
  "required": ["colour", "bright"]
}`

// weatherTool takes one enum argument, for the same reason.
var weatherTool = client.Tool{
	Name:        "get_weather",
	Description: "The current weather in a city",
	Parameters: json.RawMessage(`{"type": "object", "properties": {"city": {"type": "string", "enum": ["Paris", "Rome"]}},
		"required": ["city"]}`),
}

// TestToolsAndResponseFormat checks response_format json_schema and a required tool call
// against the real adapter with the tiny model: constrained decoding must hold even for random
// weights. The server side is being wired; set MAISTRO_E2E_TOOLS=1 to run it.
func TestToolsAndResponseFormat(t *testing.T) {
	if os.Getenv("MAISTRO_E2E_TOOLS") != "1" {
		t.Skip("end-to-end test of tools and response_format against the real adapter: " +
			"set MAISTRO_E2E_TOOLS=1 to run it (needs <repo>/.venv and the LLM model's support)")
	}
	moduleDir := findModuleDir(t)
	repo := filepath.Dir(moduleDir)
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(freePort(t)))
	a := startAdapter(t, repo, addr, "PRELOAD_MODELS=llm")
	a.waitServing(t, addr)
	c, err := client.New(client.Config{Address: addr})
	if err != nil {
		t.Fatalf("client.New: %v", err)
	}
	defer c.Close()

	// chatUntilDone tries a few seeds until a reply ends other than by max_tokens (a random
	// model may wander within the grammar, for example through whitespace), and returns it.
	chatUntilDone := func(t *testing.T, req client.ChatRequest) *client.ChatResult {
		t.Helper()
		for seed := uint64(1); seed <= 3; seed++ {
			ctx, cancel := context.WithTimeout(context.Background(), callLimit)
			req.Options = client.Options{MaxTokens: new(int32(128)), Seed: &seed}
			res, err := c.Chat(ctx, &req, nil)
			cancel()
			if err != nil {
				t.Fatalf("Chat: %v", err)
			}
			t.Logf("seed %d: text %q tool calls %+v (%s, %d tokens)",
				seed, res.Text, res.ToolCalls, res.FinishReason, res.Usage.CompletionTokens)
			if res.FinishReason != client.FinishReasonLength {
				return res
			}
		}
		t.Fatal("every reply ran to max_tokens")
		return nil
	}

	t.Run("response_format json_schema: the reply is JSON valid against the schema", func(t *testing.T) {
		res := chatUntilDone(t, client.ChatRequest{
			Model:          "llm",
			Messages:       []client.Message{{Role: client.RoleUser, Content: "Pick a colour."}},
			ResponseFormat: client.JSONSchema("colour", json.RawMessage(colourSchema), true),
		})
		if res.FinishReason != client.FinishReasonStop {
			t.Errorf("finish reason %q, want stop", res.FinishReason)
		}
		checkColour(t, res.Text)
	})

	t.Run("tool_choice required: the reply is a call with valid arguments, and its result can be sent back", func(t *testing.T) {
		msgs := []client.Message{{Role: client.RoleUser, Content: "What is the weather in Paris?"}}
		res := chatUntilDone(t, client.ChatRequest{
			Model: "llm", Messages: msgs, Tools: []client.Tool{weatherTool}, ToolChoice: client.ToolChoiceRequired,
		})
		if res.FinishReason != client.FinishReasonToolCalls || len(res.ToolCalls) == 0 {
			t.Fatalf("finish reason %q with %d tool calls, want tool_calls and at least one", res.FinishReason, len(res.ToolCalls))
		}
		for i, call := range res.ToolCalls {
			var args map[string]any
			if err := json.Unmarshal([]byte(call.Arguments), &args); err != nil {
				t.Errorf("call %d: arguments %q are not a JSON object: %v", i, call.Arguments, err)
				continue
			}
			if city, _ := args["city"].(string); call.Name != "get_weather" || call.ID == "" ||
				(city != "Paris" && city != "Rome") {
				t.Errorf("call %d = %+v: want get_weather with an id and a city of the enum", i, call)
			}
		}

		msgs = append(msgs, res.Message())
		for _, call := range res.ToolCalls {
			msgs = append(msgs, client.ToolMessage(call.ID, `{"temperature_c": 21, "sky": "clear"}`))
		}
		ctx, cancel := context.WithTimeout(context.Background(), callLimit)
		defer cancel()
		next, err := c.Chat(ctx, &client.ChatRequest{
			Model: "llm", Messages: msgs, Tools: []client.Tool{weatherTool}, ToolChoice: client.ToolChoiceNone,
			Options: client.Options{MaxTokens: new(int32(16)), Seed: new(uint64(1))},
		}, nil)
		if err != nil {
			t.Fatalf("Chat with the tool's result: %v", err)
		}
		if len(next.ToolCalls) != 0 {
			t.Errorf("tool_choice none, yet the reply calls %+v", next.ToolCalls)
		}
	})

	t.Run("CLI chat --json-schema prints the JSON reply", func(t *testing.T) {
		schema := filepath.Join(t.TempDir(), "colour.json")
		if err := os.WriteFile(schema, []byte(colourSchema), 0o600); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), callLimit)
		defer cancel()
		cmd := exec.CommandContext(ctx, "go", "run", ".", "chat", "--address", addr,
			"--json-schema", schema, "--max-tokens", "128", "--seed", "1", "Pick a colour.")
		cmd.Dir = moduleDir
		cmd.Env = append(os.Environ(), client.EnvAddress+"=", client.EnvAPIKey+"=", client.EnvSecure+"=")
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err := cmd.Run()
		t.Logf("CLI stdout %q, stderr %q", stdout.String(), stderr.String())
		if err != nil {
			t.Fatalf("go run . chat --json-schema: %v", err)
		}
		checkColour(t, strings.TrimSpace(stdout.String()))
	})
}

// checkColour fails the test unless text is JSON valid against colourSchema, strict: the two
// required keys with their types, and no other key.
func checkColour(t *testing.T, text string) {
	t.Helper()
	var reply map[string]any
	if err := json.Unmarshal([]byte(text), &reply); err != nil {
		t.Fatalf("reply %q is not a JSON object: %v", text, err)
	}
	colour, ok := reply["colour"].(string)
	if !ok || !slices.Contains([]string{"red", "green", "blue"}, colour) {
		t.Errorf("reply %q: colour %v is not one of red, green, blue", text, reply["colour"])
	}
	if _, ok := reply["bright"].(bool); !ok {
		t.Errorf("reply %q: bright %v is not a boolean", text, reply["bright"])
	}
	for k := range reply {
		if k != "colour" && k != "bright" {
			t.Errorf("reply %q: property %q, which the strict schema does not name", text, k)
		}
	}
}
