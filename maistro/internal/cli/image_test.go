package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/inference-platform/maistro/client"
	pb "github.com/inference-platform/maistro/internal/gen/inference"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
)

// The fake server's image jobs: every job is fakeJobID; its first status is queued, the second
// running at step 1 of 2, and every later one succeeded with the pictures fakePNG(0), fakePNG(1)...
// (as many as the job asked for) or, with jobFailure set, failed at step 1.
const fakeJobID = "job-1"

func fakePNG(i int) []byte {
	return fmt.Appendf(nil, "\x89PNG\r\n\x1a\nfake picture %d", i)
}

func (f *fakeServer) generateImage(_ context.Context, req *pb.GenerateImageRequest) (*pb.GenerateImageResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.lastGenImage = req
	f.numImages = req.GetOptions().GetNumImages()
	if f.err != nil {
		return nil, f.err
	}
	return &pb.GenerateImageResponse{JobId: fakeJobID}, nil
}

func (f *fakeServer) editImage(_ context.Context, req *pb.EditImageRequest) (*pb.EditImageResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.lastEditImage = req
	f.numImages = req.GetOptions().GetNumImages()
	if f.err != nil {
		return nil, f.err
	}
	return &pb.EditImageResponse{JobId: fakeJobID}, nil
}

func (f *fakeServer) imageStatus(_ context.Context, req *pb.CheckImageStatusRequest) (*pb.CheckImageStatusResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return nil, f.err
	}
	if req.GetJobId() != fakeJobID {
		return nil, status.Errorf(codes.NotFound, "image job %q is not known", req.GetJobId())
	}
	n := f.statusCalls
	f.statusCalls++
	resp := &pb.CheckImageStatusResponse{JobId: fakeJobID}
	switch {
	case n == 0:
		resp.State = pb.JobState_JOB_STATE_QUEUED
	case n == 1:
		resp.State, resp.Step, resp.TotalSteps = pb.JobState_JOB_STATE_RUNNING, 1, 2
	case f.jobFailure != "":
		resp.State, resp.Step, resp.TotalSteps = pb.JobState_JOB_STATE_FAILED, 1, 2
		resp.ErrorMessage = f.jobFailure
	default:
		resp.State, resp.Step, resp.TotalSteps = pb.JobState_JOB_STATE_SUCCEEDED, 2, 2
		for i := range max(f.numImages, 1) {
			resp.Images = append(resp.Images, &pb.Image{Png: fakePNG(int(i)), Width: 64, Height: 64})
		}
	}
	return resp, nil
}

func (f *fakeServer) calls() (statusCalls int, gen *pb.GenerateImageRequest, edit *pb.EditImageRequest) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.statusCalls, f.lastGenImage, f.lastEditImage
}

// pngFiles returns the names of the .png files in dir.
func pngFiles(t *testing.T, dir string) []string {
	t.Helper()
	names, err := filepath.Glob(filepath.Join(dir, "*.png"))
	if err != nil {
		t.Fatal(err)
	}
	for i, n := range names {
		names[i] = filepath.Base(n)
	}
	return names
}

