package client

import (
	"context"
	"errors"
	"math"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/inference-platform/maistro/internal/fakeserver"
	pb "github.com/inference-platform/maistro/internal/gen/inference"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// embedReply answers every input with a vector of dim values, the i-th input's all i+1.
func embedReply(dim int) func(context.Context, *pb.GetEmbeddingRequest) (*pb.GetEmbeddingResponse, error) {
	return func(_ context.Context, req *pb.GetEmbeddingRequest) (*pb.GetEmbeddingResponse, error) {
		resp := &pb.GetEmbeddingResponse{Model: req.GetModel(), Dimension: int32(dim)}
		for i, in := range req.GetInputs() {
			v := make([]float32, dim)
			for j := range v {
				v[j] = float32(i + 1)
			}
			resp.Embeddings = append(resp.Embeddings, &pb.Embedding{
				Index: int32(i), Values: v, Tokens: int32(len(strings.Fields(in))),
			})
		}
		return resp, nil
	}
}

func TestEmbedSendsTheRequestAndMapsTheResponse(t *testing.T) {
	var got *pb.GetEmbeddingRequest
	srv := &fakeserver.Server{OnEmbed: func(_ context.Context, req *pb.GetEmbeddingRequest) (*pb.GetEmbeddingResponse, error) {
		got = req
		return &pb.GetEmbeddingResponse{
			Model:     "embedding",
			Dimension: 3,
			Embeddings: []*pb.Embedding{
				{Index: 0, Values: []float32{1, 0, 0}, Tokens: 4},
				{Index: 1, Values: []float32{0, 0.6, -0.8}, Tokens: 512, Truncated: true},
			},
			Usage: &pb.Usage{PromptTokens: 516, TotalTokens: 516},
		}, nil
	}}
	c := newTestClient(t, srv, Config{})

	keep := 30 * time.Second
	res, err := c.Embed(context.Background(), &EmbedRequest{
		Model:     "embedding",
		Inputs:    []string{"a cat", "a very long text"},
		Normalize: true,
		KeepAlive: &keep,
	})
	if err != nil {
		t.Fatalf("Embed: %v", err)
	}

	if got.GetModel() != "embedding" || !reflect.DeepEqual(got.GetInputs(), []string{"a cat", "a very long text"}) ||
		!got.GetNormalize() || got.GetKeepAlive().AsDuration() != 30*time.Second {
		t.Errorf("server got %v", got)
	}
	want := &EmbedResult{
		Model:     "embedding",
		Dimension: 3,
		Embeddings: []Embedding{
			{Index: 0, Vector: []float32{1, 0, 0}, Tokens: 4},
			{Index: 1, Vector: []float32{0, 0.6, -0.8}, Tokens: 512, Truncated: true},
		},
		Usage: Usage{PromptTokens: 516, TotalTokens: 516},
	}
	if !reflect.DeepEqual(res, want) {
		t.Errorf("result\n got %+v\nwant %+v", res, want)
	}
}

func TestEmbedLeavesUnsetFieldsUnset(t *testing.T) {
	var got *pb.GetEmbeddingRequest
	reply := embedReply(2)
	srv := &fakeserver.Server{OnEmbed: func(ctx context.Context, req *pb.GetEmbeddingRequest) (*pb.GetEmbeddingResponse, error) {
		got = req
		return reply(ctx, req)
	}}
	c := newTestClient(t, srv, Config{})
	if _, err := c.Embed(context.Background(), &EmbedRequest{Model: "embedding", Inputs: []string{"x"}}); err != nil {
		t.Fatalf("Embed: %v", err)
	}
	if got.GetNormalize() || got.KeepAlive != nil {
		t.Errorf("unset fields arrived set: normalize %v keep_alive %v", got.GetNormalize(), got.KeepAlive)
	}
}

func TestEmbedServerErrorsBecomeTypedErrors(t *testing.T) {
	tests := []struct {
		code    codes.Code
		message string
		is      func(error) bool
	}{
		{codes.InvalidArgument, "inputs must not be empty", IsInvalidArgument},
		{codes.NotFound, `model "nope" is not known`, IsNotFound},
		{codes.Unavailable, "Triton is not ready", IsUnavailable},
		{codes.ResourceExhausted, "needs 2 GiB, 1 GiB free", IsResourceExhausted},
	}
	for _, tt := range tests {
		t.Run(CodeName(tt.code), func(t *testing.T) {
			srv := &fakeserver.Server{OnEmbed: func(context.Context, *pb.GetEmbeddingRequest) (*pb.GetEmbeddingResponse, error) {
				return nil, status.Error(tt.code, tt.message)
			}}
			c := newTestClient(t, srv, Config{})
			res, err := c.Embed(context.Background(), &EmbedRequest{Model: "nope", Inputs: []string{"x"}})
			if res != nil {
				t.Errorf("result = %+v, want nil on error", res)
			}
			var e *Error
			if !errors.As(err, &e) || e.Code != tt.code || e.Message != tt.message {
				t.Fatalf("Embed error = %v (%T), want *Error{%v, %q}", err, err, tt.code, tt.message)
			}
			if !tt.is(err) {
				t.Errorf("the IsX helper for %v is false for %v", tt.code, err)
			}
			if want := CodeName(tt.code) + ": " + tt.message; err.Error() != want {
				t.Errorf("Error() = %q, want %q", err.Error(), want)
			}
		})
	}
}

func TestEmbedRequestTimeout(t *testing.T) {
	serverDone := make(chan struct{})
	srv := &fakeserver.Server{OnEmbed: func(ctx context.Context, _ *pb.GetEmbeddingRequest) (*pb.GetEmbeddingResponse, error) {
		<-ctx.Done()
		close(serverDone)
		return nil, ctx.Err()
	}}
	c := newTestClient(t, srv, Config{RequestTimeout: 50 * time.Millisecond})
	_, err := c.Embed(context.Background(), &EmbedRequest{Model: "embedding", Inputs: []string{"x"}})
	if !IsDeadlineExceeded(err) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Embed error = %v, want DEADLINE_EXCEEDED", err)
	}
	waitClosed(t, serverDone, "the server's context to end")
}

