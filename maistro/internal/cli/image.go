package cli

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/inference-platform/maistro/client"
	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"
	"golang.org/x/term"
)

// defaultImageModel is the image model's name in the platform's model repository.
const defaultImageModel = "image"

// imageFlags are the flags of image generate and image edit.
type imageFlags struct {
	model         string
	negative      string
	width, height int32
	steps         int32
	guidance      float32
	seed          uint64
	numImages     int32
	keepAlive     keepAliveFlag
	poll          time.Duration
	noWait        bool
	outDir        string
}

func addImageFlags(cmd *cobra.Command, f *imageFlags) {
	flags := cmd.Flags()
	flags.StringVar(&f.model, "model", defaultImageModel, "image model name as the server serves it")
	flags.StringVar(&f.negative, "negative", "", "negative prompt: what the picture should not show")
	flags.Int32Var(&f.width, "width", 0, "width in pixels, a multiple of 8 (default: the model's)")
	flags.Int32Var(&f.height, "height", 0, "height in pixels, a multiple of 8 (default: the model's)")
	flags.Int32Var(&f.steps, "steps", 0, "denoising steps (default: the model's)")
	flags.Float32Var(&f.guidance, "guidance", 0, "guidance scale: how closely to follow the prompt (default: the model's)")
	flags.Uint64Var(&f.seed, "seed", 0, "seed, for reproducible pictures (default: random)")
	flags.Int32Var(&f.numImages, "num-images", 0, "pictures to make (default: 1)")
	f.keepAlive.add(cmd)
	flags.DurationVar(&f.poll, "poll", client.DefaultPollInterval, "how often to ask for the job's status while waiting")
	flags.BoolVar(&f.noWait, "no-wait", false, "print the job id and return without waiting (see: maistro image status)")
	flags.StringVar(&f.outDir, "out-dir", ".", "directory the pictures are saved to, as <job id>-<n>.png")
}

// request turns the prompt and the flags that were given into a client.ImageRequest; flags left
// out stay zero or nil so that the model's defaults apply.
func (f *imageFlags) request(cmd *cobra.Command, args []string) client.ImageRequest {
	changed := cmd.Flags().Changed
	req := client.ImageRequest{
		Model:          f.model,
		Prompt:         strings.Join(args, " "),
		NegativePrompt: f.negative,
		Width:          f.width,
		Height:         f.height,
		Steps:          f.steps,
		NumImages:      f.numImages,
		KeepAlive:      f.keepAlive.option(cmd),
	}
	if changed("guidance") {
		req.GuidanceScale = &f.guidance
	}
	if changed("seed") {
		req.Seed = &f.seed
	}
	return req
}

func newImageCommand(g *globalFlags) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "image",
		Short: "Generate and edit pictures: jobs that run on the server while maistro follows them",
		Long: "Image jobs run in the background on the server. generate and edit submit one, then wait\n" +
			"for it with a progress bar (on a terminal) and save its pictures to --out-dir as\n" +
			"<job id>-<n>.png (n from 0), printing each path. With --no-wait they print the job id\n" +
			"instead, for image status to follow. With --json they print the finished job as one JSON\n" +
			"object, with the saved files' paths instead of the pictures.",
	}
	cmd.AddCommand(newImageGenerateCommand(g), newImageEditCommand(g), newImageStatusCommand(g))
	return cmd
}

func newImageGenerateCommand(g *globalFlags) *cobra.Command {
	f := &imageFlags{}
	cmd := &cobra.Command{
		Use:   "generate [flags] PROMPT...",
		Short: "Make pictures from a prompt (the arguments, joined by spaces)",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cmd.SilenceUsage = true
			return g.withClient(cmd, func(c *client.Client) error {
				req := f.request(cmd, args)
				id, err := c.GenerateImage(cmd.Context(), &req)
				if err != nil {
					return err
				}
				return g.followJob(cmd, c, id, f)
			})
		},
	}
	addImageFlags(cmd, f)
	return cmd
}

