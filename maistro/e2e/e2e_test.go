//go:build unix

package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"image/png"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/inference-platform/maistro/client"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

const (
	// startupLimit bounds the wait for the adapter (and its embedded Triton) to report SERVING.
	startupLimit = 180 * time.Second
	// stopGrace is how long the adapter gets to shut down after SIGTERM before SIGKILL.
	stopGrace = 20 * time.Second
	// callLimit bounds each call; the first one may load the model (seconds on CPU).
	callLimit = 5 * time.Minute
	// embeddingDim is the dimension of the platform's embedding model, all-MiniLM-L6-v2.
	embeddingDim = 384
	// imageSize is the width and height of the pictures the image subtests ask for: small, so
	// that they are quick on any device.
	imageSize = 64
	// imagePoll is how often the image subtests ask for a job's status.
	imagePoll = 100 * time.Millisecond
)

func TestAdapterEndToEnd(t *testing.T) {
	if os.Getenv("MAISTRO_E2E") != "1" {
		t.Skip("end-to-end test against the real adapter: set MAISTRO_E2E=1 to run it " +
			"(needs <repo>/.venv with the adapter's dependencies)")
	}
	moduleDir := findModuleDir(t)
	repo := filepath.Dir(moduleDir)
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(freePort(t)))
	tritonMetrics := freePort(t)

	a := startAdapter(t, repo, addr, "EMBEDDED_TRITON_METRICS_PORT="+strconv.Itoa(tritonMetrics))
	a.waitServing(t, addr)
	metricsURL := fmt.Sprintf("http://127.0.0.1:%d/metrics", tritonMetrics)

	c, err := client.New(client.Config{Address: addr, DialTimeout: 10 * time.Second})
	if err != nil {
		t.Fatalf("client.New: %v", err)
	}
	defer c.Close()

	t.Run("chat streams a reply that ends with a finish reason and usage", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), callLimit)
		defer cancel()
		var chunks []client.ChatChunk
		res, err := c.Chat(ctx, &client.ChatRequest{
			Model:    "llm",
			Messages: []client.Message{{Role: client.RoleUser, Content: "Hello"}},
			Options:  client.Options{MaxTokens: new(int32(16)), Seed: new(uint64(1))},
		}, func(ch client.ChatChunk) error {
			chunks = append(chunks, ch)
			return nil
		})
		if err != nil {
			t.Fatalf("Chat: %v", err)
		}
		t.Logf("reply %q in %d chunks: finish_reason=%s usage=%+v timings=%+v",
			res.Text, len(chunks), res.FinishReason, res.Usage, res.Timings)

		if len(chunks) < 1 {
			t.Fatal("no chunk reached the callback")
		}
		for i, ch := range chunks {
			if ch.Done != (i == len(chunks)-1) {
				t.Errorf("chunk %d of %d has Done=%v; only the last may be done", i+1, len(chunks), ch.Done)
			}
		}
		if res.FinishReason != client.FinishReasonStop && res.FinishReason != client.FinishReasonLength {
			t.Errorf("finish reason %q, want stop or length", res.FinishReason)
		}
		if res.Usage.CompletionTokens <= 0 {
			t.Errorf("usage.completion_tokens = %d, want > 0", res.Usage.CompletionTokens)
		}
	})

	t.Run("generate streams a continuation", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), callLimit)
		defer cancel()
		chunks := 0
		res, err := c.Generate(ctx, &client.GenerateRequest{
			Model: "llm", Prompt: "Once upon a time",
			Options: client.Options{MaxTokens: new(int32(8)), Seed: new(uint64(1))},
		}, func(client.GenerateChunk) error { chunks++; return nil })
		if err != nil {
			t.Fatalf("Generate: %v", err)
		}
		t.Logf("continuation %q in %d chunks: finish_reason=%s usage=%+v", res.Text, chunks, res.FinishReason, res.Usage)
		if chunks < 1 || res.Usage.CompletionTokens <= 0 {
			t.Errorf("%d chunks, %d completion tokens: want some of each", chunks, res.Usage.CompletionTokens)
		}
		if res.FinishReason != client.FinishReasonStop && res.FinishReason != client.FinishReasonLength {
			t.Errorf("finish reason %q, want stop or length", res.FinishReason)
		}
	})

	t.Run("a cancelled chat stops its generation on the server", func(t *testing.T) {
		before := cancelledGenerations(t, metricsURL)
		// A long reply, cancelled after its first chunk. A model with random weights may end a
		// reply early; then the chat was not cancelled, and another seed is tried.
		cancelledOne := false
		for seed := uint64(1); seed <= 5 && !cancelledOne; seed++ {
			ctx, cancel := context.WithTimeout(context.Background(), callLimit)
			chunks := 0
			_, err := c.Chat(ctx, &client.ChatRequest{
				Model:    "llm",
				Messages: []client.Message{{Role: client.RoleUser, Content: "Tell me a very long story."}},
				Options:  client.Options{MaxTokens: new(int32(4000)), Seed: &seed},
			}, func(client.ChatChunk) error {
				if chunks++; chunks == 2 {
					cancel() // the caller gives up mid-reply
				}
				return nil
			})
			cancel()
			switch {
			case client.IsCanceled(err):
				cancelledOne = true
				t.Logf("seed %d: cancelled after %d chunks: %v", seed, chunks, err)
			case err != nil:
				t.Fatalf("Chat: %v", err)
			default:
				t.Logf("seed %d: the reply ended by itself after %d chunks; trying another", seed, chunks)
			}
		}
		if !cancelledOne {
			t.Fatal("no reply ran long enough to be cancelled")
		}
		// The model counts the request as finished with reason "cancelled" once it stops.
		deadline := time.Now().Add(30 * time.Second)
		for {
			after := cancelledGenerations(t, metricsURL)
			if after > before {
				t.Logf("llm_generation_requests_total{finish_reason=\"cancelled\"}: %v -> %v", before, after)
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("the llm model did not count a cancelled generation within 30s (still %v)", after)
			}
			time.Sleep(100 * time.Millisecond)
		}
	})

	t.Run("unknown model is NOT_FOUND", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), callLimit)
		defer cancel()
		_, err := c.Chat(ctx, &client.ChatRequest{
			Model:    "no-such-model-maistro-e2e",
			Messages: []client.Message{{Role: client.RoleUser, Content: "Hello"}},
		}, nil)
		if !client.IsNotFound(err) {
			t.Fatalf("Chat with an unknown model: error %v, want IsNotFound", err)
		}
		t.Logf("server said: %v", err)
	})

	t.Run("CLI chat prints a reply", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), callLimit)
		defer cancel()
		cmd := exec.CommandContext(ctx, "go", "run", ".", "chat",
			"--address", addr, "--max-tokens", "8", "--seed", "1", "Hello")
		cmd.Dir = moduleDir
		// The CLI must reach this adapter whatever the caller's environment says.
		cmd.Env = append(os.Environ(),
			client.EnvAddress+"=", client.EnvAPIKey+"=", client.EnvSecure+"=")
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err := cmd.Run()
		t.Logf("CLI stdout %q, stderr %q", stdout.String(), stderr.String())
		if err != nil {
			t.Fatalf("go run . chat: %v", err)
		}
		// The CLI ends the reply with a newline of its own; there must be text before it.
		if strings.TrimSuffix(stdout.String(), "\n") == "" {
			t.Errorf("stdout %q: no reply text", stdout.String())
		}
	})

	t.Run("embed returns unit vectors that put a paraphrase closer than an unrelated text", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), callLimit)
		defer cancel()
		inputs := []string{"a cat sits on the mat", "a kitten rests on the rug", "quarterly tax filing deadline"}
		res, err := c.Embed(ctx, &client.EmbedRequest{Model: "embedding", Inputs: inputs, Normalize: true})
		if err != nil {
			t.Fatalf("Embed: %v", err)
		}
		t.Logf("model=%s dimension=%d usage=%+v", res.Model, res.Dimension, res.Usage)
		if res.Dimension != embeddingDim || len(res.Embeddings) != len(inputs) {
			t.Fatalf("dimension %d with %d embeddings, want %d with %d", res.Dimension, len(res.Embeddings), embeddingDim, len(inputs))
		}
		for i, e := range res.Embeddings {
			if len(e.Vector) != embeddingDim {
				t.Errorf("embedding %d has %d values, want %d", i, len(e.Vector), embeddingDim)
			}
			var sq float64
			for _, x := range e.Vector {
				sq += float64(x) * float64(x)
			}
			if norm := math.Sqrt(sq); math.Abs(norm-1) > 1e-3 {
				t.Errorf("embedding %d has norm %v, want 1 (normalized)", i, norm)
			}
			if e.Tokens <= 0 || e.Truncated {
				t.Errorf("embedding %d: tokens=%d truncated=%v, want tokens > 0 and not truncated", i, e.Tokens, e.Truncated)
			}
		}
		near, err := client.CosineSimilarity(res.Embeddings[0].Vector, res.Embeddings[1].Vector)
		if err != nil {
			t.Fatal(err)
		}
		far, err := client.CosineSimilarity(res.Embeddings[0].Vector, res.Embeddings[2].Vector)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("cos(cat, kitten)=%.4f cos(cat, tax)=%.4f", near, far)
		if near <= far {
			t.Errorf("cos(%q, %q) = %.4f is not above cos(%q, %q) = %.4f",
				inputs[0], inputs[1], near, inputs[0], inputs[2], far)
		}
	})

	t.Run("embed with no inputs is INVALID_ARGUMENT", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), callLimit)
		defer cancel()
		_, err := c.Embed(ctx, &client.EmbedRequest{Model: "embedding"})
		if !client.IsInvalidArgument(err) {
			t.Fatalf("Embed with no inputs: error %v, want IsInvalidArgument", err)
		}
		t.Logf("server said: %v", err)
	})

	t.Run("CLI embed prints the dimension", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), callLimit)
		defer cancel()
		cmd := exec.CommandContext(ctx, "go", "run", ".", "embed", "--address", addr, "hello world")
		cmd.Dir = moduleDir
		cmd.Env = append(os.Environ(),
			client.EnvAddress+"=", client.EnvAPIKey+"=", client.EnvSecure+"=")
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err := cmd.Run()
		t.Logf("CLI stdout %q, stderr %q", stdout.String(), stderr.String())
		if err != nil {
			t.Fatalf("go run . embed: %v", err)
		}
		if want := "dim=" + strconv.Itoa(embeddingDim); !strings.Contains(stdout.String(), want) {
			t.Errorf("stdout %q has no %q", stdout.String(), want)
		}
	})

	// The edit subtest repaints the picture that the generate subtest made.
	var generated []byte

	t.Run("image generate reports progress to the last step and returns one 64x64 PNG", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), callLimit)
		defer cancel()
		id, err := c.GenerateImage(ctx, &client.ImageRequest{
			Model: "image", Prompt: "a red square", Width: imageSize, Height: imageSize, Steps: 2, Seed: new(uint64(1)),
		})
		if err != nil {
			t.Fatalf("GenerateImage: %v", err)
		}
		var (
			seen    []string
			maxStep int
		)
		job, err := c.WaitForImage(ctx, id, imagePoll, func(j *client.ImageJob) {
			seen = append(seen, fmt.Sprintf("%s %d/%d", j.State, j.Step, j.TotalSteps))
			maxStep = max(maxStep, j.Step)
		})
		t.Logf("job %s went through %q", id, seen)
		if err != nil {
			t.Fatalf("WaitForImage: %v", err)
		}
		if job.State != client.JobStateSucceeded || job.ID != id {
			t.Errorf("job %q in state %q, want job %q succeeded", job.ID, job.State, id)
		}
		if job.TotalSteps != 2 || maxStep != job.TotalSteps {
			t.Errorf("progress reached step %d of %d, want 2 of 2", maxStep, job.TotalSteps)
		}
		if job.CreatedAt.IsZero() || job.FinishedAt.Before(job.CreatedAt) {
			t.Errorf("created_at %v, finished_at %v: want both set, in that order", job.CreatedAt, job.FinishedAt)
		}
		if len(job.Images) != 1 {
			t.Fatalf("%d images, want 1", len(job.Images))
		}
		im := job.Images[0]
		if im.Width != imageSize || im.Height != imageSize {
			t.Errorf("image reported as %dx%d, want %dx%d", im.Width, im.Height, imageSize, imageSize)
		}
		checkPNG(t, im.PNG, imageSize, imageSize)
		generated = im.PNG
	})

	t.Run("image edit of the generated picture with strength 0.5 succeeds", func(t *testing.T) {
		if generated == nil {
			t.Fatal("no picture to edit: the generate subtest did not make one")
		}
		ctx, cancel := context.WithTimeout(context.Background(), callLimit)
		defer cancel()
		id, err := c.EditImage(ctx, &client.EditRequest{
			ImageRequest: client.ImageRequest{
				Model: "image", Prompt: "a blue square", Width: imageSize, Height: imageSize, Steps: 2, Seed: new(uint64(1)),
			},
			Image:    generated,
			Strength: new(float32(0.5)),
		})
		if err != nil {
			t.Fatalf("EditImage: %v", err)
		}
		job, err := c.WaitForImage(ctx, id, imagePoll, nil)
		if err != nil {
			t.Fatalf("WaitForImage: %v", err)
		}
		t.Logf("job %s: %s at step %d/%d with %d images", id, job.State, job.Step, job.TotalSteps, len(job.Images))
		if job.State != client.JobStateSucceeded || len(job.Images) != 1 {
			t.Fatalf("job in state %q with %d images, want succeeded with 1", job.State, len(job.Images))
		}
		checkPNG(t, job.Images[0].PNG, imageSize, imageSize)
	})

	t.Run("image status of an unknown job is NOT_FOUND", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), callLimit)
		defer cancel()
		_, err := c.ImageStatus(ctx, "no-such-job-maistro-e2e")
		if !client.IsNotFound(err) {
			t.Fatalf("ImageStatus of an unknown job: error %v, want IsNotFound", err)
		}
		t.Logf("server said: %v", err)
	})

	t.Run("CLI image generate saves one PNG and prints its path", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), callLimit)
		defer cancel()
		out := t.TempDir()
		cmd := exec.CommandContext(ctx, "go", "run", ".", "image", "generate", "--address", addr,
			"--width", strconv.Itoa(imageSize), "--height", strconv.Itoa(imageSize), "--steps", "2",
			"--out-dir", out, "a cat")
		cmd.Dir = moduleDir
		cmd.Env = append(os.Environ(),
			client.EnvAddress+"=", client.EnvAPIKey+"=", client.EnvSecure+"=")
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err := cmd.Run()
		t.Logf("CLI stdout %q, stderr %q", stdout.String(), stderr.String())
		if err != nil {
			t.Fatalf("go run . image generate: %v", err)
		}
		files, err := filepath.Glob(filepath.Join(out, "*.png"))
		if err != nil {
			t.Fatal(err)
		}
		if len(files) != 1 {
			t.Fatalf("%d PNG files in the output directory (%q), want 1", len(files), files)
		}
		if stdout.String() != files[0]+"\n" {
			t.Errorf("stdout %q, want the file's path %q", stdout.String(), files[0])
		}
		data, err := os.ReadFile(files[0])
		if err != nil {
			t.Fatal(err)
		}
		checkPNG(t, data, imageSize, imageSize)
	})

	// The memory subtests come last: they unload models that the ones above use.

	t.Run("memory stats list a device with memory and the llm model", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), callLimit)
		defer cancel()
		snap, err := c.MemoryStats(ctx)
		if err != nil {
			t.Fatalf("MemoryStats: %v", err)
		}
		logSnapshot(t, snap)
		if !slices.ContainsFunc(snap.Devices, func(d client.DeviceMemory) bool { return d.TotalBytes > 0 }) {
			t.Errorf("devices %+v: none with total_bytes > 0", snap.Devices)
		}
		if snap.Model("llm") == nil {
			t.Errorf("models %+v: no llm", snap.Models)
		}
	})

	t.Run("VRAM session: unload and load send events, pin and unpin, an unknown model leaves the session open", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), callLimit)
		defer cancel()
		s, err := c.OpenVRAMSession(ctx)
		if err != nil {
			t.Fatalf("OpenVRAMSession: %v", err)
		}
		defer s.Close()
		w := &eventWatch{t: t, s: s}

		if err := s.Subscribe(ctx, 200*time.Millisecond); err != nil {
			t.Fatalf("Subscribe: %v", err)
		}
		// Loaded first, so that the unload has something to unload.
		if err := s.Load(ctx, "embedding"); err != nil {
			t.Fatalf("Load(embedding): %v", err)
		}
		if err := s.Unload(ctx, "embedding"); err != nil {
			t.Fatalf("Unload(embedding): %v", err)
		}
		w.waitFor(ctx, "embedding", client.ModelUnloaded)
		if err := s.Load(ctx, "embedding"); err != nil {
			t.Fatalf("Load(embedding) after the unload: %v", err)
		}
		w.waitFor(ctx, "embedding", client.ModelLoaded)
		w.waitForSnapshot(ctx)

		for _, pinned := range []bool{true, false} {
			pin, name := s.Pin, "Pin"
			if !pinned {
				pin, name = s.Unpin, "Unpin"
			}
			if err := pin(ctx, "llm"); err != nil {
				t.Fatalf("%s(llm): %v", name, err)
			}
			snap, err := s.Status(ctx)
			if err != nil {
				t.Fatalf("Status after %s: %v", name, err)
			}
			if m := snap.Model("llm"); m == nil || m.Pinned != pinned {
				t.Errorf("after %s(llm) the status says %+v, want pinned=%v", name, m, pinned)
			}
		}

		err = s.Load(ctx, "no-such-model-maistro-e2e")
		if !client.IsNotFound(err) {
			t.Fatalf("Load of an unknown model: error %v, want IsNotFound", err)
		}
		t.Logf("server said: %v", err)
		snap, err := s.Status(ctx)
		if err != nil {
			t.Fatalf("Status after an error result: %v (session error: %v)", err, s.Err())
		}
		if len(snap.Devices) == 0 {
			t.Errorf("Status after an error result: no devices")
		}
	})

	t.Run("clear memory names only known models", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), callLimit)
		defer cancel()
		snap, err := c.MemoryStats(ctx)
		if err != nil {
			t.Fatalf("MemoryStats: %v", err)
		}
		known := map[string]bool{}
		for _, m := range snap.Models {
			known[m.Model] = true
		}
		res, err := c.ClearMemory(ctx, client.ClearOptions{})
		if err != nil {
			t.Fatalf("ClearMemory: %v", err)
		}
		t.Logf("unloaded %q, skipped %q, freed %d bytes", res.Unloaded, res.Skipped, res.FreedBytes)
		unloaded := map[string]bool{}
		for _, m := range res.Unloaded {
			unloaded[m] = true
			if !known[m] {
				t.Errorf("unloaded %q, which the stats do not list", m)
			}
		}
		for _, entry := range res.Skipped {
			m := skippedModel(entry)
			if !known[m] {
				t.Errorf("skipped %q (model %q), which the stats do not list", entry, m)
			}
			if unloaded[m] {
				t.Errorf("%q is both unloaded and skipped", m)
			}
		}
	})

	t.Run("CLI stats prints the models and the budget", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), callLimit)
		defer cancel()
		cmd := exec.CommandContext(ctx, "go", "run", ".", "stats", "--address", addr)
		cmd.Dir = moduleDir
		cmd.Env = append(os.Environ(),
			client.EnvAddress+"=", client.EnvAPIKey+"=", client.EnvSecure+"=")
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err := cmd.Run()
		t.Logf("CLI stdout:\n%s\nstderr %q", stdout.String(), stderr.String())
		if err != nil {
			t.Fatalf("go run . stats: %v", err)
		}
		for _, want := range []string{"DEVICE", "llm", "budget: "} {
			if !strings.Contains(stdout.String(), want) {
				t.Errorf("stdout has no %q", want)
			}
		}
	})
}

