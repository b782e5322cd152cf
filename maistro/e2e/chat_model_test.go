//go:build unix

package e2e

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/inference-platform/maistro/client"
)

// TestTrainedChatModelAnswers runs the adapter with the model `make run` serves by default, the
// trained SmolLM2-135M-Instruct, and checks what its replies mean, not only their shape.
func TestTrainedChatModelAnswers(t *testing.T) {
	if os.Getenv("MAISTRO_E2E") != "1" {
		t.Skip("end-to-end test against the real adapter: set MAISTRO_E2E=1 to run it")
	}
	repo := filepath.Dir(findModuleDir(t))
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(freePort(t)))
	a := startAdapter(t, repo, addr,
		"PRELOAD_MODELS=llm",
		"LLM_MODEL_ID="+filepath.Join(modelCacheDir(t), "smollm2-135m-instruct"),
	)
	a.waitServing(t, addr)
	c, err := client.New(client.Config{Address: addr})
	if err != nil {
		t.Fatalf("client.New: %v", err)
	}
	defer c.Close()

	greedy := client.Options{MaxTokens: new(int32(32)), Temperature: new(float32(0))}
	chat := func(t *testing.T, messages ...client.Message) *client.ChatResult {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), callLimit)
		defer cancel()
		res, err := c.Chat(ctx, &client.ChatRequest{Model: "llm", Messages: messages, Options: greedy}, nil)
		if err != nil {
			t.Fatalf("Chat: %v", err)
		}
		t.Logf("reply %q (%s, %d tokens)", res.Text, res.FinishReason, res.Usage.CompletionTokens)
		return res
	}

	t.Run("a factual question gets the right answer", func(t *testing.T) {
		res := chat(t, client.Message{Role: client.RoleUser, Content: "What is the capital of France?"})
		if !strings.Contains(res.Text, "Paris") {
			t.Errorf("reply %q does not mention Paris", res.Text)
		}
	})

	t.Run("the conversation keeps its context", func(t *testing.T) {
		res := chat(t,
			client.Message{Role: client.RoleUser, Content: "I have a dog named Max."},
			client.Message{Role: client.RoleAssistant, Content: "That's lovely! Max sounds like a great companion."},
			client.Message{Role: client.RoleUser, Content: "What is my dog's name?"},
		)
		if !strings.Contains(res.Text, "Max") {
			t.Errorf("reply %q does not name the dog", res.Text)
		}
	})
}
