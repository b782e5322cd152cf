package client

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"strings"
	"time"

	pb "github.com/inference-platform/maistro/internal/gen/inference"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// Image jobs run in the background on the server: GenerateImage and EditImage return a job id at
// once, ImageStatus reports the job's state and progress, and WaitForImage polls it to the end.

// DefaultPollInterval is how often WaitForImage asks for a job's status when given no interval.
const DefaultPollInterval = 250 * time.Millisecond

// maxImageMessageSize bounds a CheckImageStatus response, which carries every image of a
// finished job: gRPC's default of 4 MiB is less than a few large PNGs. The adapter sends at most
// 100 MiB by default.
const maxImageMessageSize = 256 << 20

// JobState is the life cycle of an image job: queued, then running, then succeeded or failed.
type JobState string

// Job states; the empty string means the server did not say.
const (
	// JobStateQueued: the job waits for a free worker.
	JobStateQueued JobState = "queued"
	// JobStateRunning: the job is denoising; ImageJob.Step counts its progress.
	JobStateRunning JobState = "running"
	// JobStateSucceeded: the job is done and ImageJob.Images holds its pictures.
	JobStateSucceeded JobState = "succeeded"
	// JobStateFailed: the job ended without images; ImageJob.Error says why.
	JobStateFailed JobState = "failed"
)

// Done reports whether a job in state s has ended (succeeded or failed) and will not change.
func (s JobState) Done() bool {
	return s == JobStateSucceeded || s == JobStateFailed
}

// ImageRequest starts a text-to-image job with GenerateImage; its fields are shared by
// EditRequest. A zero or nil field takes the model's default.
type ImageRequest struct {
	// Model is the image model's name as the server serves it, for example "image".
	Model string
	// Prompt describes the picture.
	Prompt string
	// NegativePrompt describes what the picture should not show.
	NegativePrompt string
	// Width and Height are the picture's size in pixels: multiples of 8 within the server's
	// limits; 0 takes the model's default.
	Width, Height int32
	// Steps is the number of denoising steps; 0 takes the model's default.
	Steps int32
	// GuidanceScale is how closely the picture follows the prompt (classifier-free guidance).
	GuidanceScale *float32
	// Seed makes the job reproducible for the same request and model; nil picks one at random.
	Seed *uint64
	// NumImages is how many pictures to make; 0 means 1.
	NumImages int32
	// KeepAlive: see ChatRequest.KeepAlive.
	KeepAlive *time.Duration
	// RequestID makes the submission idempotent: the server returns the job it already has for
	// this id (while it keeps the job) instead of starting another, and refuses a different
	// request under a used id (IsAlreadyExists). Empty: GenerateImage and EditImage pick a new
	// random one for each call, so their own retries (after UNAVAILABLE, when the connection may
	// have dropped after the server accepted the job) never start a second job. Set it to make a
	// retry of your own, across calls or processes, just as safe. At most 128 characters.
	RequestID string
}

// EditRequest starts an image-to-image job with EditImage, or an inpainting job when Mask is
// set. The embedded ImageRequest carries the model, prompt and options.
type EditRequest struct {
	// ImageRequest holds the model, the prompt and the options, as for GenerateImage.
	ImageRequest
	// Image is the input picture: PNG, JPEG or WebP bytes.
	Image []byte
	// Mask, when set, is an image of Image's size: white areas are repainted, black areas kept.
	Mask []byte
	// Strength is how much of the input to change, in [0, 1]; nil takes the model's default.
	Strength *float32
}

// Image is one picture that a job produced.
type Image struct {
	// PNG is the picture, PNG-encoded.
	PNG []byte `json:"png"`
	// Width and Height are the picture's size in pixels.
	Width  int `json:"width"`
	Height int `json:"height"`
}

// ImageJob is an image job as ImageStatus last saw it.
type ImageJob struct {
	// ID is the job's id, as GenerateImage or EditImage returned it.
	ID string `json:"id"`
	// State is where the job is in its life cycle.
	State JobState `json:"state"`
	// Step is the denoising step reached, out of TotalSteps (0 of 0 while queued).
	Step int `json:"step"`
	// TotalSteps is the number of denoising steps the job will run.
	TotalSteps int `json:"total_steps"`
	// Error says why the job failed (JobStateFailed only).
	Error string `json:"error,omitempty"`
	// Images are the pictures (JobStateSucceeded only), in order.
	Images []Image `json:"images,omitempty"`
	// CreatedAt is when the server accepted the job.
	CreatedAt time.Time `json:"created_at,omitzero"`
	// FinishedAt is when the job ended; zero until then.
	FinishedAt time.Time `json:"finished_at,omitzero"`
}