func TestImageCommands(t *testing.T) {
	tests := []struct {
		name        string
		args        []string // --address is prepended; {dir} is the test's output directory
		serverErr   error
		jobFailure  string
		statusCalls int    // the job's statuses already given: 2 makes it finished
		filesDir    string // where wantFiles are, under {dir}; "" is {dir} itself
		wantCode    int
		usage       bool     // a mistake in the command line: stdout is the usage
		wantStdout  string   // {dir} as in args
		wantStderr  string   // substring; "" means stderr must be empty
		wantFiles   []string // the .png files in {dir}, each holding fakePNG(n) for its n
	}{
		{
			name:       "generate saves each picture as <job id>-<n>.png and prints its path",
			args:       []string{"image", "generate", "--out-dir", "{dir}", "--num-images", "2", "--poll", "1ms", "a red square"},
			wantStdout: "{dir}/job-1-0.png\n{dir}/job-1-1.png\n",
			wantFiles:  []string{"job-1-0.png", "job-1-1.png"},
		},
		{
			name:       "generate makes the output directory",
			args:       []string{"image", "generate", "--out-dir", "{dir}/new/dir", "--poll", "1ms", "a red square"},
			filesDir:   "new/dir",
			wantStdout: "{dir}/new/dir/job-1-0.png\n",
			wantFiles:  []string{"job-1-0.png"},
		},
		{
			name:       "generate --no-wait prints only the job id",
			args:       []string{"image", "generate", "--no-wait", "--out-dir", "{dir}", "a red square"},
			wantStdout: "job-1\n",
		},
		{
			name:       "generate --no-wait --json prints the job id as JSON",
			args:       []string{"image", "generate", "--no-wait", "--json", "--out-dir", "{dir}", "a red square"},
			wantStdout: `{"id":"job-1"}` + "\n",
		},
		{
			name:       "generate --verbose reports the job on stderr",
			args:       []string{"image", "generate", "--verbose", "--out-dir", "{dir}", "--poll", "1ms", "a red square"},
			wantStdout: "{dir}/job-1-0.png\n",
			wantStderr: "job=job-1 state=succeeded steps=2/2 images=1 job_time=- wall=",
			wantFiles:  []string{"job-1-0.png"},
		},
		{
			name:       "a failed job exits 1 with its message and saves nothing",
			args:       []string{"image", "generate", "--out-dir", "{dir}", "--poll", "1ms", "a red square"},
			jobFailure: "CUDA out of memory",
			wantCode:   1,
			wantStderr: "error: job job-1 failed: CUDA out of memory\n",
		},
		{
			name:       "a failed job with --json prints the job, then exits 1",
			args:       []string{"image", "generate", "--json", "--out-dir", "{dir}", "--poll", "1ms", "a red square"},
			jobFailure: "CUDA out of memory",
			wantCode:   1,
			wantStdout: `{"id":"job-1","state":"failed","step":1,"total_steps":2,"error":"CUDA out of memory","images":[]}` + "\n",
			wantStderr: "error: job job-1 failed: CUDA out of memory\n",
		},
		{
			name:       "a server error is printed with its code and message",
			args:       []string{"image", "generate", "--out-dir", "{dir}", "a red square"},
			serverErr:  status.Error(codes.ResourceExhausted, "the image queue is full"),
			wantCode:   1,
			wantStderr: "error: RESOURCE_EXHAUSTED: the image queue is full\n",
		},
		{
			name:       "generate needs a prompt",
			usage:      true,
			args:       []string{"image", "generate"},
			wantCode:   1,
			wantStderr: "error: requires at least 1 arg",
		},
		{
			name:       "edit needs --image",
			usage:      true,
			args:       []string{"image", "edit", "--out-dir", "{dir}", "make it blue"},
			wantCode:   1,
			wantStderr: `error: required flag(s) "image" not set`,
		},
		{
			name:       "edit of a missing file",
			args:       []string{"image", "edit", "--image", "{dir}/absent.png", "make it blue"},
			wantCode:   1,
			wantStderr: "no such file or directory",
		},
		{
			name:       "status of a queued job",
			args:       []string{"image", "status", "job-1"},
			wantStdout: "job=job-1 state=queued step=0/0\n",
		},
		{
			name:        "status of a finished job saves its pictures with --save",
			args:        []string{"image", "status", "--save", "--out-dir", "{dir}", "job-1"},
			statusCalls: 2,
			wantStdout:  "job=job-1 state=succeeded step=2/2 images=1\n{dir}/job-1-0.png\n",
			wantFiles:   []string{"job-1-0.png"},
		},
		{
			name:        "status of a finished job saves nothing without --save",
			args:        []string{"image", "status", "--out-dir", "{dir}", "job-1"},
			statusCalls: 2,
			wantStdout:  "job=job-1 state=succeeded step=2/2 images=1\n",
		},
		{
			name:        "status of a failed job prints its error and exits 0",
			args:        []string{"image", "status", "job-1"},
			statusCalls: 2,
			jobFailure:  "CUDA out of memory",
			wantStdout:  `job=job-1 state=failed step=1/2 error="CUDA out of memory"` + "\n",
		},
		{
			name:        "status --json",
			args:        []string{"image", "status", "--json", "job-1"},
			statusCalls: 1,
			wantStdout:  `{"id":"job-1","state":"running","step":1,"total_steps":2,"images":[]}` + "\n",
		},
		{
			name:       "status of an unknown job is NOT_FOUND",
			args:       []string{"image", "status", "nope"},
			wantCode:   1,
			wantStderr: "error: NOT_FOUND: image job \"nope\" is not known\n",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			expand := func(s string) string { return strings.ReplaceAll(s, "{dir}", dir) }
			srv := &fakeServer{err: tt.serverErr, jobFailure: tt.jobFailure, statusCalls: tt.statusCalls}
			args := []string{"--address", serve(t, srv)}
			for _, a := range tt.args {
				args = append(args, expand(a))
			}

			code, stdout, stderr := run(t, args...)
			if code != tt.wantCode {
				t.Errorf("exit code %d, want %d (stderr %q)", code, tt.wantCode, stderr)
			}
			if want := expand(tt.wantStdout); !tt.usage && stdout != want {
				t.Errorf("stdout %q, want %q", stdout, want)
			}
			if tt.usage && !strings.HasPrefix(stdout, "Usage:") {
				t.Errorf("stdout %q, want the usage", stdout)
			}
			if tt.wantStderr == "" && stderr != "" {
				t.Errorf("stderr %q, want nothing", stderr)
			}
			if !strings.Contains(stderr, tt.wantStderr) {
				t.Errorf("stderr %q, want it to contain %q", stderr, tt.wantStderr)
			}
			filesDir := filepath.Join(dir, tt.filesDir)
			if got := pngFiles(t, filesDir); !slices.Equal(got, tt.wantFiles) {
				t.Errorf("files in the output directory %q, want %q", got, tt.wantFiles)
			}
			for i, name := range tt.wantFiles {
				got, err := os.ReadFile(filepath.Join(filesDir, name))
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(got, fakePNG(i)) {
					t.Errorf("%s holds %q, want %q", name, got, fakePNG(i))
				}
			}
		})
	}
}

