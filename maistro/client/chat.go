package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
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
	// RoleTool is the result of a tool call, answering the call named by Message.ToolCallID.
	RoleTool = "tool"
)

// Message is one turn of a conversation.
type Message struct {
	// Role is RoleSystem, RoleUser, RoleAssistant or RoleTool.
	Role string `json:"role"`
	// Content is the turn's text (for RoleTool, the tool's result).
	Content string `json:"content"`
	// ToolCalls are the tools an assistant turn called (Content may then be empty); send them
	// back as they came (ChatResult.Message does), followed by one RoleTool message per call.
	ToolCalls []ToolCall `json:"tool_calls,omitempty"`
	// ToolCallID is, in a RoleTool message, the ToolCall.ID this is the result of (required).
	ToolCallID string `json:"tool_call_id,omitempty"`
}

// ToolMessage returns the RoleTool message that answers the call with id callID with content,
// the tool's result (often JSON text).
func ToolMessage(callID, content string) Message {
	return Message{Role: RoleTool, Content: content, ToolCallID: callID}
}

// Tools, tool choice and response format follow OpenAI's chat API; the server guarantees them
// by constrained decoding (a required call's arguments, and a JSON reply, are valid against
// their schemas).

// Tool is a function the model may call (OpenAI's "function" tool).
type Tool struct {
	// Name is 1-64 letters, digits, _ or -, unique among the request's tools.
	Name string `json:"name"`
	// Description tells the model what the function does and when to call it.
	Description string `json:"description,omitempty"`
	// Parameters is the JSON schema of the arguments (an object schema); empty means the
	// function takes none.
	Parameters json.RawMessage `json:"parameters,omitempty"`
}

// ToolCall is one call of a function that the model made.
type ToolCall struct {
	// ID is unique within the conversation; the RoleTool message answering the call names it.
	ID string `json:"id"`
	// Name is the Tool's Name.
	Name string `json:"name"`
	// Arguments are the call's arguments: a JSON object's text.
	Arguments string `json:"arguments"`
}

// ToolCallDelta is a piece of a tool call as it streams: the first piece of a call carries its
// ID and Name, later pieces fragments of its Arguments. ChatResult.ToolCalls puts them together.
type ToolCallDelta struct {
	// Index says which call of the reply this is a piece of (0, 1, ...).
	Index int `json:"index"`
	// ID and Name are set on the call's first piece.
	ID   string `json:"id,omitempty"`
	Name string `json:"name,omitempty"`
	// Arguments is the next fragment of the call's arguments.
	Arguments string `json:"arguments,omitempty"`
}

// ToolChoice says whether and which tools the model must call. The zero value leaves it to the
// server: ToolChoiceAuto when the request has tools, ToolChoiceNone otherwise.
type ToolChoice struct {
	mode     string
	function string
}

// Tool choices; ToolChoiceFunction names one tool.
var (
	// ToolChoiceAuto lets the model decide: it answers in text or calls tools.
	ToolChoiceAuto = ToolChoice{mode: "auto"}
	// ToolChoiceNone hides the tools from the model.
	ToolChoiceNone = ToolChoice{mode: "none"}
	// ToolChoiceRequired makes the model call at least one tool.
	ToolChoiceRequired = ToolChoice{mode: "required"}
)

// ToolChoiceFunction makes the model call the tool named name.
func ToolChoiceFunction(name string) ToolChoice {
	return ToolChoice{mode: "function", function: name}
}

// Mode is "auto", "none", "required" or "function", or "" for the zero ToolChoice.
func (t ToolChoice) Mode() string { return t.mode }

// Function is the tool that ToolChoiceFunction names ("" for the other choices).
func (t ToolChoice) Function() string { return t.function }

// String is the mode, or for ToolChoiceFunction "function:" and the tool's name.
func (t ToolChoice) String() string {
	if t.mode == "function" {
		return "function:" + t.function
	}
	return t.mode
}

// ResponseFormatType is the kind of reply a ResponseFormat asks for.
type ResponseFormatType string

// Response format types; the empty string leaves the reply free text.
const (
	// FormatText is free text.
	FormatText ResponseFormatType = "text"
	// FormatJSONObject is any JSON object.
	FormatJSONObject ResponseFormatType = "json_object"
	// FormatJSONSchema is JSON valid against ResponseFormat.Schema.
	FormatJSONSchema ResponseFormatType = "json_schema"
)

// ResponseFormat constrains the reply (OpenAI's response_format). Make one with TextFormat,
// JSONObject or JSONSchema; the zero value leaves the reply free text.
type ResponseFormat struct {
	// Type is the kind of reply.
	Type ResponseFormatType
	// Schema is, for FormatJSONSchema, the JSON schema that the reply is valid against.
	Schema json.RawMessage
	// Name is, for FormatJSONSchema, the schema's name (informative).
	Name string
	// Strict (FormatJSONSchema) also forbids properties that an object schema does not name,
	// as OpenAI's json_schema.strict does; the schema itself is always enforced.
	Strict bool
}

