//go:build unix

package e2e

import (
	"bytes"
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/inference-platform/maistro/client"
	"github.com/inference-platform/maistro/internal/testcerts"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
)

// Keys of the adapter under TestAdapterWithTLSAndAPIKeys.
const (
	userKey  = "e2e-user-key"
	adminKey = "e2e-admin-key"
)

// TestAdapterWithTLSAndAPIKeys runs the adapter as production does: mutual TLS (a client
// certificate is required) and API keys, with an admin key for the memory-management RPCs.
func TestAdapterWithTLSAndAPIKeys(t *testing.T) {
	if os.Getenv("MAISTRO_E2E") != "1" {
		t.Skip("end-to-end test against the real adapter: set MAISTRO_E2E=1 to run it")
	}
	moduleDir := findModuleDir(t)
	repo := filepath.Dir(moduleDir)
	certs, err := testcerts.New(t.TempDir(), "127.0.0.1", "localhost")
	if err != nil {
		t.Fatal(err)
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(freePort(t)))
	a := startAdapter(t, repo, addr,
		"PRELOAD_MODELS=", // models load on demand: a quicker start
		"GRPC_USE_TLS=true",
		"GRPC_CERT_FILE="+certs.ServerCert,
		"GRPC_KEY_FILE="+certs.ServerKey,
		"GRPC_CLIENT_CA_FILE="+certs.CA,
		"GRPC_REQUIRE_API_KEY=true",
		"GRPC_API_KEY="+userKey,
		"GRPC_ADMIN_API_KEY="+adminKey,
	)
	// The health service stays open without a key, but TLS still wants the client's certificate.
	cfg := client.Config{
		Address: addr, Secure: true, CAFile: certs.CA, CertFile: certs.ClientCert, KeyFile: certs.ClientKey,
		DialTimeout: 10 * time.Second, Retry: client.RetryPolicy{MaxAttempts: 1},
	}
	a.waitServing(t, addr, grpc.WithTransportCredentials(mustTLS(t, cfg)))

	connect := func(t *testing.T, cfg client.Config) *client.Client {
		t.Helper()
		c, err := client.New(cfg)
		if err != nil {
			t.Fatalf("client.New: %v", err)
		}
		t.Cleanup(func() { _ = c.Close() })
		return c
	}
	withKey := func(key string) client.Config { c := cfg; c.APIKey = key; return c }
	stats := func(t *testing.T, c *client.Client) error {
		ctx, cancel := context.WithTimeout(context.Background(), callLimit)
		defer cancel()
		_, err := c.MemoryStats(ctx)
		return err
	}

	t.Run("the API keys decide what a call may do", func(t *testing.T) {
		tests := []struct {
			name  string
			key   string
			check func(error) bool
		}{
			{"no key is UNAUTHENTICATED", "", client.IsUnauthenticated},
			{"a wrong key is UNAUTHENTICATED", "not-the-key", client.IsUnauthenticated},
			{"the user key may read the stats", userKey, func(err error) bool { return err == nil }},
			{"the admin key may read the stats", adminKey, func(err error) bool { return err == nil }},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				err := stats(t, connect(t, withKey(tt.key)))
				t.Logf("MemoryStats: %v", err)
				if !tt.check(err) {
					t.Errorf("MemoryStats with key %q: unexpected error %v", tt.key, err)
				}
			})
		}
	})

	t.Run("a chat streams over mutual TLS with the user key", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), callLimit)
		defer cancel()
		chunks := 0
		res, err := connect(t, withKey(userKey)).Chat(ctx, &client.ChatRequest{
			Model:    "llm",
			Messages: []client.Message{{Role: client.RoleUser, Content: "Hello"}},
			Options:  client.Options{MaxTokens: new(int32(4)), Seed: new(uint64(1))},
		}, func(client.ChatChunk) error { chunks++; return nil })
		if err != nil {
			t.Fatalf("Chat: %v", err)
		}
		t.Logf("reply %q in %d chunks", res.Text, chunks)
	})

	t.Run("a chat without a key is UNAUTHENTICATED", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), callLimit)
		defer cancel()
		_, err := connect(t, cfg).Chat(ctx, &client.ChatRequest{
			Model: "llm", Messages: []client.Message{{Role: client.RoleUser, Content: "Hello"}},
		}, nil)
		if !client.IsUnauthenticated(err) {
			t.Fatalf("Chat without a key: error %v, want IsUnauthenticated", err)
		}
	})

	t.Run("memory management needs the admin key", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), callLimit)
		defer cancel()
		_, err := connect(t, withKey(userKey)).ClearMemory(ctx, client.ClearOptions{})
		if !client.IsPermissionDenied(err) {
			t.Errorf("ClearMemory with the user key: error %v, want IsPermissionDenied", err)
		}
		if _, err := connect(t, withKey(adminKey)).ClearMemory(ctx, client.ClearOptions{}); err != nil {
			t.Errorf("ClearMemory with the admin key: %v", err)
		}

		s, err := connect(t, withKey(adminKey)).OpenVRAMSession(ctx)
		if err != nil {
			t.Fatalf("OpenVRAMSession with the admin key: %v", err)
		}
		defer s.Close()
		if _, err := s.Status(ctx); err != nil {
			t.Errorf("VRAM session Status with the admin key: %v", err)
		}
		if s, err := connect(t, withKey(userKey)).OpenVRAMSession(ctx); err == nil {
			defer s.Close()
			if _, err := s.Status(ctx); !client.IsPermissionDenied(err) {
				t.Errorf("VRAM session Status with the user key: error %v, want IsPermissionDenied", err)
			}
		} else if !client.IsPermissionDenied(err) {
			t.Errorf("OpenVRAMSession with the user key: error %v, want IsPermissionDenied", err)
		}
	})

	t.Run("a client without a certificate is refused", func(t *testing.T) {
		noCert := withKey(userKey)
		noCert.CertFile, noCert.KeyFile = "", ""
		if err := stats(t, connect(t, noCert)); err == nil {
			t.Fatal("MemoryStats without a client certificate succeeded")
		} else {
			t.Logf("server refused: %v", err)
		}
	})

	t.Run("a plain-text client is UNAVAILABLE", func(t *testing.T) {
		plain := client.Config{Address: addr, APIKey: userKey, Retry: client.RetryPolicy{MaxAttempts: 1}}
		if err := stats(t, connect(t, plain)); !client.IsUnavailable(err) {
			t.Fatalf("MemoryStats in plain text to a TLS server: error %v, want IsUnavailable", err)
		}
	})

	t.Run("CLI stats with TLS files and the key from the environment", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), callLimit)
		defer cancel()
		cmd := exec.CommandContext(ctx, "go", "run", ".", "stats", "--json", "--config", os.DevNull)
		cmd.Dir = moduleDir
		cmd.Env = append(os.Environ(),
			client.EnvAddress+"="+addr, client.EnvAPIKey+"="+userKey, client.EnvSecure+"=true",
			client.EnvCAFile+"="+certs.CA, client.EnvCertFile+"="+certs.ClientCert,
			client.EnvKeyFile+"="+certs.ClientKey, client.EnvTLSServerName+"=")
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err := cmd.Run()
		if err != nil {
			t.Fatalf("go run . stats: %v (stderr %q)", err, stderr.String())
		}
		if !strings.Contains(stdout.String(), "devices") {
			t.Errorf("stdout %q has no devices", stdout.String())
		}
	})

	t.Run("CLI error without a key exits non-zero with the server's message", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), callLimit)
		defer cancel()
		cmd := exec.CommandContext(ctx, "go", "run", ".", "stats", "--config", os.DevNull)
		cmd.Dir = moduleDir
		cmd.Env = append(os.Environ(),
			client.EnvAddress+"="+addr, client.EnvAPIKey+"=", client.EnvSecure+"=true",
			client.EnvCAFile+"="+certs.CA, client.EnvCertFile+"="+certs.ClientCert,
			client.EnvKeyFile+"="+certs.ClientKey, client.EnvTLSServerName+"=")
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		err := cmd.Run()
		if err == nil || !strings.Contains(stderr.String(), "UNAUTHENTICATED") {
			t.Fatalf("go run . stats without a key: %v, stderr %q; want exit 1 and UNAUTHENTICATED", err, stderr.String())
		}
	})
}

// mustTLS is the transport credentials that cfg's TLS files make, for the health check.
func mustTLS(t *testing.T, cfg client.Config) credentials.TransportCredentials {
	t.Helper()
	tc, err := cfg.TLSConfig()
	if err != nil {
		t.Fatal(err)
	}
	return credentials.NewTLS(tc)
}
