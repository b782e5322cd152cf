// Package cli is maistro's command line: chat and generate against the inference adapter,
// printing text as it arrives, embed strings into vectors, make or edit pictures with image
// jobs (image generate, image edit, image status), and manage the server's memory (stats,
// clear, and vram: load, unload, pin, unpin, keep-alive, watch). main.go only hands it the
// arguments and the process's streams.
package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/inference-platform/maistro/client"
	"github.com/spf13/cobra"
)

// Run executes a command line (args without the program's name), reading a chat's messages
// from stdin when it has none in args, writing the generated text to stdout and diagnostics to
// stderr, and returns the process's exit code: 0 on success, 1 on any error, which is printed
// as "error: <message>" (for a server error, its gRPC code and the server's message, such as
// "error: NOT_FOUND: model \"x\" is not known").
func Run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	root := newRootCommand()
	root.SetArgs(args)
	root.SetIn(stdin)
	root.SetOut(stdout)
	root.SetErr(stderr)
	if err := root.ExecuteContext(ctx); err != nil {
		fmt.Fprintf(stderr, "error: %v\n", err)
		return 1
	}
	return 0
}

// globalFlags are shared by every command.
type globalFlags struct {
	configPath string
	address    string
	json       bool
	verbose    bool
}

// generationFlags are the sampling flags of chat and generate.
type generationFlags struct {
	model       string
	maxTokens   int32
	temperature float32
	topP        float32
	topK        int32
	seed        uint64
	stop        []string
	keepAlive   keepAliveFlag
}

func newRootCommand() *cobra.Command {
	g := &globalFlags{}
	root := &cobra.Command{
		Use:   "maistro",
		Short: "Client of the inference platform (inference.v1.InferenceService over gRPC)",
		Long: "maistro talks to the inference adapter over gRPC.\n\n" +
			"The connection comes from config.yaml (see --config), overridden by the environment\n" +
			"(" + client.EnvAddress + ", " + client.EnvAPIKey + ", " + client.EnvSecure + ",\n" +
			client.EnvCAFile + ", " + client.EnvCertFile + ", " + client.EnvKeyFile + ", " + client.EnvTLSServerName + ")\n" +
			"and then by --address.",
		// Errors are printed once, by Run; usage is shown only for mistakes in the command line
		// (each command turns it off once its arguments have been accepted).
		SilenceErrors: true,
	}
	pf := root.PersistentFlags()
	pf.StringVar(&g.configPath, "config", "config.yaml", "configuration file; a missing default file means the defaults")
	pf.StringVar(&g.address, "address", "", "server address (host:port), overriding the configuration")
	pf.BoolVar(&g.json, "json", false, "print JSON: chat and generate one object per chunk, then one for the whole result; "+
		"vram watch one per event; the other commands one for the result (image: the job)")
	pf.BoolVar(&g.verbose, "verbose", false, "print token usage and timings to stderr at the end")

	root.AddCommand(newChatCommand(g), newGenerateCommand(g), newEmbedCommand(g), newImageCommand(g),
		newStatsCommand(g), newClearCommand(g), newVRAMCommand(g), newBenchChatCommand(g))
	return root
}

func addGenerationFlags(cmd *cobra.Command, f *generationFlags) {
	flags := cmd.Flags()
	flags.StringVar(&f.model, "model", "llm", "model name as the server serves it")
	flags.Int32Var(&f.maxTokens, "max-tokens", 0, "most tokens to generate (default: the model's)")
	flags.Float32Var(&f.temperature, "temperature", 0, "sampling temperature; 0 is greedy (default: the model's)")
	flags.Float32Var(&f.topP, "top-p", 0, "nucleus sampling threshold in (0, 1] (default: the model's)")
	flags.Int32Var(&f.topK, "top-k", 0, "top-k filtering; 0 disables it (default: the model's)")
	flags.Uint64Var(&f.seed, "seed", 0, "sampling seed, for reproducible output (default: random)")
	flags.StringArrayVar(&f.stop, "stop", nil, "stop sequence (repeatable)")
	f.keepAlive.add(cmd)
}

// options turns the flags that were given into client.Options; flags left out stay nil so that
// the model's defaults apply.
func (f *generationFlags) options(cmd *cobra.Command) client.Options {
	changed := cmd.Flags().Changed
	var o client.Options
	if changed("max-tokens") {
		o.MaxTokens = &f.maxTokens
	}
	if changed("temperature") {
		o.Temperature = &f.temperature
	}
	if changed("top-p") {
		o.TopP = &f.topP
	}
	if changed("top-k") {
		o.TopK = &f.topK
	}
	if changed("seed") {
		o.Seed = &f.seed
	}
	o.Stop = f.stop
	return o
}