func newImageEditCommand(g *globalFlags) *cobra.Command {
	f := &imageFlags{}
	var (
		imagePath, maskPath string
		strength            float32
	)
	cmd := &cobra.Command{
		Use:   "edit --image FILE [--mask FILE] [flags] PROMPT...",
		Short: "Repaint a picture after a prompt (the arguments, joined by spaces); with --mask, only part of it",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cmd.SilenceUsage = true
			req := &client.EditRequest{ImageRequest: f.request(cmd, args)}
			var err error
			if req.Image, err = os.ReadFile(imagePath); err != nil {
				return err
			}
			if maskPath != "" {
				if req.Mask, err = os.ReadFile(maskPath); err != nil {
					return err
				}
			}
			if cmd.Flags().Changed("strength") {
				req.Strength = &strength
			}

			return g.withClient(cmd, func(c *client.Client) error {
				id, err := c.EditImage(cmd.Context(), req)
				if err != nil {
					return err
				}
				return g.followJob(cmd, c, id, f)
			})
		},
	}
	addImageFlags(cmd, f)
	flags := cmd.Flags()
	flags.StringVar(&imagePath, "image", "", "the picture to edit: a PNG, JPEG or WebP file (required)")
	flags.StringVar(&maskPath, "mask", "", "mask file of the picture's size: white areas are repainted, black areas kept")
	flags.Float32Var(&strength, "strength", 0, "how much of the picture to change, in [0, 1] (default: the model's)")
	_ = cmd.MarkFlagRequired("image")
	return cmd
}

func newImageStatusCommand(g *globalFlags) *cobra.Command {
	var (
		save   bool
		outDir string
	)
	cmd := &cobra.Command{
		Use:   "status [flags] JOBID",
		Short: "Print a job's state and progress (and its error, if it failed); --save saves its pictures",
		Long: "status prints one line about the job:\n\n" +
			"  job=<id> state=running step=3/20\n\n" +
			"ending with images=<n> once it has succeeded, or error=\"<message>\" if it failed; with\n" +
			"--save it then saves the pictures of a job that has succeeded and prints their paths.\n" +
			"It exits 0 whatever the job's state; an unknown job is an error (NOT_FOUND).",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cmd.SilenceUsage = true
			return g.withClient(cmd, func(c *client.Client) error {
				job, err := c.ImageStatus(cmd.Context(), args[0])
				if err != nil {
					return err
				}
				var paths []string
				if save {
					if paths, err = saveImages(outDir, job); err != nil {
						return err
					}
				}
				if g.json {
					return json.NewEncoder(cmd.OutOrStdout()).Encode(jobJSON(job, paths))
				}
				var b strings.Builder
				fmt.Fprintf(&b, "job=%s state=%s step=%d/%d", job.ID, job.State, job.Step, job.TotalSteps)
				switch job.State {
				case client.JobStateSucceeded:
					fmt.Fprintf(&b, " images=%d", len(job.Images))
				case client.JobStateFailed:
					fmt.Fprintf(&b, " error=%q", job.Error)
				}
				b.WriteByte('\n')
				for _, p := range paths {
					b.WriteString(p + "\n")
				}
				_, err = io.WriteString(cmd.OutOrStdout(), b.String())
				return err
			})
		},
	}
	flags := cmd.Flags()
	flags.BoolVar(&save, "save", false, "save the pictures of a job that has succeeded")
	flags.StringVar(&outDir, "out-dir", ".", "directory the pictures are saved to, as <job id>-<n>.png")
	return cmd
}

// followJob ends generate and edit once the job is submitted: it prints the id (--no-wait), or
// waits for the job with a progress bar, saves its pictures and prints their paths (or the job
// as JSON). A job that failed is an error: "job <id> failed: <message>".
func (g *globalFlags) followJob(cmd *cobra.Command, c *client.Client, id string, f *imageFlags) error {
	out, errOut := cmd.OutOrStdout(), cmd.ErrOrStderr()
	if f.noWait {
		if g.json {
			return json.NewEncoder(out).Encode(struct {
				ID string `json:"id"`
			}{id})
		}
		_, err := fmt.Fprintln(out, id)
		return err
	}

	bar := newProgress(errOut, !g.json && isTerminal(errOut))
	start := time.Now()
	job, err := c.WaitForImage(cmd.Context(), id, f.poll, bar.update)
	bar.done()
	var failed *client.JobFailedError
	if err != nil && !errors.As(err, &failed) {
		if !client.IsNotFound(err) {
			// The job goes on without us; say how to find it again.
			fmt.Fprintf(errOut, "job %s was submitted; follow it with: maistro image status %s\n", id, id)
		}
		return err
	}

	paths, saveErr := saveImages(f.outDir, job)
	if saveErr != nil {
		return saveErr
	}
	var printErr error
	if g.json {
		printErr = json.NewEncoder(out).Encode(jobJSON(job, paths))
	} else if len(paths) > 0 {
		_, printErr = io.WriteString(out, strings.Join(paths, "\n")+"\n")
	}
	if g.verbose {
		took := "-"
		if !job.CreatedAt.IsZero() && !job.FinishedAt.IsZero() {
			took = job.FinishedAt.Sub(job.CreatedAt).Round(time.Millisecond).String()
		}
		fmt.Fprintf(errOut, "job=%s state=%s steps=%d/%d images=%d job_time=%s wall=%s\n",
			job.ID, job.State, job.Step, job.TotalSteps, len(job.Images), took,
			time.Since(start).Round(time.Millisecond))
	}
	if err != nil {
		return err // the job failed
	}
	return printErr
}

