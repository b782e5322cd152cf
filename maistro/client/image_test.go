package client

import (
	"bytes"
	"context"
	"errors"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/inference-platform/maistro/internal/fakeserver"
	pb "github.com/inference-platform/maistro/internal/gen/inference"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// acceptJob answers GenerateImage with job "job-1" and hands the request to got.
func acceptJob(got **pb.GenerateImageRequest) func(context.Context, *pb.GenerateImageRequest) (*pb.GenerateImageResponse, error) {
	return func(_ context.Context, req *pb.GenerateImageRequest) (*pb.GenerateImageResponse, error) {
		*got = req
		return &pb.GenerateImageResponse{JobId: "job-1"}, nil
	}
}

func TestGenerateImageSendsTheRequest(t *testing.T) {
	keep := 30 * time.Second
	tests := []struct {
		name string
		req  *ImageRequest
		want *pb.GenerateImageRequest
	}{
		{
			name: "every field",
			req: &ImageRequest{
				Model: "image", Prompt: "a red square", NegativePrompt: "blurry",
				Width: 64, Height: 32, Steps: 2, GuidanceScale: new(float32(7.5)), Seed: new(uint64(1)),
				NumImages: 3, KeepAlive: &keep,
			},
			want: &pb.GenerateImageRequest{
				Model: "image", Prompt: "a red square",
				Options: &pb.ImageOptions{
					NegativePrompt: "blurry", Width: 64, Height: 32, Steps: 2,
					GuidanceScale: new(float32(7.5)), Seed: new(uint64(1)), NumImages: 3,
				},
				KeepAlive: durationpb.New(30 * time.Second),
			},
		},
		{
			name: "unset fields stay unset",
			req:  &ImageRequest{Model: "image", Prompt: "a cat"},
			want: &pb.GenerateImageRequest{Model: "image", Prompt: "a cat", Options: &pb.ImageOptions{}},
		},
		{
			name: "a zero seed and guidance are sent, not dropped",
			req:  &ImageRequest{Model: "image", Prompt: "a cat", GuidanceScale: new(float32(0)), Seed: new(uint64(0))},
			want: &pb.GenerateImageRequest{
				Model: "image", Prompt: "a cat",
				Options: &pb.ImageOptions{GuidanceScale: new(float32(0)), Seed: new(uint64(0))},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got *pb.GenerateImageRequest
			c := newTestClient(t, &fakeserver.Server{OnGenerateImage: acceptJob(&got)}, Config{})
			id, err := c.GenerateImage(context.Background(), tt.req)
			if err != nil || id != "job-1" {
				t.Fatalf("GenerateImage = %q, %v; want job-1", id, err)
			}
			if got.GetRequestId() == "" {
				t.Errorf("server got no request_id")
			}
			got.RequestId = "" // random: checked above
			if !proto.Equal(got, tt.want) {
				t.Errorf("server got\n %v\nwant\n %v", got, tt.want)
			}
		})
	}
}

func TestEditImageSendsTheRequest(t *testing.T) {
	input := []byte("\x89PNG input")
	tests := []struct {
		name string
		req  *EditRequest
		want *pb.EditImageRequest
	}{
		{
			name: "inpainting with every field",
			req: &EditRequest{
				ImageRequest: ImageRequest{
					Model: "image", Prompt: "a blue square", NegativePrompt: "text",
					Width: 64, Height: 64, Steps: 4, GuidanceScale: new(float32(3)), Seed: new(uint64(9)),
					NumImages: 2, KeepAlive: new(-time.Second),
				},
				Image: input, Mask: []byte("\x89PNG mask"), Strength: new(float32(0.6)),
			},
			want: &pb.EditImageRequest{
				Model: "image", Prompt: "a blue square",
				Image: input, Mask: []byte("\x89PNG mask"), Strength: new(float32(0.6)),
				Options: &pb.ImageOptions{
					NegativePrompt: "text", Width: 64, Height: 64, Steps: 4,
					GuidanceScale: new(float32(3)), Seed: new(uint64(9)), NumImages: 2,
				},
				KeepAlive: durationpb.New(-time.Second),
			},
		},
		{
			name: "image to image, unset fields stay unset",
			req:  &EditRequest{ImageRequest: ImageRequest{Model: "image", Prompt: "x"}, Image: input},
			want: &pb.EditImageRequest{Model: "image", Prompt: "x", Image: input, Options: &pb.ImageOptions{}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got *pb.EditImageRequest
			srv := &fakeserver.Server{OnEditImage: func(_ context.Context, req *pb.EditImageRequest) (*pb.EditImageResponse, error) {
				got = req
				return &pb.EditImageResponse{JobId: "job-2"}, nil
			}}
			c := newTestClient(t, srv, Config{})
			id, err := c.EditImage(context.Background(), tt.req)
			if err != nil || id != "job-2" {
				t.Fatalf("EditImage = %q, %v; want job-2", id, err)
			}
			if got.GetRequestId() == "" {
				t.Errorf("server got no request_id")
			}
			got.RequestId = "" // random: checked above
			if !proto.Equal(got, tt.want) {
				t.Errorf("server got\n %v\nwant\n %v", got, tt.want)
			}
		})
	}
}

func TestImageCallsMapServerErrorsToTypedErrors(t *testing.T) {
	tests := []struct {
		code    codes.Code
		message string
		is      func(error) bool
	}{
		{codes.InvalidArgument, "options.width must be a multiple of 8", IsInvalidArgument},
		{codes.NotFound, `image job "nope" is not known`, IsNotFound},
		{codes.ResourceExhausted, "the image queue is full", IsResourceExhausted},
		{codes.Unavailable, "Triton is not ready", IsUnavailable},
	}
	for _, tt := range tests {
		t.Run(CodeName(tt.code), func(t *testing.T) {
			fail := status.Error(tt.code, tt.message)
			srv := &fakeserver.Server{
				OnGenerateImage: func(context.Context, *pb.GenerateImageRequest) (*pb.GenerateImageResponse, error) {
					return nil, fail
				},
				OnEditImage: func(context.Context, *pb.EditImageRequest) (*pb.EditImageResponse, error) {
					return nil, fail
				},
				OnImageStatus: func(context.Context, *pb.CheckImageStatusRequest) (*pb.CheckImageStatusResponse, error) {
					return nil, fail
				},
			}
			c := newTestClient(t, srv, Config{})
			ctx := context.Background()
			_, genErr := c.GenerateImage(ctx, &ImageRequest{Model: "image", Prompt: "x"})
			_, editErr := c.EditImage(ctx, &EditRequest{ImageRequest: ImageRequest{Model: "image"}, Image: []byte("x")})
			job, statusErr := c.ImageStatus(ctx, "nope")
			if job != nil {
				t.Errorf("ImageStatus job = %+v, want nil on error", job)
			}
			waited, waitErr := c.WaitForImage(ctx, "nope", time.Millisecond, nil)
			if waited != nil {
				t.Errorf("WaitForImage job = %+v, want nil on error", waited)
			}
			for call, err := range map[string]error{
				"GenerateImage": genErr, "EditImage": editErr, "ImageStatus": statusErr, "WaitForImage": waitErr,
			} {
				var e *Error
				if !errors.As(err, &e) || e.Code != tt.code || e.Message != tt.message {
					t.Errorf("%s error = %v (%T), want *Error{%v, %q}", call, err, err, tt.code, tt.message)
					continue
				}
				if !tt.is(err) {
					t.Errorf("%s: the IsX helper for %v is false for %v", call, tt.code, err)
				}
			}
		})
	}
}

// statusScript answers the i-th CheckImageStatus of a job with script[i], and the last entry
// from then on; it answers NOT_FOUND for any other job id.
type statusScript struct {
	id     string
	script []*pb.CheckImageStatusResponse

	mu    sync.Mutex
	calls int
}

func (s *statusScript) handle(_ context.Context, req *pb.CheckImageStatusRequest) (*pb.CheckImageStatusResponse, error) {
	if req.GetJobId() != s.id {
		return nil, status.Errorf(codes.NotFound, "image job %q is not known", req.GetJobId())
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	resp := s.script[min(s.calls, len(s.script)-1)]
	s.calls++
	return resp, nil
}

func (s *statusScript) callCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls
}

var (
	created  = time.Date(2026, 8, 1, 12, 0, 0, 0, time.UTC)
	finished = created.Add(1500 * time.Millisecond)
)

func running(step, total int32) *pb.CheckImageStatusResponse {
	return &pb.CheckImageStatusResponse{
		JobId: "job-1", State: pb.JobState_JOB_STATE_RUNNING, Step: step, TotalSteps: total,
		CreatedAt: timestamppb.New(created),
	}
}

// progressLine is what a progress display shows of a job.
func progressLine(j *ImageJob) string {
	return string(j.State) + " " + strings.Repeat("#", j.Step) + strings.Repeat(".", j.TotalSteps-j.Step)
}

func TestWaitForImageReportsProgressAndReturnsTheImages(t *testing.T) {
	queued := &pb.CheckImageStatusResponse{
		JobId: "job-1", State: pb.JobState_JOB_STATE_QUEUED, CreatedAt: timestamppb.New(created),
	}
	done := &pb.CheckImageStatusResponse{
		JobId: "job-1", State: pb.JobState_JOB_STATE_SUCCEEDED, Step: 2, TotalSteps: 2,
		Images: []*pb.Image{
			{Png: []byte("\x89PNG first"), Width: 64, Height: 64},
			{Png: []byte("\x89PNG second"), Width: 64, Height: 64},
		},
		CreatedAt: timestamppb.New(created), FinishedAt: timestamppb.New(finished),
	}
	// Repeated statuses must not reach the callback again.
	script := &statusScript{id: "job-1", script: []*pb.CheckImageStatusResponse{
		queued, queued, running(0, 2), running(1, 2), running(1, 2), running(2, 2), done,
	}}
	c := newTestClient(t, &fakeserver.Server{OnImageStatus: script.handle}, Config{})

	var seen []string
	job, err := c.WaitForImage(context.Background(), "job-1", time.Millisecond, func(j *ImageJob) {
		seen = append(seen, progressLine(j))
	})
	if err != nil {
		t.Fatalf("WaitForImage: %v", err)
	}
	wantSeen := []string{"queued ", "running ..", "running #.", "running ##", "succeeded ##"}
	if !reflect.DeepEqual(seen, wantSeen) {
		t.Errorf("progress saw %q, want %q", seen, wantSeen)
	}
	if n := script.callCount(); n != len(script.script) {
		t.Errorf("%d status calls, want %d (one per scripted status, none after the end)", n, len(script.script))
	}
	want := &ImageJob{
		ID: "job-1", State: JobStateSucceeded, Step: 2, TotalSteps: 2,
		Images: []Image{
			{PNG: []byte("\x89PNG first"), Width: 64, Height: 64},
			{PNG: []byte("\x89PNG second"), Width: 64, Height: 64},
		},
		CreatedAt: created, FinishedAt: finished,
	}
	if !reflect.DeepEqual(job, want) {
		t.Errorf("job\n got %+v\nwant %+v", job, want)
	}
}

func TestWaitForImageWithoutProgressCallback(t *testing.T) {
	script := &statusScript{id: "job-1", script: []*pb.CheckImageStatusResponse{
		running(1, 2), {JobId: "job-1", State: pb.JobState_JOB_STATE_SUCCEEDED, Images: []*pb.Image{{Png: []byte("p")}}},
	}}
	c := newTestClient(t, &fakeserver.Server{OnImageStatus: script.handle}, Config{})
	job, err := c.WaitForImage(context.Background(), "job-1", 0, nil) // 0: DefaultPollInterval
	if err != nil || job.State != JobStateSucceeded || len(job.Images) != 1 {
		t.Fatalf("WaitForImage = %+v, %v", job, err)
	}
}

func TestWaitForImageFailedJobReturnsTheJobAndAJobFailedError(t *testing.T) {
	script := &statusScript{id: "job-1", script: []*pb.CheckImageStatusResponse{
		running(1, 4),
		{
			JobId: "job-1", State: pb.JobState_JOB_STATE_FAILED, Step: 1, TotalSteps: 4,
			ErrorMessage: "CUDA out of memory", CreatedAt: timestamppb.New(created), FinishedAt: timestamppb.New(finished),
		},
	}}
	c := newTestClient(t, &fakeserver.Server{OnImageStatus: script.handle}, Config{})

	var last *ImageJob
	job, err := c.WaitForImage(context.Background(), "job-1", time.Millisecond, func(j *ImageJob) { last = j })
	var failed *JobFailedError
	if !errors.As(err, &failed) {
		t.Fatalf("WaitForImage error = %v (%T), want *JobFailedError", err, err)
	}
	if *failed != (JobFailedError{JobID: "job-1", Message: "CUDA out of memory"}) {
		t.Errorf("JobFailedError = %+v", *failed)
	}
	if err.Error() != "job job-1 failed: CUDA out of memory" {
		t.Errorf("Error() = %q", err.Error())
	}
	if IsNotFound(err) || IsCanceled(err) {
		t.Errorf("a failed job reads as a gRPC error: %v", err)
	}
	if job == nil || job.State != JobStateFailed || job.Error != "CUDA out of memory" || job.Images != nil ||
		!job.FinishedAt.Equal(finished) {
		t.Errorf("job = %+v, want the failed job", job)
	}
	if last != nil && last.State != JobStateFailed {
		t.Errorf("the last progress call saw %q, want failed", last.State)
	}
}

func TestJobFailedErrorText(t *testing.T) {
	tests := []struct {
		err  JobFailedError
		want string
	}{
		{JobFailedError{JobID: "j", Message: "boom"}, "job j failed: boom"},
		{JobFailedError{JobID: "j"}, "job j failed"},
	}
	for _, tt := range tests {
		if got := tt.err.Error(); got != tt.want {
			t.Errorf("Error() = %q, want %q", got, tt.want)
		}
	}
}

func TestImageStatusOfAnUnknownJobIsNotFound(t *testing.T) {
	script := &statusScript{id: "job-1", script: []*pb.CheckImageStatusResponse{running(0, 1)}}
	c := newTestClient(t, &fakeserver.Server{OnImageStatus: script.handle}, Config{})
	for name, call := range map[string]func() error{
		"ImageStatus": func() error { _, err := c.ImageStatus(context.Background(), "nope"); return err },
		"WaitForImage": func() error {
			_, err := c.WaitForImage(context.Background(), "nope", time.Millisecond, nil)
			return err
		},
	} {
		if err := call(); !IsNotFound(err) || !strings.Contains(err.Error(), `"nope"`) {
			t.Errorf("%s error = %v, want IsNotFound naming the job", name, err)
		}
	}
}

func TestWaitForImageStopsWhenTheContextEnds(t *testing.T) {
	tests := []struct {
		name string
		// blockPoll makes the server hold each status call until the call is cancelled.
		blockPoll bool
		// cancelAfterFirstPoll cancels the context once the first status has arrived; otherwise
		// a 50ms deadline ends it.
		cancelAfterFirstPoll bool
		is                   func(error) bool
		target               error
	}{
		{name: "cancelled between polls", cancelAfterFirstPoll: true, is: IsCanceled, target: context.Canceled},
		{name: "deadline between polls", is: IsDeadlineExceeded, target: context.DeadlineExceeded},
		{name: "deadline during a poll", blockPoll: true, is: IsDeadlineExceeded, target: context.DeadlineExceeded},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			script := &statusScript{id: "job-1", script: []*pb.CheckImageStatusResponse{running(1, 1000)}}
			handle := script.handle
			if tt.blockPoll {
				handle = func(ctx context.Context, _ *pb.CheckImageStatusRequest) (*pb.CheckImageStatusResponse, error) {
					<-ctx.Done()
					return nil, ctx.Err()
				}
			}
			c := newTestClient(t, &fakeserver.Server{OnImageStatus: handle}, Config{})

			var (
				ctx    context.Context
				cancel context.CancelFunc
			)
			if tt.cancelAfterFirstPoll {
				ctx, cancel = context.WithCancel(context.Background())
			} else {
				ctx, cancel = context.WithTimeout(context.Background(), 50*time.Millisecond)
			}
			defer cancel()
			var progress func(*ImageJob)
			if tt.cancelAfterFirstPoll {
				progress = func(*ImageJob) { cancel() }
			}

			type result struct {
				job *ImageJob
				err error
			}
			ch := make(chan result, 1)
			go func() {
				// An hour between polls: only the context can end the wait in time.
				job, err := c.WaitForImage(ctx, "job-1", time.Hour, progress)
				ch <- result{job, err}
			}()
			select {
			case r := <-ch:
				if r.job != nil {
					t.Errorf("job = %+v, want nil", r.job)
				}
				var e *Error
				if !tt.is(r.err) || !errors.Is(r.err, tt.target) || !errors.As(r.err, &e) {
					t.Errorf("WaitForImage error = %v (%T), want an *Error that is %v", r.err, r.err, tt.target)
				}
			case <-time.After(waitLimit):
				t.Fatal("WaitForImage did not return after its context ended")
			}
		})
	}
}

