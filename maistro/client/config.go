package client

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"regexp"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// Defaults used when config.yaml is missing or leaves a key out.
const (
	// DefaultAddress is where the adapter listens on a developer machine.
	DefaultAddress = "localhost:50051"
	// DefaultDialTimeout bounds one attempt to connect to the server.
	DefaultDialTimeout = 10 * time.Second
	// DefaultRequestTimeout bounds a whole call (a whole stream for Chat and Generate) when the
	// caller's context has no deadline. Generous because the first call may load a model.
	DefaultRequestTimeout = 5 * time.Minute
	// DefaultRetryMaxAttempts is how many times a call is tried in all when the server is
	// UNAVAILABLE: the first attempt and up to three retries.
	DefaultRetryMaxAttempts = 4
	// DefaultRetryInitialBackoff is the wait before the first retry; each later one doubles it.
	DefaultRetryInitialBackoff = 100 * time.Millisecond
	// DefaultRetryMaxBackoff caps the wait between two attempts.
	DefaultRetryMaxBackoff = 2 * time.Second
)

// Environment variables that override config.yaml. An empty value counts as unset.
const (
	// EnvAddress overrides inference.grpc_address.
	EnvAddress = "MAISTRO_GRPC_ADDRESS"
	// EnvAPIKey overrides inference.api_key.
	EnvAPIKey = "MAISTRO_API_KEY"
	// EnvSecure overrides inference.use_secure_connection (a boolean as strconv.ParseBool reads it).
	EnvSecure = "MAISTRO_USE_SECURE_CONNECTION"
	// EnvCAFile overrides inference.ca_file.
	EnvCAFile = "MAISTRO_CA_FILE"
	// EnvCertFile overrides inference.cert_file.
	EnvCertFile = "MAISTRO_CERT_FILE"
	// EnvKeyFile overrides inference.key_file.
	EnvKeyFile = "MAISTRO_KEY_FILE"
	// EnvTLSServerName overrides inference.tls_server_name.
	EnvTLSServerName = "MAISTRO_TLS_SERVER_NAME"
)

// Config is everything New needs to reach the server. Build it with DefaultConfig or LoadConfig
// and adjust fields as needed; the zero value is not usable (Address is required).
type Config struct {
	// Address is the server's gRPC target (inference.grpc_address): "host:port"; several
	// "host:port" separated by commas, over which calls are balanced round robin; or any target
	// grpc.NewClient accepts, such as "dns:///adapter.ns.svc:50051" (a Kubernetes headless
	// Service, every address it resolves to balanced round robin) or "unix:///path".
	Address string
	// Secure dials with TLS (inference.use_secure_connection), verifying the server against
	// CAFile, or the system's root certificates when CAFile is empty.
	Secure bool
	// CAFile (inference.ca_file) is a PEM file of the certificates that sign the server's
	// certificate, for a private CA. Only with Secure.
	CAFile string
	// CertFile and KeyFile (inference.cert_file, inference.key_file) are the PEM certificate and
	// private key this client presents to a server that asks for one (mutual TLS). Both or
	// neither; only with Secure.
	CertFile, KeyFile string
	// TLSServerName (inference.tls_server_name) is the name the server's certificate must carry,
	// when it is not the host of Address (an IP address, or a name only the certificate knows).
	TLSServerName string
	// APIKey, when not empty, is sent with every call as "x-api-key" metadata. Without Secure it
	// is only sent to a loopback address; New refuses any other combination.
	APIKey string
	// DialTimeout bounds one connection attempt; zero takes gRPC's default (20s).
	DialTimeout time.Duration
	// RequestTimeout is the deadline given to a call whose context has none; zero means none.
	RequestTimeout time.Duration
	// Retry says how calls that fail with UNAVAILABLE are tried again. The zero value takes
	// the defaults (DefaultRetryMaxAttempts and the backoffs); MaxAttempts 1 turns retries off.
	Retry RetryPolicy
}

