package client

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"time"

	pb "github.com/inference-platform/maistro/internal/gen/inference"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/resolver/manual"
	"google.golang.org/protobuf/types/known/durationpb"
)

// Keepalive pings keep idle connections through proxies and notice a dead server; the adapter
// accepts them every 10s even with no call open.
var keepaliveParams = keepalive.ClientParameters{
	Time:                10 * time.Second,
	Timeout:             5 * time.Second,
	PermitWithoutStream: true,
}

// ErrIncompleteStream is returned when a stream ends without its final (done) message, which
// a well-behaved server never does.
var ErrIncompleteStream = errors.New("stream ended without a final message")

// ErrBadResponse is returned (wrapped, with the details) when a response breaks the API's
// contract, for example an embedding count that differs from the input count, which a
// well-behaved server never sends. Test for it with errors.Is.
var ErrBadResponse = errors.New("response breaks the API's contract")

// Client calls inference.v1.InferenceService over one gRPC connection, reused by every call.
// It is safe for concurrent use; create one with New and Close it when done.
type Client struct {
	conn           *grpc.ClientConn
	rpc            pb.InferenceServiceClient
	requestTimeout time.Duration
	retry          RetryPolicy
}

// balancing is the connection's default service config: calls are spread round robin over
// every address the target resolves to (a dns:/// name of a Kubernetes headless Service, or a
// comma-separated list), and one address behaves as a plain connection.
const balancing = `{"loadBalancingConfig": [{"round_robin": {}}]}`

// listScheme is the resolver scheme of a comma-separated list of addresses.
const listScheme = "maistro-list"

// New creates a Client for cfg. It does not wait for the server: the connection is made on the
// first call and re-made as needed, and an unreachable server shows as IsUnavailable errors
// (after cfg.Retry's attempts).
//
// New fails when cfg.Address is empty, when a TLS file cannot be read or parsed, or when an
// API key would travel in plain text to a machine other than this one (set Secure, or use a
// loopback address).
//
// opts are appended to maistro's own dial options, so they can add interceptors or replace the
// dialer (tests use a bufconn dialer).
func New(cfg Config, opts ...grpc.DialOption) (*Client, error) {
	if cfg.Address == "" {
		return nil, errors.New("maistro: no server address")
	}
	if cfg.DialTimeout < 0 || cfg.RequestTimeout < 0 {
		return nil, errors.New("maistro: timeouts must not be negative")
	}
	retry, err := cfg.Retry.withDefaults()
	if err != nil {
		return nil, fmt.Errorf("maistro: %w", err)
	}
	if err := cfg.checkTLS(); err != nil {
		return nil, fmt.Errorf("maistro: %w", err)
	}

	transport := insecure.NewCredentials()
	if cfg.Secure {
		tlsConfig, err := cfg.TLSConfig()
		if err != nil {
			return nil, fmt.Errorf("maistro: %w", err)
		}
		transport = credentials.NewTLS(tlsConfig)
	}
	target, addrs := cfg.Address, splitAddresses(cfg.Address)
	dialOpts := []grpc.DialOption{
		grpc.WithTransportCredentials(transport),
		grpc.WithKeepaliveParams(keepaliveParams),
		grpc.WithUserAgent("maistro"),
		grpc.WithDefaultServiceConfig(balancing),
		grpc.WithChainUnaryInterceptor(retryUnary(retry)),
	}
	if len(addrs) > 1 {
		// A fixed list: a resolver of this connection's own that always answers with it. Each
		// address is checked against its own host's certificate.
		r := manual.NewBuilderWithScheme(listScheme)
		state := resolver.State{}
		for _, a := range addrs {
			host, _, err := net.SplitHostPort(a)
			if err != nil {
				return nil, fmt.Errorf("maistro: address %q in %q: want host:port", a, cfg.Address)
			}
			state.Addresses = append(state.Addresses, resolver.Address{Addr: a, ServerName: host})
		}
		r.InitialState(state)
		target = listScheme + ":///" + addrs[0]
		dialOpts = append(dialOpts, grpc.WithResolvers(r))
	}
	if cfg.DialTimeout > 0 {
		dialOpts = append(dialOpts, grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.DefaultConfig,
			MinConnectTimeout: cfg.DialTimeout,
		}))
	}
	if cfg.APIKey != "" {
		local := true
		for _, a := range addrs {
			local = local && isLoopback(a)
		}
		if !cfg.Secure && !local {
			return nil, fmt.Errorf("maistro: refusing to send the API key in plain text to %q: "+
				"set use_secure_connection, or use a loopback address", cfg.Address)
		}
		dialOpts = append(dialOpts, grpc.WithPerRPCCredentials(apiKey{key: cfg.APIKey, requireTLS: !local}))
	}
	dialOpts = append(dialOpts, opts...)

	conn, err := grpc.NewClient(target, dialOpts...)
	if err != nil {
		return nil, fmt.Errorf("maistro: %s: %w", cfg.Address, err)
	}
	return &Client{
		conn: conn, rpc: pb.NewInferenceServiceClient(conn),
		requestTimeout: cfg.RequestTimeout, retry: retry,
	}, nil
}