// JobFailedError is returned by WaitForImage, together with the job, when a job ends in
// JobStateFailed. Get it with errors.As.
type JobFailedError struct {
	// JobID is the failed job's id.
	JobID string
	// Message is the server's reason, meant for a person.
	Message string
}

// Error formats the error as "job <id> failed: <message>".
func (e *JobFailedError) Error() string {
	if e.Message == "" {
		return "job " + e.JobID + " failed"
	}
	return "job " + e.JobID + " failed: " + e.Message
}

// GenerateImage starts a text-to-image job and returns its id at once; follow the job with
// ImageStatus or WaitForImage.
//
// Config.RequestTimeout applies to the call, not to the job. A bad field is IsInvalidArgument,
// an unknown model IsNotFound, a full job queue IsResourceExhausted (retry later), and a
// req.RequestID already used for a different request IsAlreadyExists. Retries are safe: every
// attempt carries the same request id (ImageRequest.RequestID).
func (c *Client) GenerateImage(ctx context.Context, req *ImageRequest) (string, error) {
	if req == nil {
		return "", errors.New("maistro: nil ImageRequest")
	}
	ctx, cancel := c.callContext(ctx)
	defer cancel()
	// One request id for every attempt of this call: the retry interceptor resends this message.
	resp, err := c.rpc.GenerateImage(ctx, &pb.GenerateImageRequest{
		Model:     req.Model,
		Prompt:    req.Prompt,
		Options:   req.optionsToProto(),
		KeepAlive: keepAliveToProto(req.KeepAlive),
		RequestId: requestID(req.RequestID),
	})
	if err != nil {
		return "", fromRPC(err)
	}
	return checkJobID(resp.GetJobId())
}

// EditImage starts an image-to-image job (an inpainting job when req.Mask is set) and returns
// its id at once. Timeouts and errors are as in GenerateImage; an input the server cannot
// decode is IsInvalidArgument.
func (c *Client) EditImage(ctx context.Context, req *EditRequest) (string, error) {
	if req == nil {
		return "", errors.New("maistro: nil EditRequest")
	}
	ctx, cancel := c.callContext(ctx)
	defer cancel()
	resp, err := c.rpc.EditImage(ctx, &pb.EditImageRequest{
		Model:     req.Model,
		Prompt:    req.Prompt,
		Image:     req.Image,
		Mask:      req.Mask,
		Strength:  req.Strength,
		Options:   req.optionsToProto(),
		KeepAlive: keepAliveToProto(req.KeepAlive),
		RequestId: requestID(req.RequestID),
	})
	if err != nil {
		return "", fromRPC(err)
	}
	return checkJobID(resp.GetJobId())
}

// requestID is the caller's request id, or a new random one (128 bits of crypto/rand, base32).
func requestID(chosen string) string {
	if chosen != "" {
		return chosen
	}
	return rand.Text()
}

// checkJobID rejects the empty job id, which a well-behaved server never returns.
func checkJobID(id string) (string, error) {
	if id == "" {
		return "", fmt.Errorf("maistro: %w: empty job id", ErrBadResponse)
	}
	return id, nil
}

// ImageStatus returns a job's state and progress, with its images once it has succeeded. An
// unknown (or expired) job id is IsNotFound. Config.RequestTimeout applies to the call.
func (c *Client) ImageStatus(ctx context.Context, jobID string) (*ImageJob, error) {
	ctx, cancel := c.callContext(ctx)
	defer cancel()
	resp, err := c.rpc.CheckImageStatus(ctx, &pb.CheckImageStatusRequest{JobId: jobID},
		grpc.MaxCallRecvMsgSize(maxImageMessageSize))
	if err != nil {
		return nil, fromRPC(err)
	}
	if id := resp.GetJobId(); id != "" && id != jobID {
		return nil, fmt.Errorf("maistro: %w: asked for job %q, got job %q", ErrBadResponse, jobID, id)
	}
	job := imageJobFromProto(resp)
	job.ID = jobID
	return job, nil
}