// RetryPolicy is how a call is tried again when the server is UNAVAILABLE (not reachable, or
// Triton behind it down). Unary calls are retried; Chat and Generate are retried only until
// their first chunk arrives, never after, so a callback never sees a chunk twice; a VRAM
// session is never retried. The wait before retry n (from 1) is a random duration between
// half and all of min(InitialBackoff * 2^(n-1), MaxBackoff), so that many clients that lost
// the same server do not come back in step.
type RetryPolicy struct {
	// MaxAttempts is how many times a call is tried in all (inference.retry_max_attempts);
	// 1 means never again, 0 means DefaultRetryMaxAttempts.
	MaxAttempts int
	// InitialBackoff is the wait before the first retry (inference.retry_initial_backoff);
	// 0 means DefaultRetryInitialBackoff.
	InitialBackoff time.Duration
	// MaxBackoff caps the wait between two attempts (inference.retry_max_backoff); 0 means
	// DefaultRetryMaxBackoff.
	MaxBackoff time.Duration
}

// DefaultConfig returns the configuration used when there is no config.yaml: a plain-text
// connection to DefaultAddress with no API key.
func DefaultConfig() Config {
	return Config{
		Address:        DefaultAddress,
		DialTimeout:    DefaultDialTimeout,
		RequestTimeout: DefaultRequestTimeout,
		Retry: RetryPolicy{
			MaxAttempts:    DefaultRetryMaxAttempts,
			InitialBackoff: DefaultRetryInitialBackoff,
			MaxBackoff:     DefaultRetryMaxBackoff,
		},
	}
}

// LoadConfig reads a config.yaml of this shape:
//
//	inference:
//	  use_grpc: true
//	  grpc_address: "localhost:50051"
//	  use_secure_connection: false
//	  api_key: ""
//	  ca_file: ""          # PEM CA bundle for the server's certificate (default: system roots)
//	  cert_file: ""        # client certificate and key, for mutual TLS
//	  key_file: ""
//	  tls_server_name: ""  # name on the server's certificate, when not the address's host
//	  dial_timeout: "10s"
//	  request_timeout: "5m"
//	  retry_max_attempts: 4
//	  retry_initial_backoff: "100ms"
//	  retry_max_backoff: "2s"
//
// A missing file gives DefaultConfig; keys left out keep their defaults. The environment
// variables EnvAddress, EnvAPIKey, EnvSecure, EnvCAFile, EnvCertFile, EnvKeyFile and
// EnvTLSServerName then override the file. An unknown key, a value of the wrong type, a bad
// duration or a TLS file without use_secure_connection is an error that names the key (or
// the variable).
func LoadConfig(path string) (Config, error) {
	return loadConfig(path, os.Getenv)
}

// loadConfig is LoadConfig with the environment injected, so tests need not mutate the process's.
func loadConfig(path string, getenv func(string) string) (Config, error) {
	cfg := DefaultConfig()
	data, err := os.ReadFile(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		// No file: defaults, then the environment.
	case err != nil:
		return Config{}, fmt.Errorf("config: %w", err)
	default:
		if err := parseConfig(data, &cfg); err != nil {
			return Config{}, fmt.Errorf("config %s: %w", path, err)
		}
	}
	if err := applyEnv(&cfg, getenv); err != nil {
		return Config{}, fmt.Errorf("config: %w", err)
	}
	if err := cfg.checkTLS(); err != nil {
		return Config{}, fmt.Errorf("config: %w", err)
	}
	return cfg, nil
}

