package client

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/inference-platform/maistro/internal/fakeserver"
	pb "github.com/inference-platform/maistro/internal/gen/inference"
	"github.com/inference-platform/maistro/internal/testcerts"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
)

// serveTCP serves srv on a loopback TCP port with the given server options and returns the port.
func serveTCP(t *testing.T, srv pb.InferenceServiceServer, opts ...grpc.ServerOption) string {
	t.Helper()
	_, port, _ := net.SplitHostPort(fakeserver.ServeTCP(t, srv, opts...))
	return port
}

// tlsServerOption serves with the test server certificate; with mutual, it requires a client
// certificate signed by the test CA.
func tlsServerOption(t *testing.T, files testcerts.Files, mutual bool) grpc.ServerOption {
	t.Helper()
	cert, err := tls.LoadX509KeyPair(files.ServerCert, files.ServerKey)
	if err != nil {
		t.Fatal(err)
	}
	tc := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	if mutual {
		pem, err := os.ReadFile(files.CA)
		if err != nil {
			t.Fatal(err)
		}
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM(pem)
		tc.ClientCAs, tc.ClientAuth = pool, tls.RequireAndVerifyClientCert
	}
	return grpc.Creds(credentials.NewTLS(tc))
}

func TestTLS(t *testing.T) {
	files, err := testcerts.New(t.TempDir(), "localhost", "adapter.internal")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		mutual  bool // the server requires a client certificate
		cfg     Config
		wantErr string // "" for success; else a substring of the error
	}{
		{name: "server verified against ca_file", cfg: Config{CAFile: files.CA}},
		{name: "system roots do not know a private CA", wantErr: "certificate"},
		{name: "tls_server_name verifies a name other than the address's host",
			cfg: Config{Address: "127.0.0.1", CAFile: files.CA, TLSServerName: "adapter.internal"}},
		{name: "a certificate without the address's IP is refused",
			cfg: Config{Address: "127.0.0.1", CAFile: files.CA}, wantErr: "127.0.0.1"},
		{name: "mutual TLS with a client certificate", mutual: true,
			cfg: Config{CAFile: files.CA, CertFile: files.ClientCert, KeyFile: files.ClientKey}},
		{name: "mutual TLS without a client certificate fails", mutual: true,
			cfg: Config{CAFile: files.CA}, wantErr: "UNAVAILABLE"},
		{name: "API key travels over TLS", cfg: Config{CAFile: files.CA, APIKey: "k"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var sawKey atomic.Value
			var sawClientCN atomic.Value
			srv := &fakeserver.Server{OnMemoryStats: func(ctx context.Context, _ *pb.GetMemoryStatsRequest) (*pb.GetMemoryStatsResponse, error) {
				md, _ := metadata.FromIncomingContext(ctx)
				sawKey.Store(strings.Join(md.Get(APIKeyHeader), ","))
				if p, ok := peer.FromContext(ctx); ok {
					if info, ok := p.AuthInfo.(credentials.TLSInfo); ok && len(info.State.PeerCertificates) > 0 {
						sawClientCN.Store(info.State.PeerCertificates[0].Subject.CommonName)
					}
				}
				return &pb.GetMemoryStatsResponse{Snapshot: &pb.MemorySnapshot{}}, nil
			}}
			port := serveTCP(t, srv, tlsServerOption(t, files, tt.mutual))
			cfg := tt.cfg
			host := cmp(cfg.Address, "localhost")
			cfg.Address = net.JoinHostPort(host, port)
			cfg.Secure = true
			cfg.Retry = fastRetry(1)
			c, err := New(cfg)
			if err != nil {
				t.Fatalf("New: %v", err)
			}
			defer c.Close()

			_, err = c.MemoryStats(context.Background())
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("MemoryStats error %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("MemoryStats: %v", err)
			}
			if got := sawKey.Load(); got != cfg.APIKey {
				t.Errorf("server saw API key %q, want %q", got, cfg.APIKey)
			}
			if tt.mutual && sawClientCN.Load() != "maistro-test-client" {
				t.Errorf("server saw client certificate %v, want CN maistro-test-client", sawClientCN.Load())
			}
		})
	}
}