// TextFormat asks for free text.
func TextFormat() ResponseFormat { return ResponseFormat{Type: FormatText} }

// JSONObject asks for a reply that is a JSON object.
func JSONObject() ResponseFormat { return ResponseFormat{Type: FormatJSONObject} }

// JSONSchema asks for a reply that is JSON valid against schema; see ResponseFormat.
func JSONSchema(name string, schema json.RawMessage, strict bool) ResponseFormat {
	return ResponseFormat{Type: FormatJSONSchema, Schema: schema, Name: name, Strict: strict}
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
	// Tools are functions the model may call; a reply that calls them ends with
	// FinishReasonToolCalls and ChatResult.ToolCalls.
	Tools []Tool
	// ToolChoice says whether and which tools the model must call (zero: the server's default).
	ToolChoice ToolChoice
	// ParallelToolCalls false makes the reply call at most one tool; nil (or true) lets the model
	// make several calls in one reply (OpenAI's parallel_tool_calls).
	ParallelToolCalls *bool
	// ResponseFormat constrains the reply to JSON (zero: free text). It does not go with Tools
	// unless ToolChoice is ToolChoiceNone.
	ResponseFormat ResponseFormat
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
	// FinishReasonToolCalls: the model called tools (Chat): ChatResult.ToolCalls are to be run
	// and their results sent back (ToolMessage).
	FinishReasonToolCalls FinishReason = "tool_calls"
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
	// ToolCalls are pieces of the tool calls being made; ChatResult.ToolCalls joins them.
	ToolCalls []ToolCallDelta `json:"tool_calls,omitempty"`
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
	// ToolCalls are the tools the model called, in Index order, each put together from the
	// chunks' ToolCallDelta pieces (FinishReason is then FinishReasonToolCalls).
	ToolCalls []ToolCall `json:"tool_calls,omitempty"`
	// FinishReason says why the generation ended.
	FinishReason FinishReason `json:"finish_reason"`
	// Usage counts tokens.
	Usage Usage `json:"usage"`
	// Timings say where the time went.
	Timings Timings `json:"timings"`
}