// saveImages writes a job's pictures to dir (made if missing) as <job id>-<n>.png and returns
// their paths, in order.
func saveImages(dir string, job *client.ImageJob) ([]string, error) {
	if len(job.Images) == 0 {
		return nil, nil
	}
	// The id comes from the server and becomes part of a file name: it must not lead elsewhere.
	if job.ID == "" || job.ID == "." || job.ID == ".." || strings.ContainsAny(job.ID, `/\`+"\x00") {
		return nil, fmt.Errorf("job id %q cannot name a file", job.ID)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	paths := make([]string, len(job.Images))
	for i, im := range job.Images {
		paths[i] = filepath.Join(dir, fmt.Sprintf("%s-%d.png", job.ID, i))
		if err := os.WriteFile(paths[i], im.PNG, 0o644); err != nil {
			return nil, err
		}
	}
	return paths, nil
}

// imageJobJSON is a job as --json prints it: the pictures' files rather than their bytes.
type imageJobJSON struct {
	ID         string          `json:"id"`
	State      client.JobState `json:"state"`
	Step       int             `json:"step"`
	TotalSteps int             `json:"total_steps"`
	Error      string          `json:"error,omitempty"`
	Images     []savedImage    `json:"images"`
	CreatedAt  time.Time       `json:"created_at,omitzero"`
	FinishedAt time.Time       `json:"finished_at,omitzero"`
}

// savedImage is one picture of a job: its file (absent when it was not saved) and its size.
type savedImage struct {
	Path   string `json:"path,omitempty"`
	Width  int    `json:"width"`
	Height int    `json:"height"`
}

// jobJSON describes job for --json; paths, when not nil, are its pictures' files in order.
func jobJSON(job *client.ImageJob, paths []string) imageJobJSON {
	v := imageJobJSON{
		ID: job.ID, State: job.State, Step: job.Step, TotalSteps: job.TotalSteps, Error: job.Error,
		Images: make([]savedImage, len(job.Images)), CreatedAt: job.CreatedAt, FinishedAt: job.FinishedAt,
	}
	for i, im := range job.Images {
		v.Images[i] = savedImage{Width: im.Width, Height: im.Height}
		if i < len(paths) {
			v.Images[i].Path = paths[i]
		}
	}
	return v
}

// isTerminal reports whether a stream (stdin, stdout or stderr) is a terminal: where a progress
// bar can redraw itself, or where a person types a conversation.
func isTerminal(stream any) bool {
	f, ok := stream.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// progress shows an image job's progress as a bar that redraws itself on one line of w; it
// does nothing when it is off. It is drawn only when the job changes (WaitForImage's progress
// callback), never from a goroutine of its own.
type progress struct {
	w   io.Writer
	on  bool
	bar *progressbar.ProgressBar
}

func newProgress(w io.Writer, on bool) *progress {
	return &progress{w: w, on: on}
}

// update draws job's state and step; the bar counts steps once the job knows their total.
func (p *progress) update(job *client.ImageJob) {
	if !p.on {
		return
	}
	total := job.TotalSteps
	if total <= 0 {
		total = -1 // unknown yet (queued): a spinner
	}
	if p.bar == nil {
		p.bar = progressbar.NewOptions(total,
			progressbar.OptionSetWriter(p.w),
			progressbar.OptionSetWidth(30),
			progressbar.OptionShowCount(),
			progressbar.OptionSetItsString("steps"),
			progressbar.OptionSetElapsedTime(true),
			progressbar.OptionSetPredictTime(false),
			progressbar.OptionSetSpinnerChangeInterval(0), // no redrawing goroutine
		)
	} else if p.bar.GetMax() != total {
		p.bar.ChangeMax(total)
	}
	p.bar.Describe(fmt.Sprintf("%-9s", job.State))
	_ = p.bar.Set(job.Step)
}

// done erases the bar, so that what follows starts on a clean line.
func (p *progress) done() {
	if p.bar == nil {
		return
	}
	_ = p.bar.Exit()
	_ = p.bar.Clear()
}
