package cli

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/inference-platform/maistro/client"
	"github.com/spf13/cobra"
)

// replHelp is what /help prints in an interactive chat.
const replHelp = `Type a message and press Enter; the reply streams back.
  /reset   forget the conversation so far (the system message stays)
  /bye     leave (so do /exit, Ctrl-D and Ctrl-C)
`

// maxLine is the longest message line the interactive chat reads.
const maxLine = 1 << 20

func newChatCommand(g *globalFlags) *cobra.Command {
	f := &generationFlags{}
	r := &replyFlags{}
	var (
		system      string
		interactive bool
	)
	cmd := &cobra.Command{
		Use:   "chat [flags] [MESSAGE...]",
		Short: "Send a message and stream the reply, or hold a conversation",
		Long: "chat sends one user message (the arguments, joined by spaces) and streams the reply.\n\n" +
			"With no arguments it reads the message from standard input, unless standard input is a\n" +
			"terminal: then (or with -i) it holds a conversation, one message per line, each reply\n" +
			"streamed as it comes and the whole conversation sent with every message. In a\n" +
			"conversation, a server error is printed and the next message may be typed; /reset\n" +
			"forgets the conversation, /bye or Ctrl-D leaves, Ctrl-C stops a reply and leaves.\n\n" +
			"--json-schema FILE makes the reply JSON valid against the schema in FILE (strict: no\n" +
			"property the schema does not name), --json-object any JSON object; the server guarantees\n" +
			"it by constrained decoding. --tool FILE (repeatable) offers the model a function, FILE\n" +
			"holding one OpenAI-style tool: {\"name\", \"description\", \"parameters\"} or\n" +
			"{\"type\": \"function\", \"function\": {...}}. A reply that calls tools ends with one line\n" +
			"per call, the tool's name and its arguments as JSON (the tools are not run; in a\n" +
			"conversation the calls are not kept in the history).",
		Example: "  maistro chat \"Why is the sky blue?\"\n" +
			"  maistro chat --system \"Answer in French\" -i\n" +
			"  echo \"Summarise: ...\" | maistro chat --json\n" +
			"  maistro chat --json-schema person.json \"Invent a person\"\n" +
			"  maistro chat --tool weather.json --tool-choice required \"Weather in Paris?\"\n" +
			"  maistro chat --tool weather.json --tool time.json --parallel-tool-calls=false \"Weather in Paris?\"",
		RunE: func(cmd *cobra.Command, args []string) error {
			shape, err := r.shape()
			if err != nil {
				cmd.SilenceUsage = true // a file's problem, not the command line's
				return err
			}
			stdin := cmd.InOrStdin()
			repl := interactive || (len(args) == 0 && isTerminal(stdin))
			var first string
			switch {
			case len(args) > 0:
				first = strings.Join(args, " ")
			case !repl:
				data, err := io.ReadAll(stdin)
				if err != nil {
					return fmt.Errorf("reading the message from standard input: %w", err)
				}
				if first = strings.TrimSpace(string(data)); first == "" {
					return errors.New("no message: give one as arguments or on standard input, or use -i")
				}
			}
			cmd.SilenceUsage = true
			return g.withClient(cmd, func(c *client.Client) error {
				s := &chatSession{cmd: cmd, g: g, f: f, c: c, shape: shape}
				if system != "" {
					s.system = &client.Message{Role: client.RoleSystem, Content: system}
				}
				if !repl {
					_, err := s.turn(first)
					return err
				}
				return s.converse(first, stdin)
			})
		},
	}
	addGenerationFlags(cmd, f)
	cmd.Flags().StringVar(&system, "system", "", "system message sent before the user's")
	cmd.Flags().BoolVarP(&interactive, "interactive", "i", false,
		"hold a conversation, one message per line of standard input (the default on a terminal with no MESSAGE)")
	r.add(cmd)
	return cmd
}

// replyFlags are chat's flags that shape the reply: a JSON response format, tools and the
// tool choice.
type replyFlags struct {
	jsonSchema string
	jsonObject bool
	tools      []string
	toolChoice string
	parallel   bool
	cmd        *cobra.Command // to tell --parallel-tool-calls given from its default
}