// cmp returns a unless it is empty, else b.
func cmp(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

func TestNewTLSFileErrorsNameTheKey(t *testing.T) {
	files, err := testcerts.New(t.TempDir(), "localhost")
	if err != nil {
		t.Fatal(err)
	}
	notPEM := filepath.Join(t.TempDir(), "not.pem")
	if err := os.WriteFile(notPEM, []byte("hello"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		cfg  Config
		want []string
	}{
		{"missing CA file", Config{CAFile: "/no/such/ca.pem"}, []string{"inference.ca_file", "/no/such/ca.pem"}},
		{"CA file without a certificate", Config{CAFile: notPEM}, []string{"inference.ca_file", "no PEM certificate"}},
		{"missing client key", Config{CertFile: files.ClientCert, KeyFile: "/no/such/key"}, []string{"inference.cert_file/key_file"}},
		{"key of another certificate", Config{CertFile: files.ClientCert, KeyFile: files.ServerKey}, []string{"inference.cert_file/key_file"}},
		{"certificate without key", Config{CertFile: files.ClientCert}, []string{"inference.cert_file", "inference.key_file"}},
		{"CA file without TLS", Config{CAFile: files.CA, Secure: false}, []string{"inference.ca_file", "use_secure_connection"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := tt.cfg
			cfg.Address = "localhost:1"
			if tt.name != "CA file without TLS" {
				cfg.Secure = true
			}
			_, err := New(cfg)
			if err == nil {
				t.Fatal("New: want an error")
			}
			for _, s := range tt.want {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q does not contain %q", err, s)
				}
			}
		})
	}
}

func TestSeveralAddressesAreBalancedRoundRobin(t *testing.T) {
	var counts [3]atomic.Int32
	var addrs []string
	for i := range counts {
		srv := &fakeserver.Server{OnMemoryStats: func(context.Context, *pb.GetMemoryStatsRequest) (*pb.GetMemoryStatsResponse, error) {
			counts[i].Add(1)
			return &pb.GetMemoryStatsResponse{Snapshot: &pb.MemorySnapshot{}}, nil
		}}
		addrs = append(addrs, "127.0.0.1:"+serveTCP(t, srv))
	}
	tests := []struct {
		name    string
		address string
		servers int // how many of the servers the address names
	}{
		{name: "a comma-separated list", address: strings.Join(addrs, ", "), servers: 3},
		{name: "one dns:/// name", address: "dns:///" + addrs[0], servers: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for i := range counts {
				counts[i].Store(0)
			}
			c, err := New(Config{Address: tt.address, APIKey: "loopback-only"})
			if err != nil {
				t.Fatalf("New: %v", err)
			}
			defer c.Close()
			// The first calls may all go to whichever server connected first: call until every
			// server has answered once (so that all are connected), then count afresh.
			reached := func() bool {
				for i := range tt.servers {
					if counts[i].Load() == 0 {
						return false
					}
				}
				return true
			}
			for deadline := time.Now().Add(waitLimit); !reached(); {
				if time.Now().After(deadline) {
					t.Fatalf("not every server got a call within %s", waitLimit)
				}
				if _, err := c.MemoryStats(context.Background()); err != nil {
					t.Fatalf("MemoryStats: %v", err)
				}
			}
			for i := range counts {
				counts[i].Store(0)
			}
			const calls = 30
			for range calls {
				if _, err := c.MemoryStats(context.Background()); err != nil {
					t.Fatalf("MemoryStats: %v", err)
				}
			}
			total := int32(0)
			for i := range tt.servers {
				n := counts[i].Load()
				total += n
				// Round robin: every server gets its share once all are connected.
				if n == 0 {
					t.Errorf("server %d got no call of %d", i, calls)
				}
			}
			if total != calls {
				t.Errorf("the servers saw %d calls, want %d", total, calls)
			}
		})
	}
}

func TestAPIKeyToAListIsRefusedInPlainTextUnlessEveryAddressIsLoopback(t *testing.T) {
	tests := []struct {
		address string
		wantErr string // "": accepted
	}{
		{address: "127.0.0.1:1,localhost:2"},
		{address: "127.0.0.1:1,10.0.0.7:2", wantErr: "plain text"},
		{address: "127.0.0.1:1,nohostport", wantErr: "want host:port"},
	}
	for _, tt := range tests {
		c, err := New(Config{Address: tt.address, APIKey: "k"})
		if tt.wantErr == "" {
			if err != nil {
				t.Errorf("New(%q): %v", tt.address, err)
			} else {
				_ = c.Close()
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
			t.Errorf("New(%q): error %v, want one containing %q", tt.address, err, tt.wantErr)
		}
	}
}