func TestImageStatusReceivesImagesOverFourMiB(t *testing.T) {
	big := bytes.Repeat([]byte{0xAB}, 6<<20) // more than gRPC's default 4 MiB receive limit
	srv := &fakeserver.Server{OnImageStatus: func(context.Context, *pb.CheckImageStatusRequest) (*pb.CheckImageStatusResponse, error) {
		return &pb.CheckImageStatusResponse{
			JobId: "job-1", State: pb.JobState_JOB_STATE_SUCCEEDED,
			Images: []*pb.Image{{Png: big, Width: 2048, Height: 2048}},
		}, nil
	}}
	c := newTestClient(t, srv, Config{})
	job, err := c.ImageStatus(context.Background(), "job-1")
	if err != nil {
		t.Fatalf("ImageStatus: %v", err)
	}
	if len(job.Images) != 1 || !bytes.Equal(job.Images[0].PNG, big) {
		t.Errorf("got %d images, want the one of %d bytes", len(job.Images), len(big))
	}
	if !job.CreatedAt.IsZero() || !job.FinishedAt.IsZero() {
		t.Errorf("unset timestamps = %v, %v; want the zero time", job.CreatedAt, job.FinishedAt)
	}
}

func TestImageResponsesThatBreakTheContract(t *testing.T) {
	srv := &fakeserver.Server{
		OnGenerateImage: func(context.Context, *pb.GenerateImageRequest) (*pb.GenerateImageResponse, error) {
			return &pb.GenerateImageResponse{}, nil
		},
		OnEditImage: func(context.Context, *pb.EditImageRequest) (*pb.EditImageResponse, error) {
			return &pb.EditImageResponse{}, nil
		},
		OnImageStatus: func(context.Context, *pb.CheckImageStatusRequest) (*pb.CheckImageStatusResponse, error) {
			return &pb.CheckImageStatusResponse{JobId: "someone-else", State: pb.JobState_JOB_STATE_RUNNING}, nil
		},
	}
	c := newTestClient(t, srv, Config{})
	ctx := context.Background()
	tests := []struct {
		name    string
		call    func() error
		wantErr string
	}{
		{"GenerateImage without a job id", func() error {
			_, err := c.GenerateImage(ctx, &ImageRequest{Model: "image"})
			return err
		}, "empty job id"},
		{"EditImage without a job id", func() error {
			_, err := c.EditImage(ctx, &EditRequest{Image: []byte("x")})
			return err
		}, "empty job id"},
		{"ImageStatus of another job", func() error {
			_, err := c.ImageStatus(ctx, "job-1")
			return err
		}, `asked for job "job-1", got job "someone-else"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.call(); !errors.Is(err, ErrBadResponse) || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("error = %v, want ErrBadResponse containing %q", err, tt.wantErr)
			}
		})
	}
}

func TestImageCallsRejectNilRequests(t *testing.T) {
	c := newTestClient(t, &fakeserver.Server{}, Config{})
	if _, err := c.GenerateImage(context.Background(), nil); err == nil {
		t.Error("GenerateImage(nil) succeeded")
	}
	if _, err := c.EditImage(context.Background(), nil); err == nil {
		t.Error("EditImage(nil) succeeded")
	}
}

func TestJobStateFromProto(t *testing.T) {
	tests := []struct {
		in       pb.JobState
		want     JobState
		wantDone bool
	}{
		{pb.JobState_JOB_STATE_UNSPECIFIED, "", false},
		{pb.JobState_JOB_STATE_QUEUED, JobStateQueued, false},
		{pb.JobState_JOB_STATE_RUNNING, JobStateRunning, false},
		{pb.JobState_JOB_STATE_SUCCEEDED, JobStateSucceeded, true},
		{pb.JobState_JOB_STATE_FAILED, JobStateFailed, true},
		{pb.JobState(42), "42", false},
	}
	for _, tt := range tests {
		got := jobStateFromProto(tt.in)
		if got != tt.want || got.Done() != tt.wantDone {
			t.Errorf("jobStateFromProto(%v) = %q (done %v), want %q (done %v)", tt.in, got, got.Done(), tt.want, tt.wantDone)
		}
	}
}

func TestImageRetriesCarryTheSameRequestIDAndEachCallItsOwn(t *testing.T) {
	var mu sync.Mutex
	var ids []string
	srv := &fakeserver.Server{
		OnGenerateImage: func(_ context.Context, req *pb.GenerateImageRequest) (*pb.GenerateImageResponse, error) {
			mu.Lock()
			defer mu.Unlock()
			ids = append(ids, req.GetRequestId())
			if len(ids)%2 == 1 { // the job was accepted, but the answer was lost: UNAVAILABLE
				return nil, status.Error(codes.Unavailable, "connection reset")
			}
			return &pb.GenerateImageResponse{JobId: "job-" + req.GetRequestId()}, nil
		},
		OnEditImage: func(_ context.Context, req *pb.EditImageRequest) (*pb.EditImageResponse, error) {
			mu.Lock()
			defer mu.Unlock()
			ids = append(ids, req.GetRequestId())
			return &pb.EditImageResponse{JobId: "job-" + req.GetRequestId()}, nil
		},
	}
	c := newTestClient(t, srv, Config{Retry: RetryPolicy{InitialBackoff: time.Millisecond, MaxBackoff: time.Millisecond}})
	for range 2 {
		if _, err := c.GenerateImage(context.Background(), &ImageRequest{Model: "image", Prompt: "x"}); err != nil {
			t.Fatal(err)
		}
	}
	if len(ids) != 4 || ids[0] != ids[1] || ids[2] != ids[3] || ids[0] == ids[2] || ids[0] == "" {
		t.Fatalf("request ids %q: want one per call, the same on its retry", ids)
	}
	chosen := &EditRequest{ImageRequest: ImageRequest{Model: "image", Prompt: "x", RequestID: "mine-1"}, Image: []byte("png")}
	if id, err := c.EditImage(context.Background(), chosen); err != nil || id != "job-mine-1" {
		t.Fatalf("EditImage = %q, %v; want the caller's request id sent", id, err)
	}
}

func TestAUsedRequestIDIsAlreadyExists(t *testing.T) {
	srv := &fakeserver.Server{OnGenerateImage: func(context.Context, *pb.GenerateImageRequest) (*pb.GenerateImageResponse, error) {
		return nil, status.Error(codes.AlreadyExists, "request_id \"r\" was already used by a different request")
	}}
	c := newTestClient(t, srv, Config{})
	_, err := c.GenerateImage(context.Background(), &ImageRequest{Model: "image", Prompt: "x", RequestID: "r"})
	if !IsAlreadyExists(err) || IsInvalidArgument(err) {
		t.Fatalf("error %v, want IsAlreadyExists", err)
	}
}