func TestImageNoWaitDoesNotPoll(t *testing.T) {
	srv := &fakeServer{}
	code, stdout, stderr := run(t, "image", "generate", "--address", serve(t, srv), "--no-wait", "a cat")
	if code != 0 || stdout != "job-1\n" {
		t.Fatalf("exit code %d, stdout %q, stderr %q", code, stdout, stderr)
	}
	if n, _, _ := srv.calls(); n != 0 {
		t.Errorf("%d status calls with --no-wait, want 0", n)
	}
}

func TestImageGenerateFlagsReachTheServer(t *testing.T) {
	tests := []struct {
		name string
		args []string // after "image generate --address ADDR --out-dir DIR --poll 1ms"
		want *pb.GenerateImageRequest
	}{
		{
			name: "defaults: the image model and nothing else set",
			args: []string{"a", "red", "square"},
			want: &pb.GenerateImageRequest{Model: "image", Prompt: "a red square", Options: &pb.ImageOptions{}},
		},
		{
			name: "every flag",
			args: []string{
				"--model", "other", "--width", "64", "--height", "32", "--steps", "2", "--guidance", "7.5",
				"--seed", "1", "--num-images", "3", "--negative", "blurry", "--keep-alive", "-1s", "a cat",
			},
			want: &pb.GenerateImageRequest{
				Model: "other", Prompt: "a cat",
				Options: &pb.ImageOptions{
					NegativePrompt: "blurry", Width: 64, Height: 32, Steps: 2,
					GuidanceScale: new(float32(7.5)), Seed: new(uint64(1)), NumImages: 3,
				},
				KeepAlive: durationpb.New(-time.Second),
			},
		},
		{
			name: "a zero seed is sent, not dropped",
			args: []string{"--seed", "0", "--guidance", "0", "a cat"},
			want: &pb.GenerateImageRequest{
				Model: "image", Prompt: "a cat",
				Options: &pb.ImageOptions{Seed: new(uint64(0)), GuidanceScale: new(float32(0))},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := &fakeServer{}
			args := append([]string{"image", "generate", "--address", serve(t, srv), "--out-dir", t.TempDir(), "--poll", "1ms"}, tt.args...)
			if code, _, stderr := run(t, args...); code != 0 {
				t.Fatalf("exit code %d: %s", code, stderr)
			}
			_, got, _ := srv.calls()
			// Every call carries a request id of its own (client.GenerateImage chooses it).
			if got.GetRequestId() == "" {
				t.Errorf("server got no request_id: %v", got)
			}
			got = proto.CloneOf(got)
			got.RequestId = ""
			if !proto.Equal(got, tt.want) {
				t.Errorf("server got\n %v\nwant\n %v", got, tt.want)
			}
		})
	}
}

