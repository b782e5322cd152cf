package client

import (
	"context"
	"encoding/json"
	"errors"
	"reflect"
	"testing"

	"github.com/inference-platform/maistro/internal/fakeserver"
	pb "github.com/inference-platform/maistro/internal/gen/inference"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

const weatherSchema = `{"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}`

// captureChat answers every chat with one final chunk and keeps the request.
func captureChat(got **pb.ChatStreamRequest) *fakeserver.Server {
	return &fakeserver.Server{OnChat: func(req *pb.ChatStreamRequest, s grpc.ServerStreamingServer[pb.ChatStreamResponse]) error {
		*got = req
		return s.Send(&pb.ChatStreamResponse{Done: true, FinishReason: pb.FinishReason_FINISH_REASON_STOP})
	}}
}

func TestChatSendsToolsToolChoiceAndResponseFormatExactly(t *testing.T) {
	weather := Tool{Name: "get_weather", Description: "Weather in a city", Parameters: json.RawMessage(weatherSchema)}
	no := false
	tests := []struct {
		name string
		req  ChatRequest
		want *pb.ChatStreamRequest
	}{
		{
			name: "nothing new set leaves the new fields unset",
			req:  *chatRequest("x"),
			want: &pb.ChatStreamRequest{},
		},
		{
			name: "tools with tool choice auto",
			req:  ChatRequest{Tools: []Tool{weather, {Name: "now"}}, ToolChoice: ToolChoiceAuto},
			want: &pb.ChatStreamRequest{
				Tools: []*pb.Tool{
					{Name: "get_weather", Description: "Weather in a city", ParametersJson: weatherSchema},
					{Name: "now"},
				},
				ToolChoice: &pb.ToolChoice{Mode: pb.ToolChoice_MODE_AUTO},
			},
		},
		{
			name: "one tool call at most",
			req:  ChatRequest{Tools: []Tool{{Name: "now"}}, ParallelToolCalls: &no},
			want: &pb.ChatStreamRequest{Tools: []*pb.Tool{{Name: "now"}}, ParallelToolCalls: &no},
		},
		{
			name: "tool choice none",
			req:  ChatRequest{ToolChoice: ToolChoiceNone},
			want: &pb.ChatStreamRequest{ToolChoice: &pb.ToolChoice{Mode: pb.ToolChoice_MODE_NONE}},
		},
		{
			name: "tool choice required",
			req:  ChatRequest{ToolChoice: ToolChoiceRequired},
			want: &pb.ChatStreamRequest{ToolChoice: &pb.ToolChoice{Mode: pb.ToolChoice_MODE_REQUIRED}},
		},
		{
			name: "tool choice of one function",
			req:  ChatRequest{ToolChoice: ToolChoiceFunction("get_weather")},
			want: &pb.ChatStreamRequest{ToolChoice: &pb.ToolChoice{Mode: pb.ToolChoice_MODE_FUNCTION, Function: "get_weather"}},
		},
		{
			name: "response format text",
			req:  ChatRequest{ResponseFormat: TextFormat()},
			want: &pb.ChatStreamRequest{ResponseFormat: &pb.ResponseFormat{Type: pb.ResponseFormat_TYPE_TEXT}},
		},
		{
			name: "response format JSON object",
			req:  ChatRequest{ResponseFormat: JSONObject()},
			want: &pb.ChatStreamRequest{ResponseFormat: &pb.ResponseFormat{Type: pb.ResponseFormat_TYPE_JSON_OBJECT}},
		},
		{
			name: "response format JSON schema, strict",
			req:  ChatRequest{ResponseFormat: JSONSchema("weather", json.RawMessage(weatherSchema), true)},
			want: &pb.ChatStreamRequest{ResponseFormat: &pb.ResponseFormat{
				Type: pb.ResponseFormat_TYPE_JSON_SCHEMA, JsonSchema: weatherSchema, Name: "weather", Strict: true,
			}},
		},
		{
			name: "an assistant turn with tool calls and the tool's answer",
			req: ChatRequest{Messages: []Message{
				{Role: RoleUser, Content: "Weather in Paris?"},
				{Role: RoleAssistant, ToolCalls: []ToolCall{
					{ID: "call_1", Name: "get_weather", Arguments: `{"city":"Paris"}`},
					{ID: "call_2", Name: "now", Arguments: `{}`},
				}},
				ToolMessage("call_1", `{"temp_c":21}`),
				{Role: RoleTool, Content: "12:00", ToolCallID: "call_2"},
			}},
			want: &pb.ChatStreamRequest{Messages: []*pb.ChatMessage{
				{Role: "user", Content: "Weather in Paris?"},
				{Role: "assistant", ToolCalls: []*pb.ToolCall{
					{Id: "call_1", Name: "get_weather", Arguments: `{"city":"Paris"}`},
					{Id: "call_2", Name: "now", Arguments: `{}`},
				}},
				{Role: "tool", Content: `{"temp_c":21}`, ToolCallId: "call_1"},
				{Role: "tool", Content: "12:00", ToolCallId: "call_2"},
			}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got *pb.ChatStreamRequest
			c := newTestClient(t, captureChat(&got), Config{})
			req := tt.req
			if req.Model == "" {
				req.Model = "llm"
			}
			if req.Messages == nil {
				req.Messages = chatRequest("x").Messages
			}
			if _, err := c.Chat(context.Background(), &req, nil); err != nil {
				t.Fatalf("Chat: %v", err)
			}
			want := proto.Clone(tt.want).(*pb.ChatStreamRequest)
			want.Model = "llm"
			if want.Messages == nil {
				want.Messages = []*pb.ChatMessage{{Role: "user", Content: "x"}}
			}
			want.Options = &pb.GenerationOptions{}
			if !proto.Equal(got, want) {
				t.Errorf("server got\n %v\nwant\n %v", got, want)
			}
		})
	}
}

func TestChatPutsToolCallsTogetherFromTheirDeltas(t *testing.T) {
	// Two calls, their pieces interleaved and the second call's first piece arriving first.
	sent := [][]*pb.ToolCallDelta{
		{{Index: 1, Id: "call_b", Name: "now"}},
		{{Index: 0, Id: "call_a", Name: "get_weather", Arguments: `{"ci`}},
		{{Index: 0, Arguments: `ty": "Pa`}, {Index: 1, Arguments: `{}`}},
		{{Index: 0, Arguments: `ris"}`}},
	}
	srv := &fakeserver.Server{OnChat: func(_ *pb.ChatStreamRequest, s grpc.ServerStreamingServer[pb.ChatStreamResponse]) error {
		if err := s.Send(&pb.ChatStreamResponse{Model: "llm", Delta: "Let me check."}); err != nil {
			return err
		}
		for _, d := range sent {
			if err := s.Send(&pb.ChatStreamResponse{Model: "llm", ToolCalls: d}); err != nil {
				return err
			}
		}
		return s.Send(&pb.ChatStreamResponse{Model: "llm", Done: true, FinishReason: pb.FinishReason_FINISH_REASON_TOOL_CALLS})
	}}
	c := newTestClient(t, srv, Config{})

	var seen [][]ToolCallDelta
	res, err := c.Chat(context.Background(), chatRequest("Weather in Paris, and the time?"), func(ch ChatChunk) error {
		if ch.ToolCalls != nil {
			seen = append(seen, ch.ToolCalls)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("Chat: %v", err)
	}
	wantSeen := [][]ToolCallDelta{
		{{Index: 1, ID: "call_b", Name: "now"}},
		{{Index: 0, ID: "call_a", Name: "get_weather", Arguments: `{"ci`}},
		{{Index: 0, Arguments: `ty": "Pa`}, {Index: 1, Arguments: `{}`}},
		{{Index: 0, Arguments: `ris"}`}},
	}
	if !reflect.DeepEqual(seen, wantSeen) {
		t.Errorf("the callback saw deltas\n %+v\nwant\n %+v", seen, wantSeen)
	}
	wantCalls := []ToolCall{
		{ID: "call_a", Name: "get_weather", Arguments: `{"city": "Paris"}`},
		{ID: "call_b", Name: "now", Arguments: `{}`},
	}
	if !reflect.DeepEqual(res.ToolCalls, wantCalls) {
		t.Errorf("ToolCalls\n %+v\nwant\n %+v", res.ToolCalls, wantCalls)
	}
	if res.FinishReason != FinishReasonToolCalls || res.Text != "Let me check." {
		t.Errorf("finish reason %q, text %q", res.FinishReason, res.Text)
	}
	m := res.Message()
	if want := (Message{Role: RoleAssistant, Content: "Let me check.", ToolCalls: wantCalls}); !reflect.DeepEqual(m, want) {
		t.Errorf("Message() = %+v, want %+v", m, want)
	}
	m.ToolCalls[0].Name = "changed"
	if res.ToolCalls[0].Name != "get_weather" {
		t.Error("Message() shares its ToolCalls with the result")
	}

	// The reply, sent back with the tools' results, reaches the server as it came.
	var got *pb.ChatStreamRequest
	c2 := newTestClient(t, captureChat(&got), Config{})
	next := chatRequest("Weather in Paris, and the time?")
	next.Messages = append(next.Messages, res.Message(),
		ToolMessage("call_a", `{"temp_c":21}`), ToolMessage("call_b", "12:00"))
	if _, err := c2.Chat(context.Background(), next, nil); err != nil {
		t.Fatalf("Chat with the results: %v", err)
	}
	wantMsgs := []*pb.ChatMessage{
		{Role: "user", Content: "Weather in Paris, and the time?"},
		{Role: "assistant", Content: "Let me check.", ToolCalls: []*pb.ToolCall{
			{Id: "call_a", Name: "get_weather", Arguments: `{"city": "Paris"}`},
			{Id: "call_b", Name: "now", Arguments: `{}`},
		}},
		{Role: "tool", Content: `{"temp_c":21}`, ToolCallId: "call_a"},
		{Role: "tool", Content: "12:00", ToolCallId: "call_b"},
	}
	if !proto.Equal(&pb.ChatStreamRequest{Messages: got.GetMessages()}, &pb.ChatStreamRequest{Messages: wantMsgs}) {
		t.Errorf("messages sent back\n %v\nwant\n %v", got.GetMessages(), wantMsgs)
	}
}

func TestChatWithoutToolCallsHasNone(t *testing.T) {
	srv := &fakeserver.Server{OnChat: func(_ *pb.ChatStreamRequest, s grpc.ServerStreamingServer[pb.ChatStreamResponse]) error {
		return s.Send(&pb.ChatStreamResponse{Delta: `{"city":"Paris"}`, Done: true, FinishReason: pb.FinishReason_FINISH_REASON_STOP})
	}}
	c := newTestClient(t, srv, Config{})
	res, err := c.Chat(context.Background(), chatRequest("x"), nil)
	if err != nil {
		t.Fatalf("Chat: %v", err)
	}
	if res.ToolCalls != nil || res.Message().ToolCalls != nil {
		t.Errorf("ToolCalls %v, want nil", res.ToolCalls)
	}
	data, err := json.Marshal(res)
	if err != nil {
		t.Fatal(err)
	}
	var fields map[string]any
	if err := json.Unmarshal(data, &fields); err != nil {
		t.Fatal(err)
	}
	if _, ok := fields["tool_calls"]; ok {
		t.Errorf("JSON of a reply without tool calls has tool_calls: %s", data)
	}
}

func TestToolCallDeltasThatBreakTheContract(t *testing.T) {
	tests := []struct {
		name   string
		deltas []*pb.ToolCallDelta
	}{
		{"a negative index", []*pb.ToolCallDelta{{Index: -1, Id: "c", Name: "f"}}},
		{"a call without a name", []*pb.ToolCallDelta{{Index: 0, Id: "c", Arguments: "{}"}}},
		{"a call without an id", []*pb.ToolCallDelta{{Index: 0, Name: "f", Arguments: "{}"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := &fakeserver.Server{OnChat: func(_ *pb.ChatStreamRequest, s grpc.ServerStreamingServer[pb.ChatStreamResponse]) error {
				return s.Send(&pb.ChatStreamResponse{
					ToolCalls: tt.deltas, Done: true, FinishReason: pb.FinishReason_FINISH_REASON_TOOL_CALLS,
				})
			}}
			c := newTestClient(t, srv, Config{})
			res, err := c.Chat(context.Background(), chatRequest("x"), nil)
			if !errors.Is(err, ErrBadResponse) || res != nil {
				t.Fatalf("Chat = %+v, %v; want ErrBadResponse", res, err)
			}
		})
	}
}

func TestServerRejectionOfAToolNamesTheField(t *testing.T) {
	srv := &fakeserver.Server{OnChat: func(*pb.ChatStreamRequest, grpc.ServerStreamingServer[pb.ChatStreamResponse]) error {
		return status.Error(codes.InvalidArgument, "tools[0].parameters is not valid JSON: Expecting value")
	}}
	c := newTestClient(t, srv, Config{})
	req := chatRequest("x")
	// Not checked here: the server judges the schema and names the field.
	req.Tools = []Tool{{Name: "f", Parameters: json.RawMessage("{not json")}}
	_, err := c.Chat(context.Background(), req, nil)
	var e *Error
	if !IsInvalidArgument(err) || !errors.As(err, &e) || e.Message != "tools[0].parameters is not valid JSON: Expecting value" {
		t.Fatalf("Chat error = %v, want INVALID_ARGUMENT naming tools[0].parameters", err)
	}
}

func TestToolChoiceValues(t *testing.T) {
	tests := []struct {
		choice             ToolChoice
		mode, fn, asString string
	}{
		{ToolChoice{}, "", "", ""},
		{ToolChoiceAuto, "auto", "", "auto"},
		{ToolChoiceNone, "none", "", "none"},
		{ToolChoiceRequired, "required", "", "required"},
		{ToolChoiceFunction("get_weather"), "function", "get_weather", "function:get_weather"},
	}
	for _, tt := range tests {
		if tt.choice.Mode() != tt.mode || tt.choice.Function() != tt.fn || tt.choice.String() != tt.asString {
			t.Errorf("%#v: Mode %q Function %q String %q", tt.choice, tt.choice.Mode(), tt.choice.Function(), tt.choice.String())
		}
	}
	if ToolChoiceFunction("f") != ToolChoiceFunction("f") || ToolChoiceFunction("f") == ToolChoiceFunction("g") {
		t.Error("ToolChoice values do not compare by mode and function")
	}
}