// cancelledGenerations reads the llm model's count of generations that ended because their
// request was cancelled, from Triton's metrics endpoint.
func cancelledGenerations(t *testing.T, metricsURL string) float64 {
	t.Helper()
	resp, err := http.Get(metricsURL)
	if err != nil {
		t.Fatalf("Triton metrics: %v", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("Triton metrics: %v", err)
	}
	total := 0.0
	for line := range strings.SplitSeq(string(body), "\n") {
		if !strings.HasPrefix(line, "llm_generation_requests_total{") || !strings.Contains(line, `finish_reason="cancelled"`) {
			continue
		}
		fields := strings.Fields(line)
		v, err := strconv.ParseFloat(fields[len(fields)-1], 64)
		if err != nil {
			t.Fatalf("Triton metrics line %q: %v", line, err)
		}
		total += v
	}
	return total
}

// logSnapshot writes a memory snapshot to the test's log.
func logSnapshot(t *testing.T, snap *client.MemorySnapshot) {
	t.Helper()
	for _, d := range snap.Devices {
		t.Logf("device %s: total %d, used %d, free %d", d.Device, d.TotalBytes, d.UsedBytes, d.FreeBytes)
	}
	for _, m := range snap.Models {
		t.Logf("model %s: %s, %d bytes (%s), pinned=%v in_flight=%d reason=%q",
			m.Model, m.State, m.MemoryBytes, m.MemorySource, m.Pinned, m.InFlight, m.Reason)
	}
	t.Logf("budget %d bytes", snap.BudgetBytes)
}

// eventWatch reads a VRAM session's events in order, logging them and counting snapshots.
type eventWatch struct {
	t         *testing.T
	s         *client.VRAMSession
	snapshots int
}

// next returns the session's next event; it fails the test when the session ends or ctx does.
func (w *eventWatch) next(ctx context.Context) client.SessionEvent {
	w.t.Helper()
	select {
	case ev, ok := <-w.s.Events():
		if !ok {
			w.t.Fatalf("the session ended: %v", w.s.Err())
		}
		if ev.Snapshot != nil {
			w.snapshots++
		}
		if ev.Event != nil {
			w.t.Logf("event: %s %s (%s) %d bytes", ev.Event.Kind, ev.Event.Model, ev.Event.Reason, ev.Event.MemoryBytes)
		}
		return ev
	case <-ctx.Done():
		w.t.Fatalf("waiting for an event: %v", ctx.Err())
	}
	return client.SessionEvent{}
}

// waitFor takes events until one says kind happened to model.
func (w *eventWatch) waitFor(ctx context.Context, model string, kind client.ModelEventKind) {
	w.t.Helper()
	for {
		if ev := w.next(ctx); ev.Event != nil && ev.Event.Model == model && ev.Event.Kind == kind {
			return
		}
	}
}

// waitForSnapshot returns once a subscribed snapshot has arrived, now or before.
func (w *eventWatch) waitForSnapshot(ctx context.Context) {
	w.t.Helper()
	for w.snapshots == 0 {
		w.next(ctx)
	}
}

// skippedModel is the model named by an entry of ClearResult.Skipped, which may add why after
// the name: "llm (pinned)", "llm: busy".
func skippedModel(entry string) string {
	if i := strings.IndexAny(entry, " :("); i >= 0 {
		return entry[:i]
	}
	return entry
}

// adapter is the adapter process under test.
type adapter struct {
	cmd     *exec.Cmd
	output  *lockedBuffer // stdout and stderr, interleaved
	exited  chan struct{} // closed once the process has been waited for
	waitErr error         // cmd.Wait's result, valid after exited is closed
}

// startAdapter runs `<repo>/.venv/bin/python -m adapter` in the repository's root, listening on
// addr (127.0.0.1:port), with env ("KEY=value") added to its environment, and arranges for it to be stopped when the test ends. Its output goes
// to the test's log if the test fails.
func startAdapter(t *testing.T, repo, addr string, env ...string) *adapter {
	t.Helper()
	python := filepath.Join(repo, ".venv", "bin", "python")
	if _, err := os.Stat(python); err != nil {
		t.Fatalf("adapter interpreter: %v (create the virtualenv at %s/.venv)", err, repo)
	}
	_, port, _ := net.SplitHostPort(addr)

	cmd := exec.Command(python, "-m", "adapter")
	cmd.Dir = repo
	cmd.Env = append(os.Environ(), // later entries win over inherited ones
		"GRPC_PORT="+port,
		"GRPC_HOST=127.0.0.1",
		"METRICS_PORT=0",
		"PYTHONUNBUFFERED=1", // so the log is complete if the test fails
		// The tiny random-weight LLM keeps these tests fast; chat_model_test.go asks for the
		// trained one (the adapter's own default) where the meaning of a reply is checked.
		"LLM_MODEL_ID="+filepath.Join(modelCacheDir(t), "tiny-chat-llm"),
	)
	cmd.Env = append(cmd.Env, env...)
	out := &lockedBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	// Own process group: if the adapter has to be killed, its children (the embedded Triton
	// and its model stubs) go with it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	// A child that outlives the adapter may hold the output pipes open; don't wait on it forever.
	cmd.WaitDelay = 5 * time.Second

	if err := cmd.Start(); err != nil {
		t.Fatalf("starting the adapter: %v", err)
	}
	a := &adapter{cmd: cmd, output: out, exited: make(chan struct{})}
	go func() {
		a.waitErr = cmd.Wait()
		close(a.exited)
	}()
	t.Logf("started adapter (pid %d) on %s: %s -m adapter in %s", cmd.Process.Pid, addr, python, repo)

	t.Cleanup(func() {
		a.stop(t)
		if t.Failed() {
			t.Logf("adapter output:\n%s", out.String())
		}
	})
	return a
}

// waitServing polls grpc.health.v1 (over creds, plain text when none) Check(service="") until the adapter reports SERVING, and
// fails the test if the adapter exits first or startupLimit passes.
func (a *adapter) waitServing(t *testing.T, addr string, creds ...grpc.DialOption) {
	t.Helper()
	// Short reconnect backoff: the port is closed until the adapter binds it, and gRPC's default
	// backoff would grow to minutes while we wait.
	bo := backoff.DefaultConfig
	bo.MaxDelay = 500 * time.Millisecond
	if len(creds) == 0 {
		creds = []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}
	}
	conn, err := grpc.NewClient(addr, append(creds,
		grpc.WithConnectParams(grpc.ConnectParams{Backoff: bo, MinConnectTimeout: 2 * time.Second}))...)
	if err != nil {
		t.Fatalf("health connection: %v", err)
	}
	defer conn.Close()
	health := healthpb.NewHealthClient(conn)

	start := time.Now()
	deadline := time.NewTimer(startupLimit)
	defer deadline.Stop()
	poll := time.NewTicker(250 * time.Millisecond)
	defer poll.Stop()
	var last string
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		resp, err := health.Check(ctx, &healthpb.HealthCheckRequest{Service: ""})
		cancel()
		switch {
		case err != nil:
			last = err.Error()
		case resp.GetStatus() == healthpb.HealthCheckResponse_SERVING:
			t.Logf("adapter SERVING after %s", time.Since(start).Round(time.Millisecond))
			return
		default:
			last = resp.GetStatus().String()
		}
		select {
		case <-a.exited:
			t.Fatalf("adapter exited before it was SERVING: %v", a.waitErr)
		case <-deadline.C:
			t.Fatalf("adapter not SERVING after %s; last health check: %s", startupLimit, last)
		case <-poll.C:
		}
	}
}