// WaitForImage polls a job every poll (DefaultPollInterval when poll <= 0) until it ends, and
// returns it. progress, which may be nil, is called with the job after the first poll and then
// whenever its state or progress changes, the finished job included.
//
// A job that fails is returned together with a *JobFailedError carrying the server's message.
// Any other error returns a nil job: an *Error as from any call (the job is unknown: IsNotFound;
// the server cannot be reached: IsUnavailable; ctx is cancelled or expires, during a poll or
// between two: IsCanceled, IsDeadlineExceeded). The job itself goes on on the server. Config.RequestTimeout bounds each poll, not the wait, which only ctx bounds.
func (c *Client) WaitForImage(ctx context.Context, jobID string, poll time.Duration, progress func(*ImageJob)) (*ImageJob, error) {
	if poll <= 0 {
		poll = DefaultPollInterval
	}
	var last *ImageJob
	for {
		job, err := c.ImageStatus(ctx, jobID)
		if err != nil {
			return nil, err
		}
		if progress != nil && (last == nil || job.changedSince(last)) {
			progress(job)
		}
		last = job
		switch job.State {
		case JobStateSucceeded:
			return job, nil
		case JobStateFailed:
			return job, &JobFailedError{JobID: job.ID, Message: job.Error}
		}
		if err := sleep(ctx, poll); err != nil {
			return nil, err
		}
	}
}

// sleep waits for d, or returns as soon as ctx ends with the error that a call cancelled by
// ctx gets (an *Error: CANCELLED or DEADLINE_EXCEEDED), so that WaitForImage fails the same way
// whether ctx ends during a poll or between two.
func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return fromRPC(status.FromContextError(ctx.Err()).Err())
	case <-t.C:
		return nil
	}
}

// changedSince reports whether j differs from an earlier status of the same job in what a
// progress display shows.
func (j *ImageJob) changedSince(prev *ImageJob) bool {
	return j.State != prev.State || j.Step != prev.Step || j.TotalSteps != prev.TotalSteps || j.Error != prev.Error
}

// ---------------------------------------------------------------------------------------------
// Conversions to and from inference.v1
// ---------------------------------------------------------------------------------------------

func (r *ImageRequest) optionsToProto() *pb.ImageOptions {
	return &pb.ImageOptions{
		NegativePrompt: r.NegativePrompt,
		Width:          r.Width,
		Height:         r.Height,
		Steps:          r.Steps,
		GuidanceScale:  r.GuidanceScale,
		Seed:           r.Seed,
		NumImages:      r.NumImages,
	}
}

func imageJobFromProto(m *pb.CheckImageStatusResponse) *ImageJob {
	job := &ImageJob{
		ID:         m.GetJobId(),
		State:      jobStateFromProto(m.GetState()),
		Step:       int(m.GetStep()),
		TotalSteps: int(m.GetTotalSteps()),
		Error:      m.GetErrorMessage(),
		CreatedAt:  timeFromProto(m.GetCreatedAt()),
		FinishedAt: timeFromProto(m.GetFinishedAt()),
	}
	for _, im := range m.GetImages() {
		job.Images = append(job.Images, Image{
			PNG:    im.GetPng(),
			Width:  int(im.GetWidth()),
			Height: int(im.GetHeight()),
		})
	}
	return job
}

func jobStateFromProto(s pb.JobState) JobState {
	switch s {
	case pb.JobState_JOB_STATE_UNSPECIFIED:
		return ""
	case pb.JobState_JOB_STATE_QUEUED:
		return JobStateQueued
	case pb.JobState_JOB_STATE_RUNNING:
		return JobStateRunning
	case pb.JobState_JOB_STATE_SUCCEEDED:
		return JobStateSucceeded
	case pb.JobState_JOB_STATE_FAILED:
		return JobStateFailed
	}
	// A state added to the proto after this client was built: keep its name rather than drop it.
	return JobState(strings.ToLower(strings.TrimPrefix(s.String(), "JOB_STATE_")))
}

// timeFromProto maps an unset timestamp to the zero time (AsTime would give the Unix epoch).
func timeFromProto(ts *timestamppb.Timestamp) time.Time {
	if ts == nil {
		return time.Time{}
	}
	return ts.AsTime()
}