func TestImageEditSendsTheFiles(t *testing.T) {
	dir := t.TempDir()
	input, mask := []byte("\x89PNG input picture"), []byte("\x89PNG mask")
	inPath, maskPath := filepath.Join(dir, "in.png"), filepath.Join(dir, "m.png")
	for path, data := range map[string][]byte{inPath: input, maskPath: mask} {
		if err := os.WriteFile(path, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	tests := []struct {
		name string
		args []string // after "image edit --address ADDR --out-dir OUT --poll 1ms"
		want *pb.EditImageRequest
	}{
		{
			name: "image to image",
			args: []string{"--image", inPath, "make", "it", "blue"},
			want: &pb.EditImageRequest{Model: "image", Prompt: "make it blue", Image: input, Options: &pb.ImageOptions{}},
		},
		{
			name: "inpainting with a strength and options",
			args: []string{"--image", inPath, "--mask", maskPath, "--strength", "0.6", "--steps", "4", "--seed", "2", "make it blue"},
			want: &pb.EditImageRequest{
				Model: "image", Prompt: "make it blue", Image: input, Mask: mask, Strength: new(float32(0.6)),
				Options: &pb.ImageOptions{Steps: 4, Seed: new(uint64(2))},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := &fakeServer{}
			out := t.TempDir()
			args := append([]string{"image", "edit", "--address", serve(t, srv), "--out-dir", out, "--poll", "1ms"}, tt.args...)
			code, stdout, stderr := run(t, args...)
			if code != 0 {
				t.Fatalf("exit code %d: %s", code, stderr)
			}
			_, _, got := srv.calls()
			// Every call carries a request id of its own (client.EditImage chooses it).
			if got.GetRequestId() == "" {
				t.Errorf("server got no request_id: %v", got)
			}
			got = proto.CloneOf(got)
			got.RequestId = ""
			if !proto.Equal(got, tt.want) {
				t.Errorf("server got\n %v\nwant\n %v", got, tt.want)
			}
			saved := filepath.Join(out, "job-1-0.png")
			if stdout != saved+"\n" {
				t.Errorf("stdout %q, want %q", stdout, saved+"\n")
			}
			if got, err := os.ReadFile(saved); err != nil || !bytes.Equal(got, fakePNG(0)) {
				t.Errorf("%s: %q, %v; want the job's picture", saved, got, err)
			}
		})
	}
}

func TestImageEditNeedsItsFilesBeforeCallingTheServer(t *testing.T) {
	dir := t.TempDir()
	in := filepath.Join(dir, "in.png")
	if err := os.WriteFile(in, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		args []string
	}{
		{"no --image", []string{"x"}},
		{"a missing --image", []string{"--image", filepath.Join(dir, "absent.png"), "x"}},
		{"a missing --mask", []string{"--image", in, "--mask", filepath.Join(dir, "absent.png"), "x"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := &fakeServer{}
			code, _, stderr := run(t, append([]string{"image", "edit", "--address", serve(t, srv)}, tt.args...)...)
			if code != 1 || !strings.HasPrefix(stderr, "error: ") {
				t.Errorf("exit code %d, stderr %q; want 1 and an error", code, stderr)
			}
			if _, _, edit := srv.calls(); edit != nil {
				t.Errorf("the server got an edit: %v", edit)
			}
		})
	}
}

func TestImageJSONIsTheJobWithPathsInsteadOfBytes(t *testing.T) {
	dir := t.TempDir()
	code, stdout, stderr := run(t, "image", "generate", "--json", "--address", serve(t, &fakeServer{}),
		"--out-dir", dir, "--num-images", "2", "--poll", "1ms", "a red square")
	if code != 0 {
		t.Fatalf("exit code %d: %s", code, stderr)
	}
	if strings.Count(stdout, "\n") != 1 {
		t.Errorf("stdout is not one line:\n%s", stdout)
	}
	var job imageJobJSON
	dec := json.NewDecoder(strings.NewReader(stdout))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&job); err != nil {
		t.Fatalf("%q: %v", stdout, err)
	}
	want := imageJobJSON{
		ID: "job-1", State: client.JobStateSucceeded, Step: 2, TotalSteps: 2,
		Images: []savedImage{
			{Path: filepath.Join(dir, "job-1-0.png"), Width: 64, Height: 64},
			{Path: filepath.Join(dir, "job-1-1.png"), Width: 64, Height: 64},
		},
	}
	if !slices.Equal(job.Images, want.Images) || job.ID != want.ID || job.State != want.State ||
		job.Step != want.Step || job.TotalSteps != want.TotalSteps || job.Error != "" {
		t.Errorf("job\n got %+v\nwant %+v", job, want)
	}
	for _, key := range []string{`"id":`, `"state":`, `"step":`, `"total_steps":`, `"images":`, `"path":`, `"width":`, `"height":`} {
		if !strings.Contains(stdout, key) {
			t.Errorf("stdout has no %s: %s", key, stdout)
		}
	}
	if strings.Contains(stdout, `"png"`) {
		t.Errorf("stdout carries the pictures' bytes: %s", stdout)
	}
}

func TestSaveImagesRefusesJobIDsThatAreNotFileNames(t *testing.T) {
	for _, id := range []string{"", ".", "..", "../up", "a/b", `a\b`} {
		t.Run(id, func(t *testing.T) {
			dir := t.TempDir()
			job := &client.ImageJob{ID: id, Images: []client.Image{{PNG: []byte("x")}}}
			if paths, err := saveImages(filepath.Join(dir, "out"), job); err == nil {
				t.Errorf("saveImages saved %q", paths)
			}
			if entries, _ := os.ReadDir(dir); len(entries) != 0 {
				t.Errorf("something was written: %v", entries)
			}
		})
	}
}

func TestProgressBar(t *testing.T) {
	jobs := []*client.ImageJob{
		{ID: "j", State: client.JobStateQueued},
		{ID: "j", State: client.JobStateRunning, Step: 1, TotalSteps: 2},
		{ID: "j", State: client.JobStateRunning, Step: 2, TotalSteps: 2},
		{ID: "j", State: client.JobStateSucceeded, Step: 2, TotalSteps: 2},
	}
	tests := []struct {
		name string
		on   bool
		want []string // substrings of what is drawn; nil: nothing at all
	}{
		{name: "on: draws the state and the steps", on: true, want: []string{"queued", "running", "1/2", "2/2", "succeeded"}},
		{name: "off: draws nothing", on: false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var buf bytes.Buffer
			p := newProgress(&buf, tt.on)
			for _, j := range jobs {
				p.update(j)
			}
			p.done()
			if tt.want == nil && buf.Len() != 0 {
				t.Errorf("drew %q", buf.String())
			}
			for _, w := range tt.want {
				if !strings.Contains(buf.String(), w) {
					t.Errorf("drew %q, want it to contain %q", buf.String(), w)
				}
			}
			if tt.on && !strings.HasSuffix(buf.String(), "\r") {
				t.Errorf("the bar is not erased at the end: %q", buf.String())
			}
		})
	}
	if isTerminal(&bytes.Buffer{}) {
		t.Error("a bytes.Buffer is a terminal")
	}
}
