package client

import (
	"context"
	"errors"
	"strings"
	"time"

	pb "github.com/inference-platform/maistro/internal/gen/inference"
	"google.golang.org/grpc"
)

// Chat and Generate: a conversation's next turn, or a raw prompt's continuation, streamed. The
// types mirror inference.v1 (proto/inference/v1/inference.proto) but use plain Go values
// (time.Duration, string enums, nil for "unset") so that callers never build protobuf messages;
// the conversions live at the bottom of this file.

// Roles of a conversation's messages.
const (
	RoleSystem    = "system"
	RoleUser      = "user"
	RoleAssistant = "assistant"
)

// Message is one turn of a conversation.
type Message struct {
	// Role is RoleSystem, RoleUser or RoleAssistant.
	Role string `json:"role"`
	// Content is the turn's text.
	Content string `json:"content"`
}

// Options control sampling. A nil field takes the model's default; with Go 1.26 a value is set
// as, for example, Options{MaxTokens: new(int32(64))}.
type Options struct {
	// MaxTokens is the most tokens to generate: > 0 and at most the model's limit.
	MaxTokens *int32 `json:"max_tokens,omitempty"`
	// Temperature is >= 0; 0 means greedy decoding.
	Temperature *float32 `json:"temperature,omitempty"`
	// TopP is in (0, 1].
	TopP *float32 `json:"top_p,omitempty"`
	// TopK is >= 0; 0 disables top-k filtering.
	TopK *int32 `json:"top_k,omitempty"`
	// RepetitionPenalty is > 0; 1 means no penalty.
	RepetitionPenalty *float32 `json:"repetition_penalty,omitempty"`
	// FrequencyPenalty is in [-2, 2], as OpenAI defines it.
	FrequencyPenalty *float32 `json:"frequency_penalty,omitempty"`
	// PresencePenalty is in [-2, 2], as OpenAI defines it.
	PresencePenalty *float32 `json:"presence_penalty,omitempty"`
	// Seed makes sampling reproducible for the same request and model.
	Seed *uint64 `json:"seed,omitempty"`
	// Stop ends generation before the first occurrence of any of these strings; the text
	// returned excludes it.
	Stop []string `json:"stop,omitempty"`
}

// ChatRequest asks for the next assistant turn of a conversation.
type ChatRequest struct {
	// Model is the model's name as the server serves it, for example "llm".
	Model string
	// Messages is the conversation so far, oldest first.
	Messages []Message
	// Options control sampling.
	Options Options
	// KeepAlive is how long the model stays loaded after this request: 0 unloads it at once, a
	// negative value keeps it loaded, nil takes the server's default.
	KeepAlive *time.Duration
}

// GenerateRequest asks for the continuation of a raw prompt (no chat template is applied).
type GenerateRequest struct {
	// Model is the model's name as the server serves it, for example "llm".
	Model string
	// Prompt is the text to continue.
	Prompt string
	// Options control sampling.
	Options Options
	// KeepAlive: see ChatRequest.KeepAlive.
	KeepAlive *time.Duration
}

// FinishReason says why a generation ended.
type FinishReason string

// Finish reasons; the empty string means the server did not say (only chunks before the last).
const (
	// FinishReasonStop: the model ended its answer or a stop sequence was met.
	FinishReasonStop FinishReason = "stop"
	// FinishReasonLength: MaxTokens was reached.
	FinishReasonLength FinishReason = "length"
	// FinishReasonCancelled: the request was cancelled before the end.
	FinishReasonCancelled FinishReason = "cancelled"
)

// Timings say where a request's time went, as the server measured it. In JSON they are
// nanoseconds, as in Ollama's API.
type Timings struct {
	// Load is the time spent loading the model for this request (zero when already loaded).
	Load time.Duration `json:"load_duration"`
	// TimeToFirstToken runs from the request's arrival to the first text delta.
	TimeToFirstToken time.Duration `json:"time_to_first_token"`
	// Total runs from the request's arrival to the last message.
	Total time.Duration `json:"total_duration"`
}