func (r *replyFlags) add(cmd *cobra.Command) {
	flags := cmd.Flags()
	flags.StringVar(&r.jsonSchema, "json-schema", "",
		"JSON schema `FILE`: the reply is JSON valid against it (response_format json_schema, strict)")
	flags.BoolVar(&r.jsonObject, "json-object", false, "the reply is a JSON object (response_format json_object)")
	flags.StringArrayVar(&r.tools, "tool", nil,
		"`FILE` holding one OpenAI-style function tool the model may call (repeatable)")
	flags.StringVar(&r.toolChoice, "tool-choice", "",
		"`CHOICE`: auto, none, required, or the name of the tool to call (default: the server's, auto with tools)")
	flags.BoolVar(&r.parallel, "parallel-tool-calls", true,
		"false: the reply calls at most one tool (parallel_tool_calls)")
	r.cmd = cmd
	cmd.MarkFlagsMutuallyExclusive("json-schema", "json-object")
}

// replyShape is what replyFlags ask of every turn.
type replyShape struct {
	format client.ResponseFormat
	tools  []client.Tool
	choice client.ToolChoice
	// parallel is nil unless --parallel-tool-calls was given.
	parallel *bool
}

// shape reads the files the flags name. Its errors name the flag and the file.
func (r *replyFlags) shape() (replyShape, error) {
	var s replyShape
	switch {
	case r.jsonSchema != "":
		schema, err := readJSONFile("--json-schema", r.jsonSchema)
		if err != nil {
			return s, err
		}
		base := filepath.Base(r.jsonSchema)
		s.format = client.JSONSchema(strings.TrimSuffix(base, filepath.Ext(base)), schema, true)
	case r.jsonObject:
		s.format = client.JSONObject()
	}
	for _, path := range r.tools {
		tool, err := readToolFile(path)
		if err != nil {
			return s, err
		}
		s.tools = append(s.tools, tool)
	}
	switch r.toolChoice {
	case "":
	case "auto":
		s.choice = client.ToolChoiceAuto
	case "none":
		s.choice = client.ToolChoiceNone
	case "required":
		s.choice = client.ToolChoiceRequired
	default:
		s.choice = client.ToolChoiceFunction(r.toolChoice)
	}
	if r.cmd != nil && r.cmd.Flags().Changed("parallel-tool-calls") {
		parallel := r.parallel
		s.parallel = &parallel
	}
	return s, nil
}

// readJSONFile reads a file that must hold JSON; its errors start with the flag and the file.
func readJSONFile(flag, path string) ([]byte, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		var pathErr *fs.PathError
		if errors.As(err, &pathErr) {
			err = pathErr.Err // the path is said once, after the flag
		}
		return nil, fmt.Errorf("%s %s: %w", flag, path, err)
	}
	if err := json.Unmarshal(data, new(any)); err != nil {
		return nil, fmt.Errorf("%s %s: not valid JSON: %s", flag, path, describeJSONError(data, err))
	}
	return bytes.TrimSpace(data), nil
}

// describeJSONError adds the line to a syntax error's message.
func describeJSONError(data []byte, err error) string {
	var syntax *json.SyntaxError
	if errors.As(err, &syntax) {
		line := 1 + bytes.Count(data[:min(int(syntax.Offset), len(data))], []byte("\n"))
		return fmt.Sprintf("line %d: %v", line, err)
	}
	return err.Error()
}

// toolFunction is an OpenAI function tool's function.
type toolFunction struct {
	Name        string          `json:"name"`
	Description string          `json:"description"`
	Parameters  json.RawMessage `json:"parameters"`
}

// toolFileShapes is what a --tool file may hold, for its errors.
const toolFileShapes = `{"name", "description", "parameters"} or {"type": "function", "function": {...}}`

// readToolFile reads a --tool file: one function tool, bare or in OpenAI's wrapper.
func readToolFile(path string) (client.Tool, error) {
	data, err := readJSONFile("--tool", path)
	if err != nil {
		return client.Tool{}, err
	}
	var file struct {
		Type     string        `json:"type"`
		Function *toolFunction `json:"function"`
		toolFunction
	}
	if err := json.Unmarshal(data, &file); err != nil {
		return client.Tool{}, fmt.Errorf("--tool %s: want %s: %v", path, toolFileShapes, err)
	}
	fn := file.toolFunction
	if file.Type != "" && file.Type != "function" {
		return client.Tool{}, fmt.Errorf("--tool %s: type %q: only function tools are supported", path, file.Type)
	}
	if file.Function != nil {
		fn = *file.Function
	}
	if fn.Name == "" {
		return client.Tool{}, fmt.Errorf("--tool %s: no function name: want %s", path, toolFileShapes)
	}
	if string(fn.Parameters) == "null" {
		fn.Parameters = nil
	}
	return client.Tool{Name: fn.Name, Description: fn.Description, Parameters: fn.Parameters}, nil
}

