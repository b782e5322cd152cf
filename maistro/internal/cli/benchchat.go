package cli

import (
	"encoding/json"
	"errors"
	"strings"
	"time"

	"github.com/inference-platform/maistro/client"
	"github.com/spf13/cobra"
)

// benchChatResult is what bench-chat prints: one entry per measured request, in order. The
// Python side of benchmarks/go_vs_python_chat.py prints the same shape, so the two compare
// field for field.
type benchChatResult struct {
	Client string `json:"client"`
	// TTFCSeconds: call started -> first chunk with text handed to the callback.
	TTFCSeconds []float64 `json:"ttfc_s"`
	// TotalSeconds: call started -> Chat returned (the stream's final status read).
	TotalSeconds []float64 `json:"total_s"`
	// Messages: gRPC messages received; Chunks: text chunks, counted as the numbered items of
	// chunk_counter's text ("0,", "1,", ...), since the adapter may merge chunks that are ready
	// together into one message. For another model Chunks counts messages with text.
	Messages []int `json:"messages"`
	Chunks   []int `json:"chunks"`
}

// newBenchChatCommand is a hidden command for benchmarks/go_vs_python_chat.py: it runs the
// same chat request several times, one after another over one connection, and prints the
// timings of each as one JSON object.
func newBenchChatCommand(g *globalFlags) *cobra.Command {
	var (
		model     string
		content   string
		maxTokens int32
		requests  int
		warmup    int
	)
	cmd := &cobra.Command{
		Use:    "bench-chat",
		Short:  "Time chat streams (time to first chunk, chunks/s) for benchmarks/go_vs_python_chat.py",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cmd.SilenceUsage = true
			if requests < 1 || warmup < 0 {
				return errors.New("--requests must be at least 1 and --warmup not negative")
			}
			return g.withClient(cmd, func(c *client.Client) error {
				req := &client.ChatRequest{
					Model:    model,
					Messages: []client.Message{{Role: client.RoleUser, Content: content}},
					Options:  client.Options{MaxTokens: &maxTokens},
				}
				counted := model == "chunk_counter"
				res := benchChatResult{Client: "go"}
				for i := range warmup + requests {
					var (
						first            time.Duration
						messages, chunks int
					)
					start := time.Now()
					_, err := c.Chat(cmd.Context(), req, func(ch client.ChatChunk) error {
						messages++
						if ch.Delta == "" {
							return nil
						}
						if first == 0 {
							first = time.Since(start)
						}
						if counted {
							chunks += strings.Count(ch.Delta, ",")
						} else {
							chunks++
						}
						return nil
					})
					total := time.Since(start)
					if err != nil {
						return err
					}
					if i < warmup {
						continue
					}
					res.TTFCSeconds = append(res.TTFCSeconds, first.Seconds())
					res.TotalSeconds = append(res.TotalSeconds, total.Seconds())
					res.Messages = append(res.Messages, messages)
					res.Chunks = append(res.Chunks, chunks)
				}
				return json.NewEncoder(cmd.OutOrStdout()).Encode(res)
			})
		},
	}
	f := cmd.Flags()
	f.StringVar(&model, "model", "chunk_counter", "model to chat with")
	f.StringVar(&content, "content", "Count for me.", "the user message")
	f.Int32Var(&maxTokens, "max-tokens", 200, "chunks to ask for")
	f.IntVar(&requests, "requests", 20, "measured requests, one after another")
	f.IntVar(&warmup, "warmup", 2, "requests run first and not measured")
	return cmd
}
