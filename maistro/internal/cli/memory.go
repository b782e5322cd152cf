package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/inference-platform/maistro/client"
	"github.com/spf13/cobra"
)

// now is the clock that stats measures "30s ago" and "in 4m30s" against; tests replace it.
var now = time.Now

func newStatsCommand(g *globalFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "stats",
		Short: "Print the server's memory: devices, models with their state and memory, the budget",
		Long: "stats prints a table of the devices (total, used, free), then one of the models:\n\n" +
			"  MODEL  STATE   MEMORY              PINNED  IN-FLIGHT  LAST USED  EXPIRES   REASON\n" +
			"  llm    loaded  2.0 GiB (measured)  yes     0          30s ago    in 4m30s\n\n" +
			"where MEMORY says where its figure comes from (metric, measured or declared) and EXPIRES\n" +
			"when keep-alive unloads the model if it stays idle (never: kept loaded). Then the budget\n" +
			"and how much of it the models hold. With --json it prints the snapshot as one JSON object.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cmd.SilenceUsage = true
			return g.withClient(cmd, func(c *client.Client) error {
				snap, err := c.MemoryStats(cmd.Context())
				if err != nil {
					return err
				}
				if g.json {
					return json.NewEncoder(cmd.OutOrStdout()).Encode(snap)
				}
				_, err = io.WriteString(cmd.OutOrStdout(), statsTable(snap, now()))
				return err
			})
		},
	}
}

func newClearCommand(g *globalFlags) *cobra.Command {
	var opts client.ClearOptions
	cmd := &cobra.Command{
		Use:   "clear [--include-pinned] [--wait DURATION]",
		Short: "Unload every idle model that is not pinned, and print what was unloaded, skipped and freed",
		Long: "clear unloads every idle model that is not pinned (pinned ones too with --include-pinned),\n" +
			"waiting up to --wait for busy ones to finish their requests, and prints:\n\n" +
			"  unloaded: embedding, image\n" +
			"  skipped: llm (busy)\n" +
			"  freed: 3.0 GiB\n\n" +
			"With --json it prints the result as one JSON object.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cmd.SilenceUsage = true
			return g.withClient(cmd, func(c *client.Client) error {
				res, err := c.ClearMemory(cmd.Context(), opts)
				if err != nil {
					return err
				}
				if g.json {
					return json.NewEncoder(cmd.OutOrStdout()).Encode(res)
				}
				_, err = fmt.Fprintf(cmd.OutOrStdout(), "unloaded: %s\nskipped: %s\nfreed: %s\n",
					listOrNone(res.Unloaded), listOrNone(res.Skipped), humanBytes(res.FreedBytes))
				return err
			})
		},
	}
	flags := cmd.Flags()
	flags.BoolVar(&opts.IncludePinned, "include-pinned", false, "unload pinned models too")
	flags.DurationVar(&opts.WaitForIdle, "wait", 0, "how long to wait for busy models to become idle (default: skip them)")
	return cmd
}

func newVRAMCommand(g *globalFlags) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "vram",
		Short: "Load, unload and pin models, set their keep-alive, or watch memory as it changes",
		Long: "vram opens a control session with the server (ManageVRAM) and sends it one command,\n" +
			"printing what was done (with --json, one JSON object), or, with watch, prints the model\n" +
			"events and memory snapshots that the server pushes until interrupted.",
	}
	cmd.AddCommand(
		newVRAMWatchCommand(g),
		newVRAMModelCommand(g, "load", "Load a model, evicting idle ones if the budget needs it", "loaded",
			(*client.VRAMSession).Load),
		newVRAMModelCommand(g, "unload", "Unload a model, pinned or not, once it is idle", "unloaded",
			(*client.VRAMSession).Unload),
		newVRAMModelCommand(g, "pin", "Keep a model loaded, never evicted, until it is unpinned or unloaded", "pinned",
			(*client.VRAMSession).Pin),
		newVRAMModelCommand(g, "unpin", "Make a pinned model evictable again", "unpinned",
			(*client.VRAMSession).Unpin),
		newVRAMKeepAliveCommand(g),
	)
	return cmd
}

