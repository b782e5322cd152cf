package cli

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
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
			"forgets the conversation, /bye or Ctrl-D leaves, Ctrl-C stops a reply and leaves.",
		Example: "  maistro chat \"Why is the sky blue?\"\n" +
			"  maistro chat --system \"Answer in French\" -i\n" +
			"  echo \"Summarise: ...\" | maistro chat --json",
		RunE: func(cmd *cobra.Command, args []string) error {
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
				s := &chatSession{cmd: cmd, g: g, f: f, c: c}
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
	return cmd
}

// chatSession is one chat command: a single turn, or a conversation whose history is sent
// again with every message (the server keeps no state between calls).
type chatSession struct {
	cmd     *cobra.Command
	g       *globalFlags
	f       *generationFlags
	c       *client.Client
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
	return res, p.result(res, summary{res.Model, res.FinishReason, res.Usage, res.Timings, time.Since(start)})
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