// ChatChunk is one streamed piece of a chat reply. The last chunk has Done set and carries
// FinishReason, Usage and Timings; earlier chunks leave them zero.
type ChatChunk struct {
	// Model is the model that answered.
	Model string `json:"model"`
	// Delta is the text generated since the previous chunk (may be empty on the last chunk).
	Delta string `json:"delta"`
	// Done marks the last chunk.
	Done bool `json:"done"`
	// FinishReason says why the generation ended (last chunk only).
	FinishReason FinishReason `json:"finish_reason,omitempty"`
	// Usage counts tokens (last chunk only).
	Usage Usage `json:"usage"`
	// Timings say where the time went (last chunk only).
	Timings Timings `json:"timings"`
}

// ChatResult is a whole chat reply, as Chat returns it once the stream has ended.
type ChatResult struct {
	// Model is the model that answered.
	Model string `json:"model"`
	// Text is the assistant's whole reply: every chunk's Delta, in order.
	Text string `json:"text"`
	// FinishReason says why the generation ended.
	FinishReason FinishReason `json:"finish_reason"`
	// Usage counts tokens.
	Usage Usage `json:"usage"`
	// Timings say where the time went.
	Timings Timings `json:"timings"`
}

// Message returns the reply as an assistant Message, ready to append to the conversation.
func (r *ChatResult) Message() Message {
	return Message{Role: RoleAssistant, Content: r.Text}
}

// GenerateChunk is one streamed piece of a continuation; see ChatChunk.
type GenerateChunk struct {
	// Model is the model that answered.
	Model string `json:"model"`
	// Delta is the text generated since the previous chunk (may be empty on the last chunk).
	Delta string `json:"delta"`
	// Done marks the last chunk.
	Done bool `json:"done"`
	// FinishReason says why the generation ended (last chunk only).
	FinishReason FinishReason `json:"finish_reason,omitempty"`
	// Usage counts tokens (last chunk only).
	Usage Usage `json:"usage"`
	// Timings say where the time went (last chunk only).
	Timings Timings `json:"timings"`
}

// GenerateResult is a whole continuation, as Generate returns it once the stream has ended.
type GenerateResult struct {
	// Model is the model that answered.
	Model string `json:"model"`
	// Text is the whole continuation: every chunk's Delta, in order.
	Text string `json:"text"`
	// FinishReason says why the generation ended.
	FinishReason FinishReason `json:"finish_reason"`
	// Usage counts tokens.
	Usage Usage `json:"usage"`
	// Timings say where the time went.
	Timings Timings `json:"timings"`
}

// ChatFunc receives each chunk of a chat reply as it arrives. Returning an error cancels the
// call, and Chat returns that error unchanged.
type ChatFunc func(ChatChunk) error

// GenerateFunc receives each chunk of a continuation as it arrives. Returning an error cancels
// the call, and Generate returns that error unchanged.
type GenerateFunc func(GenerateChunk) error

// Chat streams the next assistant turn of a conversation, calling fn (which may be nil) with
// each chunk in order, and returns the whole reply once the server has sent its last chunk.
//
// Cancelling ctx cancels the call on the server. Errors from the server are *Error values (see
// IsNotFound and the other IsX helpers); an error returned by fn is returned unchanged.
func (c *Client) Chat(ctx context.Context, req *ChatRequest, fn ChatFunc) (*ChatResult, error) {
	if req == nil {
		return nil, errors.New("maistro: nil ChatRequest")
	}
	open := func(ctx context.Context) (grpc.ServerStreamingClient[pb.ChatStreamResponse], error) {
		return c.rpc.ChatStream(ctx, req.toProto())
	}
	res, err := textStream(ctx, c, open, fn)
	if err != nil {
		return nil, err
	}
	return &res, nil
}

// Generate streams the continuation of a raw prompt, calling fn (which may be nil) with each
// chunk in order, and returns the whole continuation once the server has sent its last chunk.
// Cancellation and errors behave as in Chat.
func (c *Client) Generate(ctx context.Context, req *GenerateRequest, fn GenerateFunc) (*GenerateResult, error) {
	if req == nil {
		return nil, errors.New("maistro: nil GenerateRequest")
	}
	open := func(ctx context.Context) (grpc.ServerStreamingClient[pb.GenerateStreamResponse], error) {
		return c.rpc.GenerateStream(ctx, req.toProto())
	}
	var each func(ChatChunk) error
	if fn != nil {
		each = func(chunk ChatChunk) error { return fn(GenerateChunk(chunk)) }
	}
	res, err := textStream(ctx, c, open, each)
	if err != nil {
		return nil, err
	}
	result := GenerateResult(res)
	return &result, nil
}