// stop sends SIGTERM to the adapter and waits for it to exit; after stopGrace it kills the
// adapter's whole process group. Children left running after the adapter exits are killed too.
func (a *adapter) stop(t *testing.T) {
	pid := a.cmd.Process.Pid // also the process group's id (Setpgid)
	select {
	case <-a.exited:
		t.Logf("adapter had already exited: %v", a.waitErr)
	default:
		if err := a.cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
			t.Errorf("SIGTERM to the adapter: %v", err)
		}
		select {
		case <-a.exited:
			if a.waitErr != nil {
				t.Logf("adapter exit after SIGTERM: %v", a.waitErr)
			}
		case <-time.After(stopGrace):
			t.Errorf("adapter still running %s after SIGTERM; killing its process group", stopGrace)
			_ = syscall.Kill(-pid, syscall.SIGKILL)
			<-a.exited
		}
	}
	// Signal 0 only checks whether any process of the group is left.
	if syscall.Kill(-pid, 0) == nil {
		t.Logf("processes of the adapter's group outlived it; killing them")
		_ = syscall.Kill(-pid, syscall.SIGKILL)
	}
}

// checkPNG fails the test unless data decodes as a PNG of width x height.
func checkPNG(t *testing.T, data []byte, width, height int) {
	t.Helper()
	img, err := png.Decode(bytes.NewReader(data))
	if err != nil {
		t.Fatalf("the image (%d bytes) is not a PNG: %v", len(data), err)
	}
	if b := img.Bounds(); b.Dx() != width || b.Dy() != height {
		t.Errorf("the PNG is %dx%d, want %dx%d", b.Dx(), b.Dy(), width, height)
	}
}

// findModuleDir returns the directory of maistro's go.mod, above the test's working directory.
func findModuleDir(t *testing.T) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("no go.mod above the working directory")
		}
		dir = parent
	}
}

// freePort asks the kernel for a free loopback port. Another process could take it before the
// adapter binds it; the adapter then fails to start and the test says so.
// modelCacheDir is where scripts/build_small_models.py puts the local models.
func modelCacheDir(t *testing.T) string {
	t.Helper()
	if dir := os.Getenv("MODEL_CACHE_DIR"); dir != "" {
		return dir
	}
	home, err := os.UserHomeDir()
	if err != nil {
		t.Fatalf("home directory: %v", err)
	}
	return filepath.Join(home, ".cache", "inference-platform", "models")
}

func freePort(t *testing.T) int {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	return lis.Addr().(*net.TCPAddr).Port
}

// lockedBuffer collects a process's output from the goroutines that exec starts.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
