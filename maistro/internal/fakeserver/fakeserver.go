// Package fakeserver is the in-process inference.v1.InferenceService that the tests of the
// client library and of the CLI talk to: a Server whose handlers each test supplies, served
// over an in-memory bufconn listener (Serve) or a loopback TCP port (ServeTCP) until the test
// ends.
package fakeserver

import (
	"context"
	"net"
	"testing"
	"time"

	pb "github.com/inference-platform/maistro/internal/gen/inference"
	"google.golang.org/grpc"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/test/bufconn"
)

// Server is an InferenceService whose handlers each test supplies. An RPC whose handler is nil
// answers UNIMPLEMENTED, as a server without that RPC does.
type Server struct {
	pb.UnimplementedInferenceServiceServer

	// OnChat answers ChatStream.
	OnChat func(*pb.ChatStreamRequest, grpc.ServerStreamingServer[pb.ChatStreamResponse]) error
	// OnGenerate answers GenerateStream.
	OnGenerate func(*pb.GenerateStreamRequest, grpc.ServerStreamingServer[pb.GenerateStreamResponse]) error
	// OnEmbed answers GetEmbedding.
	OnEmbed func(context.Context, *pb.GetEmbeddingRequest) (*pb.GetEmbeddingResponse, error)

	// OnGenerateImage answers GenerateImage.
	OnGenerateImage func(context.Context, *pb.GenerateImageRequest) (*pb.GenerateImageResponse, error)
	// OnEditImage answers EditImage.
	OnEditImage func(context.Context, *pb.EditImageRequest) (*pb.EditImageResponse, error)
	// OnImageStatus answers CheckImageStatus.
	OnImageStatus func(context.Context, *pb.CheckImageStatusRequest) (*pb.CheckImageStatusResponse, error)

	// OnManageVRAM answers ManageVRAM.
	OnManageVRAM func(grpc.BidiStreamingServer[pb.ManageVRAMRequest, pb.ManageVRAMResponse]) error
	// OnClearMemory answers ClearMemory.
	OnClearMemory func(context.Context, *pb.ClearMemoryRequest) (*pb.ClearMemoryResponse, error)
	// OnMemoryStats answers GetMemoryStats.
	OnMemoryStats func(context.Context, *pb.GetMemoryStatsRequest) (*pb.GetMemoryStatsResponse, error)
}

// ChatStream calls OnChat.
func (f *Server) ChatStream(req *pb.ChatStreamRequest, s grpc.ServerStreamingServer[pb.ChatStreamResponse]) error {
	if f.OnChat == nil {
		return f.UnimplementedInferenceServiceServer.ChatStream(req, s)
	}
	return f.OnChat(req, s)
}

// GenerateStream calls OnGenerate.
func (f *Server) GenerateStream(req *pb.GenerateStreamRequest, s grpc.ServerStreamingServer[pb.GenerateStreamResponse]) error {
	if f.OnGenerate == nil {
		return f.UnimplementedInferenceServiceServer.GenerateStream(req, s)
	}
	return f.OnGenerate(req, s)
}

// GetEmbedding calls OnEmbed.
func (f *Server) GetEmbedding(ctx context.Context, req *pb.GetEmbeddingRequest) (*pb.GetEmbeddingResponse, error) {
	if f.OnEmbed == nil {
		return f.UnimplementedInferenceServiceServer.GetEmbedding(ctx, req)
	}
	return f.OnEmbed(ctx, req)
}

// GenerateImage calls OnGenerateImage.
func (f *Server) GenerateImage(ctx context.Context, req *pb.GenerateImageRequest) (*pb.GenerateImageResponse, error) {
	if f.OnGenerateImage == nil {
		return f.UnimplementedInferenceServiceServer.GenerateImage(ctx, req)
	}
	return f.OnGenerateImage(ctx, req)
}

// EditImage calls OnEditImage.
func (f *Server) EditImage(ctx context.Context, req *pb.EditImageRequest) (*pb.EditImageResponse, error) {
	if f.OnEditImage == nil {
		return f.UnimplementedInferenceServiceServer.EditImage(ctx, req)
	}
	return f.OnEditImage(ctx, req)
}

// CheckImageStatus calls OnImageStatus.
func (f *Server) CheckImageStatus(ctx context.Context, req *pb.CheckImageStatusRequest) (*pb.CheckImageStatusResponse, error) {
	if f.OnImageStatus == nil {
		return f.UnimplementedInferenceServiceServer.CheckImageStatus(ctx, req)
	}
	return f.OnImageStatus(ctx, req)
}

// ManageVRAM calls OnManageVRAM.
func (f *Server) ManageVRAM(s grpc.BidiStreamingServer[pb.ManageVRAMRequest, pb.ManageVRAMResponse]) error {
	if f.OnManageVRAM == nil {
		return f.UnimplementedInferenceServiceServer.ManageVRAM(s)
	}
	return f.OnManageVRAM(s)
}

// ClearMemory calls OnClearMemory.
func (f *Server) ClearMemory(ctx context.Context, req *pb.ClearMemoryRequest) (*pb.ClearMemoryResponse, error) {
	if f.OnClearMemory == nil {
		return f.UnimplementedInferenceServiceServer.ClearMemory(ctx, req)
	}
	return f.OnClearMemory(ctx, req)
}

// GetMemoryStats calls OnMemoryStats.
func (f *Server) GetMemoryStats(ctx context.Context, req *pb.GetMemoryStatsRequest) (*pb.GetMemoryStatsResponse, error) {
	if f.OnMemoryStats == nil {
		return f.UnimplementedInferenceServiceServer.GetMemoryStats(ctx, req)
	}
	return f.OnMemoryStats(ctx, req)
}

// keepalivePolicy is the adapter's: accept the client's keepalive pings, also with no call open.
var keepalivePolicy = keepalive.EnforcementPolicy{MinTime: 5 * time.Second, PermitWithoutStream: true}

// start registers srv on a new gRPC server with opts (after the adapter's keepalive policy,
// which they may replace) and serves lis until the test ends.
func start(t testing.TB, lis net.Listener, srv pb.InferenceServiceServer, opts []grpc.ServerOption) {
	opts = append([]grpc.ServerOption{grpc.KeepaliveEnforcementPolicy(keepalivePolicy)}, opts...)
	gs := grpc.NewServer(opts...)
	pb.RegisterInferenceServiceServer(gs, srv)
	go func() { _ = gs.Serve(lis) }()
	t.Cleanup(gs.Stop)
}

// Serve serves srv over an in-memory bufconn listener until the test ends and returns the dial
// option that reaches it; the address a client dials with it is ignored.
func Serve(t testing.TB, srv pb.InferenceServiceServer, opts ...grpc.ServerOption) grpc.DialOption {
	t.Helper()
	lis := bufconn.Listen(1 << 20)
	start(t, lis, srv, opts)
	return grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
		return lis.DialContext(ctx)
	})
}

// ServeTCP serves srv on a loopback TCP port until the test ends and returns its address
// (127.0.0.1:port), for clients that dial a real address (the CLI, TLS).
func ServeTCP(t testing.TB, srv pb.InferenceServiceServer, opts ...grpc.ServerOption) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	start(t, lis, srv, opts)
	return lis.Addr().String()
}