// vramResult is what a vram command prints with --json.
type vramResult struct {
	Command string `json:"command"`
	Model   string `json:"model"`
	OK      bool   `json:"ok"`
	// KeepAlive is the keep-alive set (keep-alive only), in nanoseconds; negative: forever.
	KeepAlive *time.Duration `json:"keep_alive,omitempty"`
}

// inSession opens a control session, runs do in it and closes it.
func (g *globalFlags) inSession(cmd *cobra.Command, do func(*client.VRAMSession) error) error {
	return g.withClient(cmd, func(c *client.Client) error {
		s, err := c.OpenVRAMSession(cmd.Context())
		if err != nil {
			return err
		}
		defer s.Close()
		return do(s)
	})
}

// newVRAMModelCommand makes "vram NAME MODEL", which runs command on MODEL and prints
// "<done> MODEL".
func newVRAMModelCommand(g *globalFlags, name, short, done string,
	command func(*client.VRAMSession, context.Context, string) error,
) *cobra.Command {
	return &cobra.Command{
		Use:   name + " MODEL",
		Short: short,
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cmd.SilenceUsage = true
			model := args[0]
			err := g.inSession(cmd, func(s *client.VRAMSession) error {
				return command(s, cmd.Context(), model)
			})
			if err != nil {
				return err
			}
			if g.json {
				return json.NewEncoder(cmd.OutOrStdout()).Encode(vramResult{Command: name, Model: model, OK: true})
			}
			_, err = fmt.Fprintf(cmd.OutOrStdout(), "%s %s\n", done, model)
			return err
		},
	}
}

func newVRAMKeepAliveCommand(g *globalFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "keep-alive MODEL DURATION",
		Short: "Set how long a model stays loaded once idle (0: unload when idle; forever: never unload)",
		Long: "keep-alive sets how long MODEL stays loaded once idle. DURATION is a Go duration (\"90s\",\n" +
			"\"5m\", \"0s\" to unload it as soon as it is idle) or \"forever\"; a negative duration also\n" +
			"means forever, written after \"--\" so that it is not taken for a flag:\n\n" +
			"  maistro vram keep-alive -- llm -1s",
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			model := args[0]
			d, err := parseKeepAlive(args[1])
			if err != nil {
				return err
			}
			cmd.SilenceUsage = true
			err = g.inSession(cmd, func(s *client.VRAMSession) error {
				return s.SetKeepAlive(cmd.Context(), model, d)
			})
			if err != nil {
				return err
			}
			if g.json {
				return json.NewEncoder(cmd.OutOrStdout()).Encode(vramResult{
					Command: "keep-alive", Model: model, OK: true, KeepAlive: &d,
				})
			}
			_, err = fmt.Fprintf(cmd.OutOrStdout(), "keep-alive of %s set to %s\n", model, keepAliveText(d))
			return err
		},
	}
}

// parseKeepAlive reads a keep-alive: a Go duration, or "forever" (which is -1ns, as any
// negative duration).
func parseKeepAlive(s string) (time.Duration, error) {
	if strings.EqualFold(s, "forever") {
		return -1, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("keep-alive %q: want a duration such as 90s or 5m, or forever", s)
	}
	return d, nil
}

func keepAliveText(d time.Duration) string {
	if d < 0 {
		return "forever"
	}
	return d.String()
}