func TestEmbedRejectsResponsesThatBreakTheContract(t *testing.T) {
	tests := []struct {
		name    string
		resp    *pb.GetEmbeddingResponse
		wantErr string
	}{
		{
			name:    "fewer embeddings than inputs",
			resp:    &pb.GetEmbeddingResponse{Dimension: 1, Embeddings: []*pb.Embedding{{Index: 0, Values: []float32{1}}}},
			wantErr: "1 embeddings for 2 inputs",
		},
		{
			name: "out of order",
			resp: &pb.GetEmbeddingResponse{Dimension: 1, Embeddings: []*pb.Embedding{
				{Index: 1, Values: []float32{1}}, {Index: 0, Values: []float32{1}},
			}},
			wantErr: "embedding 0 has index 1",
		},
		{
			name: "vector length differs from the dimension",
			resp: &pb.GetEmbeddingResponse{Dimension: 2, Embeddings: []*pb.Embedding{
				{Index: 0, Values: []float32{1, 2}}, {Index: 1, Values: []float32{1}},
			}},
			wantErr: "embedding 1 has 1 values, dimension is 2",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := &fakeserver.Server{OnEmbed: func(context.Context, *pb.GetEmbeddingRequest) (*pb.GetEmbeddingResponse, error) {
				return tt.resp, nil
			}}
			c := newTestClient(t, srv, Config{})
			res, err := c.Embed(context.Background(), &EmbedRequest{Model: "embedding", Inputs: []string{"a", "b"}})
			if !errors.Is(err, ErrBadResponse) || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Embed error = %v, want ErrBadResponse containing %q", err, tt.wantErr)
			}
			if res != nil {
				t.Errorf("result = %+v, want nil on error", res)
			}
		})
	}
}

func TestEmbedNilRequest(t *testing.T) {
	c := newTestClient(t, &fakeserver.Server{}, Config{})
	if _, err := c.Embed(context.Background(), nil); err == nil {
		t.Fatal("Embed(nil) succeeded")
	}
}

func TestCosineSimilarity(t *testing.T) {
	tests := []struct {
		name    string
		a, b    []float32
		want    float64
		wantErr bool
	}{
		{name: "same vector", a: []float32{1, 2, 3}, b: []float32{1, 2, 3}, want: 1},
		{name: "same direction, other length", a: []float32{1, 2, 3}, b: []float32{2, 4, 6}, want: 1},
		{name: "opposite", a: []float32{1, -2}, b: []float32{-1, 2}, want: -1},
		{name: "orthogonal", a: []float32{1, 0}, b: []float32{0, 5}, want: 0},
		{name: "45 degrees", a: []float32{1, 0}, b: []float32{1, 1}, want: 1 / math.Sqrt2},
		{name: "unit vectors: the dot product", a: []float32{0.6, 0.8}, b: []float32{0.8, 0.6}, want: 0.96},
		{name: "a zero vector gives 0", a: []float32{0, 0}, b: []float32{1, 1}, want: 0},
		{name: "two zero vectors give 0", a: []float32{0, 0}, b: []float32{0, 0}, want: 0},
		{name: "empty vectors give 0", a: nil, b: []float32{}, want: 0},
		{name: "length mismatch", a: []float32{1, 2}, b: []float32{1, 2, 3}, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := CosineSimilarity(tt.a, tt.b)
			if tt.wantErr {
				if !errors.Is(err, ErrDimensionMismatch) || got != 0 {
					t.Fatalf("CosineSimilarity = %v, %v; want 0 and ErrDimensionMismatch", got, err)
				}
				return
			}
			if err != nil {
				t.Fatalf("CosineSimilarity: %v", err)
			}
			if math.Abs(got-tt.want) > 1e-6 || got < -1 || got > 1 {
				t.Errorf("CosineSimilarity = %v, want %v", got, tt.want)
			}
		})
	}
}