// keepAliveFlag is the --keep-alive flag of the commands that run a model (chat, generate,
// embed, image generate and image edit).
type keepAliveFlag time.Duration

// add registers the flag on cmd.
func (k *keepAliveFlag) add(cmd *cobra.Command) {
	cmd.Flags().DurationVar((*time.Duration)(k), "keep-alive", 0,
		"how long the model stays loaded afterwards; negative: forever (default: the server's)")
}

// option returns the request's KeepAlive: the flag's value, or nil when the flag was not given
// so that the server's default applies.
func (k *keepAliveFlag) option(cmd *cobra.Command) *time.Duration {
	if !cmd.Flags().Changed("keep-alive") {
		return nil
	}
	return (*time.Duration)(k)
}

func newGenerateCommand(g *globalFlags) *cobra.Command {
	f := &generationFlags{}
	cmd := &cobra.Command{
		Use:   "generate [flags] PROMPT...",
		Short: "Continue a raw prompt (the arguments, joined by spaces) and stream the continuation",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cmd.SilenceUsage = true
			return g.withClient(cmd, func(c *client.Client) error {
				req := &client.GenerateRequest{
					Model: f.model, Prompt: strings.Join(args, " "),
					Options: f.options(cmd), KeepAlive: f.keepAlive.option(cmd),
				}
				p := g.newPrinter(cmd)
				start := time.Now()
				res, err := c.Generate(cmd.Context(), req, func(ch client.GenerateChunk) error {
					return p.chunk(ch, ch.Delta)
				})
				if err != nil {
					p.abort()
					return err
				}
				return p.result(res, summary{res.Model, res.FinishReason, res.Usage, res.Timings, time.Since(start)})
			})
		},
	}
	addGenerationFlags(cmd, f)
	return cmd
}

// defaultEmbeddingModel is the embedding model's name in the platform's model repository.
const defaultEmbeddingModel = "embedding"

// previewValues is how many leading values of each vector embed prints without --json.
const previewValues = 6

func newEmbedCommand(g *globalFlags) *cobra.Command {
	var (
		model     string
		normalize bool
		keepAlive keepAliveFlag
	)
	cmd := &cobra.Command{
		Use:   "embed [flags] TEXT...",
		Short: "Embed each argument as one input and print the vectors (the full result with --json)",
		Long: "embed sends every argument as one input and prints one line per input:\n\n" +
			"  [0] dim=384 tokens=5 truncated=false  0.0123 -0.0456 0.0789 0.0012 -0.0345 0.0678 ...\n\n" +
			"with the vector's first " + strconv.Itoa(previewValues) + " values. With --json it prints the whole result\n" +
			"(model, dimension, embeddings with their vectors, usage) as one JSON object.",
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cmd.SilenceUsage = true
			return g.withClient(cmd, func(c *client.Client) error {
				req := &client.EmbedRequest{
					Model: model, Inputs: args, Normalize: normalize, KeepAlive: keepAlive.option(cmd),
				}
				start := time.Now()
				res, err := c.Embed(cmd.Context(), req)
				if err != nil {
					return err
				}
				return g.newPrinter(cmd).embeddings(res, time.Since(start))
			})
		},
	}
	flags := cmd.Flags()
	flags.StringVar(&model, "model", defaultEmbeddingModel, "embedding model name as the server serves it")
	flags.BoolVar(&normalize, "normalize", false, "scale each vector to unit L2 norm")
	keepAlive.add(cmd)
	return cmd
}

// withClient connects (see connect), runs fn with the client and closes it when fn returns:
// every command that talks to the server goes through here.
func (g *globalFlags) withClient(cmd *cobra.Command, fn func(*client.Client) error) error {
	c, err := g.connect(cmd)
	if err != nil {
		return err
	}
	defer c.Close()
	return fn(c)
}

// connect loads the configuration, applies --address and makes the client.
func (g *globalFlags) connect(cmd *cobra.Command) (*client.Client, error) {
	// The default file may be absent (defaults apply); a file named on purpose must exist.
	if cmd.Flags().Changed("config") {
		if _, err := os.Stat(g.configPath); errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("config: %s does not exist", g.configPath)
		}
	}
	cfg, err := client.LoadConfig(g.configPath)
	if err != nil {
		return nil, err
	}
	if g.address != "" {
		cfg.Address = g.address
	}
	return client.New(cfg)
}

// summary is what --verbose reports at the end of a stream.
type summary struct {
	model        string
	finishReason client.FinishReason
	usage        client.Usage
	timings      client.Timings
	wall         time.Duration // as the CLI saw it, connection included
}

// printer writes a stream to the command's output as text or as JSON lines.
type printer struct {
	out, errOut io.Writer
	json        *json.Encoder // nil: plain text
	verbose     bool
	wrote       bool // some text is on the current line
}