// Message returns the reply as an assistant Message, its tool calls included, ready to append
// to the conversation (followed, when it called tools, by a ToolMessage for each call).
func (r *ChatResult) Message() Message {
	return Message{Role: RoleAssistant, Content: r.Text, ToolCalls: slices.Clone(r.ToolCalls)}
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
	var calls toolCallAssembler
	res, err := textStream(ctx, c, open, chatChunkFromProto, func(chunk ChatChunk) error {
		calls.add(chunk.ToolCalls)
		if fn != nil {
			return fn(chunk)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if res.ToolCalls, err = calls.result(); err != nil {
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
	toChunk := func(m *pb.GenerateStreamResponse) ChatChunk { return textChunkFromProto(m) }
	var each func(ChatChunk) error
	if fn != nil {
		each = func(ch ChatChunk) error {
			return fn(GenerateChunk{
				Model: ch.Model, Delta: ch.Delta, Done: ch.Done,
				FinishReason: ch.FinishReason, Usage: ch.Usage, Timings: ch.Timings,
			})
		}
	}
	res, err := textStream(ctx, c, open, toChunk, each)
	if err != nil {
		return nil, err
	}
	return &GenerateResult{
		Model: res.Model, Text: res.Text, FinishReason: res.FinishReason, Usage: res.Usage, Timings: res.Timings,
	}, nil
}

// textStream runs a ChatStream or GenerateStream call: each message becomes a chunk (toChunk)
// handed to fn (which may be nil); the result joins the deltas and takes finish reason, usage
// and timings from the last chunk.
func textStream[R any](ctx context.Context, c *Client,
	open func(context.Context) (grpc.ServerStreamingClient[R], error),
	toChunk func(*R) ChatChunk,
	fn func(ChatChunk) error,
) (ChatResult, error) {
	var (
		res  ChatResult
		text strings.Builder
	)
	err := streamCall(ctx, c, open, func(m *R) (bool, error) {
		chunk := toChunk(m)
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

// toolCallAssembler puts a reply's tool calls together from their streamed pieces: by Index,
// ID and Name from the first piece that has them, Arguments concatenated in order.
type toolCallAssembler struct {
	calls []*assembledCall // in the order their first piece arrived
	at    map[int]*assembledCall
	err   error // the first piece that breaks the API's contract
}

type assembledCall struct {
	index    int
	id, name string
	args     strings.Builder
}

func (a *toolCallAssembler) add(deltas []ToolCallDelta) {
	for _, d := range deltas {
		if d.Index < 0 {
			if a.err == nil {
				a.err = fmt.Errorf("maistro: %w: tool call delta with index %d", ErrBadResponse, d.Index)
			}
			continue
		}
		call := a.at[d.Index]
		if call == nil {
			if a.at == nil {
				a.at = make(map[int]*assembledCall)
			}
			call = &assembledCall{index: d.Index}
			a.at[d.Index] = call
			a.calls = append(a.calls, call)
		}
		if call.id == "" {
			call.id = d.ID
		}
		if call.name == "" {
			call.name = d.Name
		}
		call.args.WriteString(d.Arguments)
	}
}

// result returns the calls in Index order (nil when there were none), or ErrBadResponse when a
// piece had a negative index or a call never got its id or name.
func (a *toolCallAssembler) result() ([]ToolCall, error) {
	if a.err != nil || len(a.calls) == 0 {
		return nil, a.err
	}
	slices.SortFunc(a.calls, func(x, y *assembledCall) int { return x.index - y.index })
	out := make([]ToolCall, len(a.calls))
	for i, call := range a.calls {
		if call.id == "" || call.name == "" {
			return nil, fmt.Errorf("maistro: %w: tool call %d has no id or no name", ErrBadResponse, call.index)
		}
		out[i] = ToolCall{ID: call.id, Name: call.name, Arguments: call.args.String()}
	}
	return out, nil
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
		msgs[i] = &pb.ChatMessage{Role: m.Role, Content: m.Content, ToolCallId: m.ToolCallID}
		for _, call := range m.ToolCalls {
			msgs[i].ToolCalls = append(msgs[i].ToolCalls,
				&pb.ToolCall{Id: call.ID, Name: call.Name, Arguments: call.Arguments})
		}
	}
	var tools []*pb.Tool
	for _, t := range r.Tools {
		tools = append(tools, &pb.Tool{Name: t.Name, Description: t.Description, ParametersJson: string(t.Parameters)})
	}
	return &pb.ChatStreamRequest{
		Model:             r.Model,
		Messages:          msgs,
		Options:           r.Options.toProto(),
		KeepAlive:         keepAliveToProto(r.KeepAlive),
		Tools:             tools,
		ToolChoice:        r.ToolChoice.toProto(),
		ResponseFormat:    r.ResponseFormat.toProto(),
		ParallelToolCalls: r.ParallelToolCalls,
	}
}

var toolChoiceModes = map[string]pb.ToolChoice_Mode{
	"":         pb.ToolChoice_MODE_UNSPECIFIED,
	"auto":     pb.ToolChoice_MODE_AUTO,
	"none":     pb.ToolChoice_MODE_NONE,
	"required": pb.ToolChoice_MODE_REQUIRED,
	"function": pb.ToolChoice_MODE_FUNCTION,
}

// toProto returns nil for the zero ToolChoice, so that the field stays unset.
func (t ToolChoice) toProto() *pb.ToolChoice {
	if t == (ToolChoice{}) {
		return nil
	}
	return &pb.ToolChoice{Mode: toolChoiceModes[t.mode], Function: t.function}
}

var responseFormatTypes = map[ResponseFormatType]pb.ResponseFormat_Type{
	FormatText:       pb.ResponseFormat_TYPE_TEXT,
	FormatJSONObject: pb.ResponseFormat_TYPE_JSON_OBJECT,
	FormatJSONSchema: pb.ResponseFormat_TYPE_JSON_SCHEMA,
}

// toProto returns nil for the zero ResponseFormat, so that the field stays unset. A Type this
// client does not know is sent as TYPE_UNSPECIFIED with the other fields, for the server to judge.
func (f *ResponseFormat) toProto() *pb.ResponseFormat {
	if f.Type == "" && len(f.Schema) == 0 && f.Name == "" && !f.Strict {
		return nil
	}
	return &pb.ResponseFormat{
		Type: responseFormatTypes[f.Type], JsonSchema: string(f.Schema), Name: f.Name, Strict: f.Strict,
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
	case pb.FinishReason_FINISH_REASON_TOOL_CALLS:
		return FinishReasonToolCalls
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

func textChunkFromProto(m streamMessage) ChatChunk {
	return ChatChunk{
		Model:        m.GetModel(),
		Delta:        m.GetDelta(),
		Done:         m.GetDone(),
		FinishReason: finishReasonFromProto(m.GetFinishReason()),
		Usage:        usageFromProto(m.GetUsage()),
		Timings:      timingsFromProto(m.GetTimings()),
	}
}

func chatChunkFromProto(m *pb.ChatStreamResponse) ChatChunk {
	chunk := textChunkFromProto(m)
	for _, d := range m.GetToolCalls() {
		chunk.ToolCalls = append(chunk.ToolCalls, ToolCallDelta{
			Index: int(d.GetIndex()), ID: d.GetId(), Name: d.GetName(), Arguments: d.GetArguments(),
		})
	}
	return chunk
}
