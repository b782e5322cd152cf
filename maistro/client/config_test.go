package client

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestLoadConfig(t *testing.T) {
	tests := []struct {
		name    string
		file    *string // nil: no file at all
		env     map[string]string
		want    Config
		wantErr []string // substrings the error must contain; nil: no error
	}{
		{
			name: "good file",
			file: new(`inference:
  use_grpc: true
  grpc_address: "inference.example.com:443"
  use_secure_connection: true
  api_key: "secret"
  dial_timeout: "3s"
  request_timeout: "1m30s"
`),
			want: Config{
				Address:        "inference.example.com:443",
				Secure:         true,
				APIKey:         "secret",
				DialTimeout:    3 * time.Second,
				RequestTimeout: 90 * time.Second,
			},
		},
		{
			name: "missing file gives defaults",
			want: Config{Address: "localhost:50051", DialTimeout: 10 * time.Second, RequestTimeout: 5 * time.Minute},
		},
		{
			name: "empty file gives defaults",
			file: new(""),
			want: DefaultConfig(),
		},
		{
			name: "keys left out keep their defaults",
			file: new("inference:\n  grpc_address: \"10.0.0.7:50051\"\n"),
			want: Config{Address: "10.0.0.7:50051", DialTimeout: DefaultDialTimeout, RequestTimeout: DefaultRequestTimeout},
		},
		{
			name: "zero request timeout means none",
			file: new("inference:\n  request_timeout: \"0s\"\n"),
			want: Config{Address: DefaultAddress, DialTimeout: DefaultDialTimeout},
		},
		{
			name:    "unknown key names the key",
			file:    new("inference:\n  grpc_adress: \"x:1\"\n"),
			wantErr: []string{"inference.grpc_adress", "unknown key"},
		},
		{
			name:    "unknown top-level key names the key",
			file:    new("inferense:\n  use_grpc: true\n"),
			wantErr: []string{"inferense: line 1: unknown key"},
		},
		{
			name:    "bad duration names the key",
			file:    new("inference:\n  dial_timeout: \"ten seconds\"\n"),
			wantErr: []string{"inference.dial_timeout", "ten seconds"},
		},
		{
			name:    "duration without unit names the key",
			file:    new("inference:\n  request_timeout: 10\n"),
			wantErr: []string{"inference.request_timeout"},
		},
		{
			name:    "negative duration names the key",
			file:    new("inference:\n  request_timeout: \"-1s\"\n"),
			wantErr: []string{"inference.request_timeout", "negative"},
		},
		{
			name:    "bad boolean names the key",
			file:    new("inference:\n  use_secure_connection: maybe\n"),
			wantErr: []string{"inference.use_secure_connection", "maybe"},
		},
		{
			name:    "address that is not a string names the key",
			file:    new("inference:\n  grpc_address: [a, b]\n"),
			wantErr: []string{"inference.grpc_address"},
		},
		{
			name:    "use_grpc false is refused",
			file:    new("inference:\n  use_grpc: false\n"),
			wantErr: []string{"inference.use_grpc", "only speaks gRPC"},
		},
		{
			name:    "malformed yaml",
			file:    new("inference: [\n"),
			wantErr: []string{"config"},
		},
		{
			name: "environment overrides the file",
			file: new("inference:\n  grpc_address: \"file:1\"\n  api_key: \"from-file\"\n"),
			env: map[string]string{
				EnvAddress: "env:2",
				EnvAPIKey:  "from-env",
				EnvSecure:  "true",
			},
			want: Config{Address: "env:2", Secure: true, APIKey: "from-env", DialTimeout: DefaultDialTimeout, RequestTimeout: DefaultRequestTimeout},
		},
		{
			name: "environment overrides defaults when the file is missing",
			env:  map[string]string{EnvAddress: "127.0.0.1:9999"},
			want: Config{Address: "127.0.0.1:9999", DialTimeout: DefaultDialTimeout, RequestTimeout: DefaultRequestTimeout},
		},
		{
			name: "empty environment variables are ignored",
			file: new("inference:\n  api_key: \"from-file\"\n"),
			env:  map[string]string{EnvAddress: "", EnvAPIKey: "", EnvSecure: ""},
			want: Config{Address: DefaultAddress, APIKey: "from-file", DialTimeout: DefaultDialTimeout, RequestTimeout: DefaultRequestTimeout},
		},
		{
			name: "TLS files and retries",
			file: new(`inference:
  grpc_address: "a.example.com:443,b.example.com:443"
  use_secure_connection: true
  ca_file: "/etc/maistro/ca.pem"
  cert_file: "/etc/maistro/client.pem"
  key_file: "/etc/maistro/client.key"
  tls_server_name: "adapter.internal"
  retry_max_attempts: 2
  retry_initial_backoff: "50ms"
  retry_max_backoff: "1s"
`),
			want: Config{
				Address: "a.example.com:443,b.example.com:443", Secure: true,
				CAFile: "/etc/maistro/ca.pem", CertFile: "/etc/maistro/client.pem", KeyFile: "/etc/maistro/client.key",
				TLSServerName: "adapter.internal",
				DialTimeout:   DefaultDialTimeout, RequestTimeout: DefaultRequestTimeout,
				Retry: RetryPolicy{MaxAttempts: 2, InitialBackoff: 50 * time.Millisecond, MaxBackoff: time.Second},
			},
		},
		{
			name: "retry_max_attempts 1 turns retries off",
			file: new("inference:\n  retry_max_attempts: 1\n"),
			want: Config{
				Address: DefaultAddress, DialTimeout: DefaultDialTimeout, RequestTimeout: DefaultRequestTimeout,
				Retry: RetryPolicy{MaxAttempts: 1, InitialBackoff: DefaultRetryInitialBackoff, MaxBackoff: DefaultRetryMaxBackoff},
			},
		},
		{
			name:    "retry_max_attempts 0 names the key",
			file:    new("inference:\n  retry_max_attempts: 0\n"),
			wantErr: []string{"inference.retry_max_attempts", "at least 1"},
		},
		{
			name:    "retry_max_attempts not a number names the key",
			file:    new("inference:\n  retry_max_attempts: many\n"),
			wantErr: []string{"inference.retry_max_attempts", "line 2"},
		},
		{
			name:    "bad retry backoff names the key",
			file:    new("inference:\n  retry_max_backoff: \"soon\"\n"),
			wantErr: []string{"inference.retry_max_backoff"},
		},
		{
			name: "environment overrides the TLS files",
			file: new("inference:\n  use_secure_connection: true\n  ca_file: \"file-ca.pem\"\n"),
			env: map[string]string{
				EnvCAFile: "env-ca.pem", EnvCertFile: "env-cert.pem", EnvKeyFile: "env-key.pem",
				EnvTLSServerName: "env-name",
			},
			want: Config{
				Address: DefaultAddress, Secure: true,
				CAFile: "env-ca.pem", CertFile: "env-cert.pem", KeyFile: "env-key.pem", TLSServerName: "env-name",
				DialTimeout: DefaultDialTimeout, RequestTimeout: DefaultRequestTimeout,
			},
		},
		{
			name:    "ca_file without TLS names both keys",
			file:    new("inference:\n  ca_file: \"ca.pem\"\n"),
			wantErr: []string{"inference.ca_file", "inference.use_secure_connection"},
		},
		{
			name:    "cert_file from the environment without TLS names the variable",
			env:     map[string]string{EnvCertFile: "c.pem", EnvKeyFile: "k.pem"},
			wantErr: []string{"inference.cert_file", EnvCertFile},
		},
		{
			name:    "cert_file without key_file names both keys",
			file:    new("inference:\n  use_secure_connection: true\n  cert_file: \"c.pem\"\n"),
			wantErr: []string{"inference.cert_file", "inference.key_file"},
		},
		{
			name:    "ca_file that is not a string names the key",
			file:    new("inference:\n  use_secure_connection: true\n  ca_file: [a, b]\n"),
			wantErr: []string{"inference.ca_file", "want a string"},
		},
		{
			name:    "bad boolean in the environment names the variable",
			env:     map[string]string{EnvSecure: "yes please"},
			wantErr: []string{EnvSecure},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "config.yaml")
			if tt.file != nil {
				if err := os.WriteFile(path, []byte(*tt.file), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			getenv := func(k string) string { return tt.env[k] }

			got, err := loadConfig(path, getenv)
			if tt.wantErr != nil {
				if err == nil {
					t.Fatalf("loadConfig: want an error containing %q, got config %+v", tt.wantErr, got)
				}
				for _, s := range tt.wantErr {
					if !strings.Contains(err.Error(), s) {
						t.Errorf("error %q does not contain %q", err, s)
					}
				}
				return
			}
			if err != nil {
				t.Fatalf("loadConfig: %v", err)
			}
			if tt.want.Retry == (RetryPolicy{}) {
				tt.want.Retry = DefaultConfig().Retry // cases about other keys expect the default retries
			}
			if got != tt.want {
				t.Errorf("loadConfig:\n got %+v\nwant %+v", got, tt.want)
			}
		})
	}
}

// LoadConfig itself reads the process environment.
func TestLoadConfigReadsProcessEnvironment(t *testing.T) {
	t.Setenv(EnvAddress, "envhost:1234")
	t.Setenv(EnvAPIKey, "")
	t.Setenv(EnvSecure, "")
	got, err := LoadConfig(filepath.Join(t.TempDir(), "absent.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if got.Address != "envhost:1234" {
		t.Errorf("Address = %q, want the environment's %q", got.Address, "envhost:1234")
	}
}

func TestLoadConfigUnreadableFileIsAnError(t *testing.T) {
	// A directory where the file should be: not "missing", so not silently defaulted.
	if _, err := loadConfig(t.TempDir(), func(string) string { return "" }); err == nil {
		t.Fatal("loadConfig on a directory: want an error")
	}
}

// The shipped config.yaml must load and match the defaults.
func TestShippedConfigFile(t *testing.T) {
	got, err := loadConfig(filepath.Join("..", "config.yaml"), func(string) string { return "" })
	if err != nil {
		t.Fatal(err)
	}
	if got != DefaultConfig() {
		t.Errorf("../config.yaml = %+v, want the defaults %+v", got, DefaultConfig())
	}
}
