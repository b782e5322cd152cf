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
// Requests and responses are plain Go types rather than the generated protobuf messages, so
// that callers deal in time.Duration, string enums and nil-for-unset options; the generated
// package (grpc/inference) stays an implementation detail that can change with the proto.
//
// Errors that the server sends are *Error values carrying the gRPC code and the server's
// message; IsNotFound, IsInvalidArgument and the other IsX helpers test them.
package client