func (g *globalFlags) newPrinter(cmd *cobra.Command) *printer {
	p := &printer{out: cmd.OutOrStdout(), errOut: cmd.ErrOrStderr(), verbose: g.verbose}
	if g.json {
		p.json = json.NewEncoder(p.out)
	}
	return p
}

// chunk prints one chunk as soon as it arrives. A write error (a closed pipe) is returned to
// the client, which then cancels the generation.
func (p *printer) chunk(v any, delta string) error {
	if p.json != nil {
		return p.flush(p.json.Encode(v))
	}
	if delta == "" {
		return nil
	}
	p.wrote = true
	_, err := io.WriteString(p.out, delta)
	return p.flush(err)
}

// flush pushes buffered output out after each chunk; an *os.File is not buffered, but a
// writer handed in by a caller may be.
func (p *printer) flush(err error) error {
	if err != nil {
		return err
	}
	if f, ok := p.out.(interface{ Flush() error }); ok {
		return f.Flush()
	}
	return nil
}

// abort ends a line of text left open by a stream that failed, so the error starts on its own.
func (p *printer) abort() {
	if p.wrote {
		_, _ = fmt.Fprintln(p.out)
		_ = p.flush(nil)
	}
}

// result prints the end of a stream: a newline (or the whole result as JSON), then the
// summary on stderr with --verbose.
func (p *printer) result(v any, s summary) error {
	var err error
	if p.json != nil {
		err = p.json.Encode(v)
	} else {
		_, err = fmt.Fprintln(p.out)
	}
	return p.end(err, s)
}

// chatResult is result for a chat reply, which may end with tool calls: in text, each call
// is a line of its own after the reply's text, the tool's name and its arguments as JSON.
func (p *printer) chatResult(res *client.ChatResult, s summary) error {
	if p.json != nil || len(res.ToolCalls) == 0 {
		return p.result(res, s)
	}
	var b strings.Builder
	if p.wrote {
		b.WriteString("\n") // ends the reply's text
	}
	for _, call := range res.ToolCalls {
		fmt.Fprintf(&b, "%s %s\n", call.Name, compactJSON(call.Arguments))
	}
	_, err := io.WriteString(p.out, b.String())
	return p.end(err, s)
}

// compactJSON returns JSON text on one line ("{}" for none), or text as it is if it is not JSON.
func compactJSON(text string) string {
	if strings.TrimSpace(text) == "" {
		return "{}"
	}
	var b bytes.Buffer
	if json.Compact(&b, []byte(text)) != nil {
		return text
	}
	return b.String()
}

// end flushes what result wrote (err is its write error), then prints the summary on stderr
// with --verbose.
func (p *printer) end(err error, s summary) error {
	if err = p.flush(err); err != nil {
		return err
	}
	if p.verbose {
		_, _ = fmt.Fprintf(p.errOut,
			"model=%s finish_reason=%s prompt_tokens=%d completion_tokens=%d total_tokens=%d "+
				"load=%s time_to_first_token=%s total=%s wall=%s\n",
			s.model, s.finishReason, s.usage.PromptTokens, s.usage.CompletionTokens, s.usage.TotalTokens,
			s.timings.Load, s.timings.TimeToFirstToken, s.timings.Total, s.wall.Round(time.Millisecond))
	}
	return nil
}

// embeddings prints an embedding result: one line per input, or the whole result as one JSON
// object; then, with --verbose, the usage on stderr.
func (p *printer) embeddings(res *client.EmbedResult, wall time.Duration) error {
	var err error
	if p.json != nil {
		err = p.json.Encode(res)
	} else {
		var b strings.Builder
		for _, e := range res.Embeddings {
			fmt.Fprintf(&b, "[%d] dim=%d tokens=%d truncated=%t  %s\n",
				e.Index, len(e.Vector), e.Tokens, e.Truncated, preview(e.Vector))
		}
		_, err = io.WriteString(p.out, b.String())
	}
	if err = p.flush(err); err != nil {
		return err
	}
	if p.verbose {
		_, _ = fmt.Fprintf(p.errOut,
			"model=%s dimension=%d inputs=%d prompt_tokens=%d total_tokens=%d wall=%s\n",
			res.Model, res.Dimension, len(res.Embeddings), res.Usage.PromptTokens, res.Usage.TotalTokens,
			wall.Round(time.Millisecond))
	}
	return nil
}

// preview formats the first previewValues values of v with 4 decimals, then "..." if more follow.
func preview(v []float32) string {
	n := min(len(v), previewValues)
	parts := make([]string, n, n+1)
	for i, x := range v[:n] {
		parts[i] = strconv.FormatFloat(float64(x), 'f', 4, 32)
	}
	if len(v) > n {
		parts = append(parts, "...")
	}
	return strings.Join(parts, " ")
}