func newVRAMWatchCommand(g *globalFlags) *cobra.Command {
	var interval time.Duration
	cmd := &cobra.Command{
		Use:   "watch [--interval DURATION]",
		Short: "Print model events and memory snapshots as they arrive, until interrupted",
		Long: "watch prints the memory picture now, then every model event (loaded, unloaded, evicted,\n" +
			"load_failed) and, every --interval, a memory snapshot, one line each, until Ctrl-C:\n\n" +
			"  12:00:01  evicted      embedding  90.0 MiB  (evicted to load llm)\n" +
			"  12:00:02  snapshot     gpu:0 3.0 GiB/80.0 GiB  budget 2.0 GiB/70.0 GiB  llm loaded 2.0 GiB pinned\n\n" +
			"--interval 0 prints model events only. With --json every line is one JSON object:\n" +
			"{\"event\": {...}} or {\"snapshot\": {...}}. A watch that falls behind skips snapshots.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if interval < 0 {
				return errors.New("--interval must not be negative")
			}
			cmd.SilenceUsage = true
			ctx := cmd.Context()
			return g.inSession(cmd, func(s *client.VRAMSession) error {
				p := &watchPrinter{out: cmd.OutOrStdout()}
				if g.json {
					p.json = json.NewEncoder(p.out)
				}
				first, err := s.Status(ctx)
				if err != nil {
					return ignoreInterrupt(ctx, err)
				}
				if err := p.print(client.SessionEvent{Snapshot: first}); err != nil {
					return err
				}
				if interval > 0 {
					if err := s.Subscribe(ctx, interval); err != nil {
						return ignoreInterrupt(ctx, err)
					}
				}
				for {
					select {
					case <-ctx.Done():
						return nil
					case ev, ok := <-s.Events():
						if !ok {
							return ignoreInterrupt(ctx, s.Err())
						}
						if err := p.print(ev); err != nil {
							return err
						}
					}
				}
			})
		},
	}
	cmd.Flags().DurationVar(&interval, "interval", 2*time.Second, "how often to print a memory snapshot; 0: model events only")
	return cmd
}

// ignoreInterrupt drops the error of a watch that ended because the user interrupted it.
func ignoreInterrupt(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return nil
	}
	return err
}

// watchPrinter prints the session events of vram watch, one line each.
type watchPrinter struct {
	out  io.Writer
	json *json.Encoder // nil: plain text
}

func (p *watchPrinter) print(ev client.SessionEvent) error {
	if p.json != nil {
		return p.json.Encode(ev)
	}
	var line string
	switch {
	case ev.Event != nil:
		line = eventLine(ev.Event)
	case ev.Snapshot != nil:
		line = snapshotLine(ev.Snapshot)
	default:
		return nil
	}
	_, err := io.WriteString(p.out, line+"\n")
	return err
}

// clock formats when something happened, in local time; a zero time (the server did not say)
// is now.
func clock(t time.Time) string {
	if t.IsZero() {
		t = now()
	}
	return t.Local().Format("15:04:05")
}

// eventLine formats a model event: "12:00:01  evicted      embedding  90.0 MiB  (reason)".
func eventLine(e *client.ModelEvent) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s  %-11s  %s", clock(e.At), e.Kind, e.Model)
	if e.MemoryBytes > 0 {
		b.WriteString("  " + humanBytes(e.MemoryBytes))
	}
	if e.Reason != "" {
		b.WriteString("  (" + e.Reason + ")")
	}
	return b.String()
}

// snapshotLine formats a snapshot on one line: each device's use, the budget's, and each model's
// state ("llm loaded 2.0 GiB pinned 1 in flight").
func snapshotLine(s *client.MemorySnapshot) string {
	parts := []string{fmt.Sprintf("%s  %-11s", clock(s.TakenAt), "snapshot")}
	for _, d := range s.Devices {
		parts = append(parts, fmt.Sprintf("%s %s/%s", d.Device, humanBytes(d.UsedBytes), humanBytes(d.TotalBytes)))
	}
	parts = append(parts, fmt.Sprintf("budget %s/%s", humanBytes(heldBytes(s)), humanBytes(s.BudgetBytes)))
	for _, m := range s.Models {
		desc := []string{m.Model, string(m.State)}
		if m.MemoryBytes > 0 && holdsMemory(m.State) {
			desc = append(desc, humanBytes(m.MemoryBytes))
		}
		if m.Pinned {
			desc = append(desc, "pinned")
		}
		if m.InFlight > 0 {
			desc = append(desc, strconv.Itoa(m.InFlight)+" in flight")
		}
		parts = append(parts, strings.Join(desc, " "))
	}
	return strings.Join(parts, "  ")
}

