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
)

// Environment variables that override config.yaml. An empty value counts as unset.
const (
	// EnvAddress overrides inference.grpc_address.
	EnvAddress = "MAISTRO_GRPC_ADDRESS"
	// EnvAPIKey overrides inference.api_key.
	EnvAPIKey = "MAISTRO_API_KEY"
	// EnvSecure overrides inference.use_secure_connection (a boolean as strconv.ParseBool reads it).
	EnvSecure = "MAISTRO_USE_SECURE_CONNECTION"
)

// Config is everything New needs to reach the server. Build it with DefaultConfig or LoadConfig
// and adjust fields as needed; the zero value is not usable (Address is required).
type Config struct {
	// Address is the server's gRPC target: "host:port", or any target grpc.NewClient accepts
	// ("dns:///host:port", "unix:///path").
	Address string
	// Secure dials with TLS, verifying the server against the system's root certificates.
	Secure bool
	// APIKey, when not empty, is sent with every call as "x-api-key" metadata. Without Secure it
	// is only sent to a loopback address; New refuses any other combination.
	APIKey string
	// DialTimeout bounds one connection attempt; zero takes gRPC's default (20s).
	DialTimeout time.Duration
	// RequestTimeout is the deadline given to a call whose context has none; zero means none.
	RequestTimeout time.Duration
}

// DefaultConfig returns the configuration used when there is no config.yaml: a plain-text
// connection to DefaultAddress with no API key.
func DefaultConfig() Config {
	return Config{
		Address:        DefaultAddress,
		DialTimeout:    DefaultDialTimeout,
		RequestTimeout: DefaultRequestTimeout,
	}
}

// LoadConfig reads a config.yaml of this shape:
//
//	inference:
//	  use_grpc: true
//	  grpc_address: "localhost:50051"
//	  use_secure_connection: false
//	  api_key: ""
//	  dial_timeout: "10s"
//	  request_timeout: "5m"
//
// A missing file gives DefaultConfig; keys left out keep their defaults. The environment
// variables EnvAddress, EnvAPIKey and EnvSecure then override the file. An unknown key, a
// value of the wrong type or a bad duration is an error that names the key.
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
	return cfg, nil
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
	DialTimeout         yaml.Node `yaml:"dial_timeout"`
	RequestTimeout      yaml.Node `yaml:"request_timeout"`
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
	if err := decodeString(&s.APIKey, "inference.api_key", &cfg.APIKey); err != nil {
		return err
	}
	if err := decodeDuration(&s.DialTimeout, "inference.dial_timeout", &cfg.DialTimeout); err != nil {
		return err
	}
	return decodeDuration(&s.RequestTimeout, "inference.request_timeout", &cfg.RequestTimeout)
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
	if v := getenv(EnvAddress); v != "" {
		cfg.Address = v
	}
	if v := getenv(EnvAPIKey); v != "" {
		cfg.APIKey = v
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