// textStream runs a ChatStream or GenerateStream call (their messages have the same fields):
// each message becomes a chunk handed to fn (which may be nil); the result joins the deltas and
// takes finish reason, usage and timings from the last chunk.
func textStream[R any, PR interface {
	*R
	streamMessage
}](ctx context.Context, c *Client,
	open func(context.Context) (grpc.ServerStreamingClient[R], error),
	fn func(ChatChunk) error,
) (ChatResult, error) {
	var (
		res  ChatResult
		text strings.Builder
	)
	err := streamCall(ctx, c, open, func(m *R) (bool, error) {
		chunk := chatChunkFromProto(PR(m))
		text.WriteString(chunk.Delta)
		res.Model = chunk.Model
		if chunk.Done {
			res.FinishReason, res.Usage, res.Timings = chunk.FinishReason, chunk.Usage, chunk.Timings
		}
		if fn != nil {
			if err := fn(chunk); err != nil {
				return false, err
			}
		}
		return chunk.Done, nil
	})
	res.Text = text.String()
	return res, err
}

// ---------------------------------------------------------------------------------------------
// Conversions to and from inference.v1
// ---------------------------------------------------------------------------------------------

func (o *Options) toProto() *pb.GenerationOptions {
	return &pb.GenerationOptions{
		MaxTokens:         o.MaxTokens,
		Temperature:       o.Temperature,
		TopP:              o.TopP,
		TopK:              o.TopK,
		RepetitionPenalty: o.RepetitionPenalty,
		FrequencyPenalty:  o.FrequencyPenalty,
		PresencePenalty:   o.PresencePenalty,
		Seed:              o.Seed,
		Stop:              o.Stop,
	}
}

func (r *ChatRequest) toProto() *pb.ChatStreamRequest {
	msgs := make([]*pb.ChatMessage, len(r.Messages))
	for i, m := range r.Messages {
		msgs[i] = &pb.ChatMessage{Role: m.Role, Content: m.Content}
	}
	return &pb.ChatStreamRequest{
		Model:     r.Model,
		Messages:  msgs,
		Options:   r.Options.toProto(),
		KeepAlive: keepAliveToProto(r.KeepAlive),
	}
}

func (r *GenerateRequest) toProto() *pb.GenerateStreamRequest {
	return &pb.GenerateStreamRequest{
		Model:     r.Model,
		Prompt:    r.Prompt,
		Options:   r.Options.toProto(),
		KeepAlive: keepAliveToProto(r.KeepAlive),
	}
}

func finishReasonFromProto(f pb.FinishReason) FinishReason {
	switch f {
	case pb.FinishReason_FINISH_REASON_UNSPECIFIED:
		return ""
	case pb.FinishReason_FINISH_REASON_STOP:
		return FinishReasonStop
	case pb.FinishReason_FINISH_REASON_LENGTH:
		return FinishReasonLength
	case pb.FinishReason_FINISH_REASON_CANCELLED:
		return FinishReasonCancelled
	}
	// A reason added to the proto after this client was built: keep its name rather than drop it.
	return FinishReason(strings.ToLower(strings.TrimPrefix(f.String(), "FINISH_REASON_")))
}

func timingsFromProto(t *pb.Timings) Timings {
	return Timings{
		Load:             t.GetLoadDuration().AsDuration(),
		TimeToFirstToken: t.GetTimeToFirstToken().AsDuration(),
		Total:            t.GetTotalDuration().AsDuration(),
	}
}

// streamMessage is what ChatStreamResponse and GenerateStreamResponse have in common.
type streamMessage interface {
	GetModel() string
	GetDelta() string
	GetDone() bool
	GetFinishReason() pb.FinishReason
	GetUsage() *pb.Usage
	GetTimings() *pb.Timings
}

func chatChunkFromProto(m streamMessage) ChatChunk {
	return ChatChunk{
		Model:        m.GetModel(),
		Delta:        m.GetDelta(),
		Done:         m.GetDone(),
		FinishReason: finishReasonFromProto(m.GetFinishReason()),
		Usage:        usageFromProto(m.GetUsage()),
		Timings:      timingsFromProto(m.GetTimings()),
	}
}