// holdsMemory reports whether a model in state s holds (or is taking) memory.
func holdsMemory(s client.ModelState) bool {
	return s == client.ModelStateLoaded || s == client.ModelStateLoading || s == client.ModelStateUnloading
}

// heldBytes is the memory that the snapshot's models hold, which counts against the budget.
func heldBytes(s *client.MemorySnapshot) uint64 {
	var n uint64
	for _, m := range s.Models {
		if holdsMemory(m.State) {
			n += m.MemoryBytes
		}
	}
	return n
}

// statsTable formats a snapshot as stats prints it; times are shown relative to now.
func statsTable(s *client.MemorySnapshot, now time.Time) string {
	var buf bytes.Buffer
	w := tabwriter.NewWriter(&buf, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "DEVICE\tTOTAL\tUSED\tFREE")
	for _, d := range s.Devices {
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\n", d.Device, humanBytes(d.TotalBytes), humanBytes(d.UsedBytes), humanBytes(d.FreeBytes))
	}
	_ = w.Flush()
	buf.WriteString("\n")

	w = tabwriter.NewWriter(&buf, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "MODEL\tSTATE\tMEMORY\tPINNED\tIN-FLIGHT\tLAST USED\tEXPIRES\tREASON")
	for _, m := range s.Models {
		memory := "-"
		if m.MemoryBytes > 0 {
			memory = humanBytes(m.MemoryBytes)
			if m.MemorySource != "" {
				memory += " (" + string(m.MemorySource) + ")"
			}
		}
		pinned := "no"
		if m.Pinned {
			pinned = "yes"
		}
		lastUsed := "-"
		if !m.LastUsed.IsZero() {
			lastUsed = ago(now.Sub(m.LastUsed))
		}
		expires := "-"
		switch {
		case !m.ExpiresAt.IsZero():
			expires = "in " + roundDuration(m.ExpiresAt.Sub(now))
		case m.State == client.ModelStateLoaded:
			expires = "never"
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%d\t%s\t%s\t%s\n",
			m.Model, m.State, memory, pinned, m.InFlight, lastUsed, expires, m.Reason)
	}
	_ = w.Flush()
	fmt.Fprintf(&buf, "\nbudget: %s (%s held by models)\n", humanBytes(s.BudgetBytes), humanBytes(heldBytes(s)))

	// tabwriter pads every cell but the last; an empty REASON leaves the padding at the end.
	lines := strings.Split(buf.String(), "\n")
	for i, l := range lines {
		lines[i] = strings.TrimRight(l, " ")
	}
	return strings.Join(lines, "\n")
}

// ago formats how long ago something was: "30s ago", "just now" under a second (or in the
// future, when the clocks disagree).
func ago(d time.Duration) string {
	if d < time.Second {
		return "just now"
	}
	return roundDuration(d) + " ago"
}

// roundDuration formats d to the second, at least 0s.
func roundDuration(d time.Duration) string {
	return max(d, 0).Round(time.Second).String()
}

// humanBytes formats a byte count with binary units: "512 B", "1.5 KiB", "2.0 GiB".
func humanBytes(n uint64) string {
	const unit = 1024
	if n < unit {
		return strconv.FormatUint(n, 10) + " B"
	}
	div, exp := uint64(unit), 0
	for m := n / unit; m >= unit && exp < 4; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTP"[exp])
}

// listOrNone joins names with commas, or says "none".
func listOrNone(names []string) string {
	if len(names) == 0 {
		return "none"
	}
	return strings.Join(names, ", ")
}
