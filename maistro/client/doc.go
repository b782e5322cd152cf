// Package client is the Go client of the inference platform's API, inference.v1.InferenceService
// (proto/inference/v1/inference.proto), served over gRPC by the adapter in front of Triton.
//
// A Client holds one gRPC connection, reused by every call and safe for concurrent use:
//
//	cfg, err := client.LoadConfig("config.yaml")
//	if err != nil { ... }
//	c, err := client.New(cfg)
//	if err != nil { ... }
//	defer c.Close()
//
//	res, err := c.Chat(ctx, &client.ChatRequest{
//		Model:    "llm",
//		Messages: []client.Message{{Role: client.RoleUser, Content: "Hello"}},
//		Options:  client.Options{MaxTokens: new(int32(64))},
//	}, func(ch client.ChatChunk) error {
//		fmt.Print(ch.Delta) // called as each piece arrives; an error here stops the stream
//		return nil
//	})
//	if client.IsNotFound(err) { ... }
//
// Tools, ToolChoice and ResponseFormat follow OpenAI's chat API, and the server guarantees them
// by constrained decoding. A reply that calls tools ends with FinishReasonToolCalls and its
// ToolCalls, put together from the chunks' ToolCallDelta pieces; send them back with the
// tools' results for the next turn:
//
//	req := &client.ChatRequest{Model: "llm", Messages: msgs, ToolChoice: client.ToolChoiceRequired,
//		Tools: []client.Tool{{Name: "get_weather", Description: "Weather in a city",
//			Parameters: json.RawMessage(`{"type":"object","properties":{"city":{"type":"string"}}}`)}}}
//	res, err := c.Chat(ctx, req, nil)
//	if err != nil { ... }
//	req.Messages = append(req.Messages, res.Message()) // the assistant turn, its calls included
//	for _, call := range res.ToolCalls { // call.Name, call.Arguments (a JSON object's text)
//		req.Messages = append(req.Messages, client.ToolMessage(call.ID, `{"temp_c": 21}`))
//	}
//
// and ResponseFormat: client.JSONSchema("person", schema, true) (or client.JSONObject()) makes
// the reply JSON valid against schema.
//
// Embed turns strings into vectors in one unary call, and CosineSimilarity compares two:
//
//	emb, err := c.Embed(ctx, &client.EmbedRequest{
//		Model:     "embedding",
//		Inputs:    []string{"a cat sits on the mat", "a kitten rests on the rug"},
//		Normalize: true,
//	})
//	if err != nil { ... }
//	sim, err := client.CosineSimilarity(emb.Embeddings[0].Vector, emb.Embeddings[1].Vector)
//
// Pictures are made by jobs that run in the background on the server: GenerateImage (and
// EditImage, from an input picture) returns a job id at once, and WaitForImage polls the job
// until it ends, reporting its progress:
//
//	id, err := c.GenerateImage(ctx, &client.ImageRequest{
//		Model: "image", Prompt: "a red square", Width: 512, Height: 512, Seed: new(uint64(1)),
//	})
//	if err != nil { ... } // a full queue is IsResourceExhausted
//	job, err := c.WaitForImage(ctx, id, client.DefaultPollInterval, func(j *client.ImageJob) {
//		fmt.Printf("%s %d/%d\n", j.State, j.Step, j.TotalSteps)
//	})
//	var failed *client.JobFailedError
//	if errors.As(err, &failed) { ... } // the job ran and failed: failed.Message says why
//	os.WriteFile("out.png", job.Images[0].PNG, 0o644)
//
// The server loads models into memory on demand and evicts idle ones when a load needs room.
// MemoryStats reports its devices, every model's state and memory, and the budget; ClearMemory
// unloads what is idle. A VRAMSession is a control session: its commands load, unload and pin
// models, each returning once the server has answered it, while Events delivers what happens to
// the models and, after Subscribe, a memory snapshot every interval:
//
//	s, err := c.OpenVRAMSession(ctx)
//	if err != nil { ... }
//	defer s.Close()
//	if err := s.Subscribe(ctx, 2*time.Second); err != nil { ... }
//	if err := s.Pin(ctx, "llm"); client.IsNotFound(err) { ... }
//	for ev := range s.Events() { // until the session ends; s.Err() then says why
//		if ev.Event != nil {
//			fmt.Println(ev.Event.Kind, ev.Event.Model, ev.Event.Reason)
//		}
//	}
//
// # Connection
//
// Config (from config.yaml through LoadConfig, the MAISTRO_* environment variables overriding
// it) says where the server is and how to reach it:
//
//   - Address may name one server, several separated by commas, or a "dns:///" name that
//     resolves to many (a Kubernetes headless Service); calls are balanced round robin over all
//     the addresses, and a server that goes away is skipped until it is back.
//   - Secure turns on TLS, verified against CAFile or the system's roots; CertFile and KeyFile
//     add a client certificate for servers that require mutual TLS.
//   - APIKey is sent with every call as "x-api-key" metadata. New refuses to send it in plain
//     text to anything but this machine.
//   - Retry: a call that fails with UNAVAILABLE (server unreachable, or Triton behind it down) is
//     tried again with exponential backoff and jitter. Unary calls are retried whole; Chat and
//     Generate only until their first chunk has arrived, so a callback never sees a chunk twice;
//     a VRAM session is never retried.
//   - The connection sends keepalive pings every 10 s, also when no call is open, so that a dead
//     server or a proxy that dropped the connection is noticed before the next call.
//
// Requests and responses are plain Go types rather than the generated protobuf messages, so
// that callers deal in time.Duration, string enums and nil-for-unset options; the generated
// package (internal/gen/inference) stays an implementation detail that can change with the proto.
//
// Errors that the server sends are *Error values carrying the gRPC code and the server's
// message; IsNotFound, IsInvalidArgument and the other IsX helpers test them.
package client
