package client

import (
	"context"
	"net"
	"strings"

	"google.golang.org/grpc/credentials"
)

// APIKeyHeader is the metadata key that carries the API key; the server also accepts
// "authorization: Bearer <key>", but one header is enough.
const APIKeyHeader = "x-api-key"

// apiKey sends the API key with every call, unary and streaming alike.
type apiKey struct {
	key string
	// requireTLS is false only for loopback addresses, where the key never leaves the machine.
	requireTLS bool
}

var _ credentials.PerRPCCredentials = apiKey{}

// GetRequestMetadata implements credentials.PerRPCCredentials.
func (a apiKey) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{APIKeyHeader: a.key}, nil
}

// RequireTransportSecurity implements credentials.PerRPCCredentials; gRPC refuses to send the
// key over a plain-text connection when it returns true.
func (a apiKey) RequireTransportSecurity() bool { return a.requireTLS }

// isLoopback reports whether a gRPC target stays on this machine: localhost, a loopback IP or a
// Unix socket. Targets may carry a resolver scheme ("dns:///host:port", "passthrough:///...").
func isLoopback(target string) bool {
	if strings.HasPrefix(target, "unix:") || strings.HasPrefix(target, "unix-abstract:") {
		return true
	}
	if i := strings.Index(target, "://"); i >= 0 {
		// scheme://[authority]/endpoint: the endpoint is what gets dialled.
		rest := target[i+3:]
		j := strings.Index(rest, "/")
		if j < 0 {
			return false
		}
		target = rest[j+1:]
	}
	host := target
	if h, _, err := net.SplitHostPort(target); err == nil {
		host = h
	}
	host = strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