// checkTLS refuses TLS settings that would be silently ignored or cannot work, naming the
// config.yaml keys; New runs it too, for a Config built in code.
func (cfg *Config) checkTLS() error {
	if !cfg.Secure {
		for _, f := range []struct{ key, env, value string }{
			{"inference.ca_file", EnvCAFile, cfg.CAFile},
			{"inference.cert_file", EnvCertFile, cfg.CertFile},
			{"inference.key_file", EnvKeyFile, cfg.KeyFile},
			{"inference.tls_server_name", EnvTLSServerName, cfg.TLSServerName},
		} {
			if f.value != "" {
				return fmt.Errorf("%s (%s) is set but inference.use_secure_connection (%s) is false",
					f.key, f.env, EnvSecure)
			}
		}
	}
	if (cfg.CertFile == "") != (cfg.KeyFile == "") {
		return errors.New("inference.cert_file and inference.key_file go together: set both or neither")
	}
	return nil
}

// configFile mirrors config.yaml. Values are kept as raw nodes so that each one can be decoded
// on its own and a bad value reported with its key; yaml.v3 alone reports only a line number.
type configFile struct {
	Inference inferenceSection `yaml:"inference"`
}

// inferenceSection is the "inference:" mapping of config.yaml.
type inferenceSection struct {
	UseGRPC             yaml.Node `yaml:"use_grpc"`
	GRPCAddress         yaml.Node `yaml:"grpc_address"`
	UseSecureConnection yaml.Node `yaml:"use_secure_connection"`
	APIKey              yaml.Node `yaml:"api_key"`
	CAFile              yaml.Node `yaml:"ca_file"`
	CertFile            yaml.Node `yaml:"cert_file"`
	KeyFile             yaml.Node `yaml:"key_file"`
	TLSServerName       yaml.Node `yaml:"tls_server_name"`
	DialTimeout         yaml.Node `yaml:"dial_timeout"`
	RequestTimeout      yaml.Node `yaml:"request_timeout"`
	RetryMaxAttempts    yaml.Node `yaml:"retry_max_attempts"`
	RetryInitialBackoff yaml.Node `yaml:"retry_initial_backoff"`
	RetryMaxBackoff     yaml.Node `yaml:"retry_max_backoff"`
}

// parseConfig decodes a config.yaml document over cfg, leaving keys that are absent untouched.
func parseConfig(data []byte, cfg *Config) error {
	var file configFile
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true) // unknown keys are errors ("field X not found"), typos included
	if err := dec.Decode(&file); err != nil {
		if errors.Is(err, io.EOF) {
			return nil // empty document
		}
		return explainYAMLError(err)
	}
	s := &file.Inference

	useGRPC := true
	if err := decodeBool(&s.UseGRPC, "inference.use_grpc", &useGRPC); err != nil {
		return err
	}
	if !useGRPC {
		return errors.New("inference.use_grpc: false is not supported: maistro only speaks gRPC")
	}
	if err := decodeString(&s.GRPCAddress, "inference.grpc_address", &cfg.Address); err != nil {
		return err
	}
	if cfg.Address == "" {
		return errors.New("inference.grpc_address: must not be empty")
	}
	if err := decodeBool(&s.UseSecureConnection, "inference.use_secure_connection", &cfg.Secure); err != nil {
		return err
	}
	for _, f := range []struct {
		node *yaml.Node
		key  string
		out  *string
	}{
		{&s.APIKey, "inference.api_key", &cfg.APIKey},
		{&s.CAFile, "inference.ca_file", &cfg.CAFile},
		{&s.CertFile, "inference.cert_file", &cfg.CertFile},
		{&s.KeyFile, "inference.key_file", &cfg.KeyFile},
		{&s.TLSServerName, "inference.tls_server_name", &cfg.TLSServerName},
	} {
		if err := decodeString(f.node, f.key, f.out); err != nil {
			return err
		}
	}
	for _, f := range []struct {
		node *yaml.Node
		key  string
		out  *time.Duration
	}{
		{&s.DialTimeout, "inference.dial_timeout", &cfg.DialTimeout},
		{&s.RequestTimeout, "inference.request_timeout", &cfg.RequestTimeout},
		{&s.RetryInitialBackoff, "inference.retry_initial_backoff", &cfg.Retry.InitialBackoff},
		{&s.RetryMaxBackoff, "inference.retry_max_backoff", &cfg.Retry.MaxBackoff},
	} {
		if err := decodeDuration(f.node, f.key, f.out); err != nil {
			return err
		}
	}
	return decodePositiveInt(&s.RetryMaxAttempts, "inference.retry_max_attempts", &cfg.Retry.MaxAttempts)
}