// chatSession is one chat command: a single turn, or a conversation whose history is sent
// again with every message (the server keeps no state between calls).
type chatSession struct {
	cmd     *cobra.Command
	g       *globalFlags
	f       *generationFlags
	c       *client.Client
	shape   replyShape
	system  *client.Message
	history []client.Message // user and assistant turns so far
}

// turn sends content after the history, streams the reply to the output and returns it.
func (s *chatSession) turn(content string) (*client.ChatResult, error) {
	msgs := make([]client.Message, 0, len(s.history)+2)
	if s.system != nil {
		msgs = append(msgs, *s.system)
	}
	msgs = append(msgs, s.history...)
	msgs = append(msgs, client.Message{Role: client.RoleUser, Content: content})
	req := &client.ChatRequest{
		Model: s.f.model, Messages: msgs,
		Options: s.f.options(s.cmd), KeepAlive: s.f.keepAlive.option(s.cmd),
		Tools: s.shape.tools, ToolChoice: s.shape.choice, ResponseFormat: s.shape.format, ParallelToolCalls: s.shape.parallel,
	}
	p := s.g.newPrinter(s.cmd)
	start := time.Now()
	res, err := s.c.Chat(s.cmd.Context(), req, func(ch client.ChatChunk) error {
		return p.chunk(ch, ch.Delta)
	})
	if err != nil {
		p.abort()
		return nil, err
	}
	return res, p.chatResult(res, summary{res.Model, res.FinishReason, res.Usage, res.Timings, time.Since(start)})
}

// converse runs the interactive loop: first (if any) as the opening message, then one message
// per line of in until end of input, /bye, or the command's context ends (Ctrl-C), which is
// a normal way to leave. The prompt goes to stderr so that stdout holds only replies (or JSON).
func (s *chatSession) converse(first string, in io.Reader) error {
	ctx := s.cmd.Context()
	errOut := s.cmd.ErrOrStderr()
	lines := readLines(ctx, in)
	for {
		msg := first
		first = ""
		if msg == "" {
			fmt.Fprint(errOut, ">>> ")
			select {
			case <-ctx.Done():
				fmt.Fprintln(errOut)
				return nil
			case l, more := <-lines:
				if !more || l.err != nil {
					fmt.Fprintln(errOut)
					return l.err // nil at the end of the input
				}
				msg = strings.TrimSpace(l.text)
			}
		}
		switch msg {
		case "":
			continue
		case "/bye", "/exit", "/quit":
			return nil
		case "/reset":
			s.history = nil
			fmt.Fprintln(errOut, "(conversation forgotten)")
			continue
		case "/help", "/?":
			fmt.Fprint(errOut, replHelp)
			continue
		}
		res, err := s.turn(msg)
		switch {
		case ctx.Err() != nil:
			return nil // Ctrl-C: the reply was cancelled on the server; leave
		case err != nil:
			// The turn did not happen: keep the history as it was and let the person go on.
			fmt.Fprintf(errOut, "error: %v\n", err)
			continue
		}
		s.history = append(s.history,
			client.Message{Role: client.RoleUser, Content: msg},
			client.Message{Role: client.RoleAssistant, Content: res.Text})
	}
}

// line is one line of input, or the error that ended the input (err is nil at end of file).
type line struct {
	text string
	err  error
}

// readLines reads in line by line on a goroutine of its own, so that the conversation can end
// on Ctrl-C while a read is blocked on the terminal. The channel is closed at the end of the
// input, after a last line carrying a read error if there was one.
func readLines(ctx context.Context, in io.Reader) <-chan line {
	ch := make(chan line)
	go func() {
		defer close(ch)
		sc := bufio.NewScanner(in)
		sc.Buffer(make([]byte, 0, 64*1024), maxLine)
		for sc.Scan() {
			select {
			case ch <- line{text: sc.Text()}:
			case <-ctx.Done():
				return
			}
		}
		if err := sc.Err(); err != nil {
			select {
			case ch <- line{err: fmt.Errorf("reading standard input: %w", err)}:
			case <-ctx.Done():
			}
		}
	}()
	return ch
}
