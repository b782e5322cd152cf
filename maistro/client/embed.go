package client

import (
	"context"
	"errors"
	"fmt"
	"time"

	pb "github.com/inference-platform/maistro/internal/gen/inference"
)

// Embed: one vector per input string, in a single unary call.

// EmbedRequest asks for one vector per input string.
type EmbedRequest struct {
	// Model is the embedding model's name as the server serves it, for example "embedding".
	Model string
	// Inputs are the strings to embed; the server rejects an empty list (IsInvalidArgument).
	// Inputs longer than the model's maximum are truncated (see Embedding.Truncated).
	Inputs []string
	// Normalize asks the server to scale each vector to unit L2 norm, so that the dot product of
	// two vectors is their cosine similarity.
	Normalize bool
	// KeepAlive: see ChatRequest.KeepAlive.
	KeepAlive *time.Duration
}

// Embedding is the vector of one input.
type Embedding struct {
	// Index is the input's position in EmbedRequest.Inputs.
	Index int `json:"index"`
	// Vector is the embedding; its length is EmbedResult.Dimension.
	Vector []float32 `json:"vector"`
	// Tokens is how many tokens of the input the model saw (after truncation).
	Tokens int `json:"tokens"`
	// Truncated is true when the input was longer than the model's maximum and was cut.
	Truncated bool `json:"truncated"`
}

// EmbedResult holds one Embedding per input, in input order: Embeddings[i] belongs to
// EmbedRequest.Inputs[i].
type EmbedResult struct {
	// Model is the model that answered.
	Model string `json:"model"`
	// Dimension is the length of every vector.
	Dimension int `json:"dimension"`
	// Embeddings are the vectors, one per input, in input order.
	Embeddings []Embedding `json:"embeddings"`
	// Usage counts tokens: PromptTokens (and TotalTokens) over all inputs; CompletionTokens is 0.
	Usage Usage `json:"usage"`
}

// Embed returns one vector per input of req, in input order, in a single unary call.
//
// Config.RequestTimeout applies as in Chat, and so do cancellation and errors: an empty
// req.Inputs or a bad field is IsInvalidArgument, an unknown model IsNotFound. A response whose
// embeddings do not match the inputs one for one (count, Index, or a vector length other than
// Dimension) is an error wrapping ErrBadResponse.
func (c *Client) Embed(ctx context.Context, req *EmbedRequest) (*EmbedResult, error) {
	if req == nil {
		return nil, errors.New("maistro: nil EmbedRequest")
	}
	ctx, cancel := c.callContext(ctx)
	defer cancel()
	resp, err := c.rpc.GetEmbedding(ctx, req.toProto())
	if err != nil {
		return nil, fromRPC(err)
	}
	res := embedResultFromProto(resp)
	if err := res.check(len(req.Inputs)); err != nil {
		return nil, err
	}
	return res, nil
}

// check verifies that r answers a request of n inputs as the API promises.
func (r *EmbedResult) check(n int) error {
	if len(r.Embeddings) != n {
		return fmt.Errorf("maistro: %w: %d embeddings for %d inputs", ErrBadResponse, len(r.Embeddings), n)
	}
	for i, e := range r.Embeddings {
		if e.Index != i {
			return fmt.Errorf("maistro: %w: embedding %d has index %d", ErrBadResponse, i, e.Index)
		}
		if len(e.Vector) != r.Dimension {
			return fmt.Errorf("maistro: %w: embedding %d has %d values, dimension is %d",
				ErrBadResponse, i, len(e.Vector), r.Dimension)
		}
	}
	return nil
}

// ---------------------------------------------------------------------------------------------
// Conversions to and from inference.v1
// ---------------------------------------------------------------------------------------------

func (r *EmbedRequest) toProto() *pb.GetEmbeddingRequest {
	return &pb.GetEmbeddingRequest{
		Model:     r.Model,
		Inputs:    r.Inputs,
		Normalize: r.Normalize,
		KeepAlive: keepAliveToProto(r.KeepAlive),
	}
}

func embedResultFromProto(m *pb.GetEmbeddingResponse) *EmbedResult {
	res := &EmbedResult{
		Model:      m.GetModel(),
		Dimension:  int(m.GetDimension()),
		Embeddings: make([]Embedding, len(m.GetEmbeddings())),
		Usage:      usageFromProto(m.GetUsage()),
	}
	for i, e := range m.GetEmbeddings() {
		vec := e.GetValues()
		if vec == nil {
			vec = []float32{} // JSON [] rather than null
		}
		res.Embeddings[i] = Embedding{
			Index:     int(e.GetIndex()),
			Vector:    vec,
			Tokens:    int(e.GetTokens()),
			Truncated: e.GetTruncated(),
		}
	}
	return res
}