// splitAddresses splits a comma-separated list of addresses; a target with a resolver scheme
// ("dns:///...") is one address whatever it holds.
func splitAddresses(address string) []string {
	if strings.Contains(address, "://") || !strings.Contains(address, ",") {
		return []string{address}
	}
	var addrs []string
	for a := range strings.SplitSeq(address, ",") {
		if a = strings.TrimSpace(a); a != "" {
			addrs = append(addrs, a)
		}
	}
	return addrs
}

// TLSConfig returns the TLS settings that New uses for cfg: the server verified against CAFile
// (or the system's roots) under TLSServerName (or the address's host), and CertFile/KeyFile
// presented for mutual TLS. It is for other connections to the same server, such as a
// health check; errors name the config.yaml key.
func (cfg Config) TLSConfig() (*tls.Config, error) {
	// The server name comes from the address unless TLSServerName says otherwise.
	tc := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: cfg.TLSServerName}
	if cfg.CAFile != "" {
		pem, err := os.ReadFile(cfg.CAFile)
		if err != nil {
			return nil, fmt.Errorf("inference.ca_file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("inference.ca_file: %s holds no PEM certificate", cfg.CAFile)
		}
		tc.RootCAs = pool
	}
	if cfg.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(cfg.CertFile, cfg.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("inference.cert_file/key_file: %w", err)
		}
		tc.Certificates = []tls.Certificate{cert}
	}
	return tc, nil
}

// Close closes the connection; calls in flight fail with IsCanceled errors.
func (c *Client) Close() error {
	return c.conn.Close()
}

// Conn returns the client's connection, for gRPC services that this package does not wrap
// (grpc.health.v1, reflection). Closing it closes the Client.
func (c *Client) Conn() *grpc.ClientConn {
	return c.conn
}

// callContext applies Config.RequestTimeout to a context that has no deadline of its own.
func (c *Client) callContext(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); !ok && c.requestTimeout > 0 {
		return context.WithTimeout(ctx, c.requestTimeout)
	}
	return context.WithCancel(ctx)
}

// streamCall runs one server-streaming call: open starts it, and each handles every message and
// says whether it was the final one. An error from each cancels the call (so the server stops
// generating) and is returned as it is. The stream is read to its end so that a status sent
// after the final message is not missed.
//
// A call that fails with UNAVAILABLE before its first message is opened again under c.retry;
// once a message has reached each, an error ends the call.
func streamCall[R any](ctx context.Context, c *Client,
	open func(context.Context) (grpc.ServerStreamingClient[R], error),
	each func(*R) (done bool, err error),
) error {
	ctx, cancel := c.callContext(ctx)
	defer cancel()

	var (
		stream grpc.ServerStreamingClient[R]
		first  *R
	)
	err := c.retry.do(ctx, func() error {
		var err error
		if stream, err = open(ctx); err != nil {
			return err
		}
		first, err = stream.Recv()
		return err
	})
	if errors.Is(err, io.EOF) {
		return ErrIncompleteStream
	}
	if err != nil {
		return fromRPC(err)
	}
	msg, done := first, false
	for {
		if !done {
			if done, err = each(msg); err != nil {
				cancel() // tells the server to stop before we return
				return err
			}
		} // else nothing may follow the final message; ignore it and wait for the status
		msg, err = stream.Recv()
		if errors.Is(err, io.EOF) {
			if !done {
				return ErrIncompleteStream
			}
			return nil
		}
		if err != nil {
			return fromRPC(err)
		}
	}
}

// ---------------------------------------------------------------------------------------------
// Shared by the API areas (chat.go, embed.go, image.go)
// ---------------------------------------------------------------------------------------------

// Usage counts tokens.
type Usage struct {
	// PromptTokens is the length of the prompt (after the chat template, for Chat).
	PromptTokens int `json:"prompt_tokens"`
	// CompletionTokens is the number of tokens generated.
	CompletionTokens int `json:"completion_tokens"`
	// TotalTokens is PromptTokens plus CompletionTokens.
	TotalTokens int `json:"total_tokens"`
}

// ---------------------------------------------------------------------------------------------
// Conversions to and from inference.v1
// ---------------------------------------------------------------------------------------------

func keepAliveToProto(d *time.Duration) *durationpb.Duration {
	if d == nil {
		return nil
	}
	return durationpb.New(*d)
}

func usageFromProto(u *pb.Usage) Usage {
	return Usage{
		PromptTokens:     int(u.GetPromptTokens()),
		CompletionTokens: int(u.GetCompletionTokens()),
		TotalTokens:      int(u.GetTotalTokens()),
	}
}