// unknownKey matches yaml.v3's report of an unknown key under KnownFields.
var unknownKey = regexp.MustCompile(`^line (\d+): field (\S+) not found in type (?:\w+\.)?(\w+)$`)

// sectionOf maps the Go types of configFile to where they sit in config.yaml.
var sectionOf = map[string]string{"configFile": "", "inferenceSection": "inference."}

// explainYAMLError rewrites yaml.v3's "field grpc_adress not found in type client.inferenceSection"
// as "inference.grpc_adress: line 2: unknown key", in the file's terms rather than Go's.
func explainYAMLError(err error) error {
	var te *yaml.TypeError
	if !errors.As(err, &te) {
		return err
	}
	msgs := make([]string, len(te.Errors))
	for i, m := range te.Errors {
		if g := unknownKey.FindStringSubmatch(m); g != nil {
			if prefix, ok := sectionOf[g[3]]; ok {
				m = fmt.Sprintf("%s%s: line %s: unknown key", prefix, g[2], g[1])
			}
		}
		msgs[i] = m
	}
	return errors.New(strings.Join(msgs, "; "))
}

// present reports whether the key was in the file (a zero Node means it was not).
func present(n *yaml.Node) bool { return n.Kind != 0 }

func decodeBool(n *yaml.Node, key string, out *bool) error {
	if !present(n) {
		return nil
	}
	if err := n.Decode(out); err != nil {
		return fmt.Errorf("%s: line %d: want true or false, got %q", key, n.Line, n.Value)
	}
	return nil
}

func decodeString(n *yaml.Node, key string, out *string) error {
	if !present(n) {
		return nil
	}
	if n.Kind != yaml.ScalarNode {
		return fmt.Errorf("%s: line %d: want a string", key, n.Line)
	}
	return n.Decode(out)
}

// decodePositiveInt reads a whole number of at least 1.
func decodePositiveInt(n *yaml.Node, key string, out *int) error {
	if !present(n) {
		return nil
	}
	var v int
	if n.Kind != yaml.ScalarNode || n.Decode(&v) != nil || v < 1 {
		return fmt.Errorf("%s: line %d: want a whole number of at least 1, got %q", key, n.Line, n.Value)
	}
	*out = v
	return nil
}

// decodeDuration reads a Go duration string such as "10s" or "1m30s"; "0" and "0s" mean none.
func decodeDuration(n *yaml.Node, key string, out *time.Duration) error {
	if !present(n) {
		return nil
	}
	var s string
	if n.Kind != yaml.ScalarNode || n.Decode(&s) != nil {
		return fmt.Errorf("%s: line %d: want a duration such as \"10s\"", key, n.Line)
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("%s: line %d: want a duration such as \"10s\", got %q", key, n.Line, s)
	}
	if d < 0 {
		return fmt.Errorf("%s: line %d: must not be negative, got %q", key, n.Line, s)
	}
	*out = d
	return nil
}

// applyEnv lets the environment override the file, for containers and CI.
func applyEnv(cfg *Config, getenv func(string) string) error {
	for _, f := range []struct {
		env string
		out *string
	}{
		{EnvAddress, &cfg.Address}, {EnvAPIKey, &cfg.APIKey}, {EnvCAFile, &cfg.CAFile},
		{EnvCertFile, &cfg.CertFile}, {EnvKeyFile, &cfg.KeyFile}, {EnvTLSServerName, &cfg.TLSServerName},
	} {
		if v := getenv(f.env); v != "" {
			*f.out = v
		}
	}
	if v := getenv(EnvSecure); v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return fmt.Errorf("%s: want true or false, got %q", EnvSecure, v)
		}
		cfg.Secure = b
	}
	return nil
}
