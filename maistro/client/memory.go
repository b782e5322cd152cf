package client

import (
	"context"
	"fmt"
	"strings"
	"time"

	pb "github.com/inference-platform/maistro/internal/gen/inference"
	"google.golang.org/protobuf/types/known/durationpb"
)

// The server loads models into device memory on demand, keeps them while they are used (or for
// their keep-alive) and evicts idle ones when a load needs room within its memory budget.
// MemoryStats reports that picture, ClearMemory frees what is idle, and a VRAMSession (see
// OpenVRAMSession) loads, unloads and pins models and follows what happens to them.

// ModelState is a model's state as the server's scheduler sees it.
type ModelState string

// Model states; the empty string means the server did not say.
const (
	// ModelStateUnloaded: the model is known but holds no memory.
	ModelStateUnloaded ModelState = "unloaded"
	// ModelStateLoading: the model is being loaded; requests for it wait.
	ModelStateLoading ModelState = "loading"
	// ModelStateLoaded: the model is in memory and serves requests.
	ModelStateLoaded ModelState = "loaded"
	// ModelStateUnloading: the model is being unloaded.
	ModelStateUnloading ModelState = "unloading"
	// ModelStateFailed: the last load failed; ModelMemory.Reason says why.
	ModelStateFailed ModelState = "failed"
)

// MemorySource says where a model's memory figure comes from.
type MemorySource string

// Memory sources; the empty string means the server did not say (a model that holds no memory).
const (
	// MemorySourceMetric: reported by the model's runtime (Triton's metrics).
	MemorySourceMetric MemorySource = "metric"
	// MemorySourceMeasured: measured by the server as the device's usage before and after the load.
	MemorySourceMeasured MemorySource = "measured"
	// MemorySourceDeclared: declared in the model's configuration, not observed.
	MemorySourceDeclared MemorySource = "declared"
)

// DeviceMemory is one device's memory: a GPU, or the host where there is none.
type DeviceMemory struct {
	// Device names the device, for example "gpu:0" or "cpu".
	Device string `json:"device"`
	// TotalBytes is the device's memory.
	TotalBytes uint64 `json:"total_bytes"`
	// UsedBytes is the memory in use, by any process.
	UsedBytes uint64 `json:"used_bytes"`
	// FreeBytes is the memory left.
	FreeBytes uint64 `json:"free_bytes"`
}

// ModelMemory is one model's memory and state.
type ModelMemory struct {
	// Model is the model's name as the server serves it.
	Model string `json:"model"`
	// State is where the model is in its life cycle.
	State ModelState `json:"state"`
	// MemoryBytes is the memory the model holds (or, declared, would hold once loaded).
	MemoryBytes uint64 `json:"memory_bytes"`
	// MemorySource says where MemoryBytes comes from.
	MemorySource MemorySource `json:"memory_source,omitempty"`
	// Pinned models are never evicted; only an explicit unload (or ClearMemory with
	// IncludePinned) unloads them.
	Pinned bool `json:"pinned"`
	// InFlight counts the requests the model is serving now; a model is idle when it is 0.
	InFlight int `json:"in_flight"`
	// LastUsed is when the model last finished a request; zero if never.
	LastUsed time.Time `json:"last_used,omitzero"`
	// ExpiresAt is when keep-alive will unload the model if it stays idle; zero when it is kept
	// forever, or not loaded.
	ExpiresAt time.Time `json:"expires_at,omitzero"`
	// Reason says why the model is not loaded, when its load failed.
	Reason string `json:"reason,omitempty"`
}

// MemorySnapshot is the server's memory picture at one moment.
type MemorySnapshot struct {
	// Devices are the devices the server loads models on.
	Devices []DeviceMemory `json:"devices"`
	// Models are every model the server knows, loaded or not.
	Models []ModelMemory `json:"models"`
	// BudgetBytes is how much memory the server lets its models hold in all; loads beyond it
	// evict idle models first, and fail (IsResourceExhausted) when that is not enough.
	BudgetBytes uint64 `json:"budget_bytes"`
	// TakenAt is when the server took the snapshot; zero if it did not say.
	TakenAt time.Time `json:"taken_at,omitzero"`
}

// Model returns the entry of the model named name, or nil when the snapshot has none.
func (s *MemorySnapshot) Model(name string) *ModelMemory {
	for i := range s.Models {
		if s.Models[i].Model == name {
			return &s.Models[i]
		}
	}
	return nil
}

// ClearOptions choose what ClearMemory unloads.
type ClearOptions struct {
	// IncludePinned unloads pinned models too.
	IncludePinned bool
	// WaitForIdle is how long to wait for busy models to finish their requests; zero skips
	// busy models at once.
	WaitForIdle time.Duration
}

// ClearResult says what ClearMemory did.
type ClearResult struct {
	// Unloaded are the models that were unloaded.
	Unloaded []string `json:"unloaded"`
	// Skipped are the models left loaded, each with why as the server words it (busy, pinned).
	Skipped []string `json:"skipped"`
	// FreedBytes is the memory the unloaded models held.
	FreedBytes uint64 `json:"freed_bytes"`
}

// MemoryStats returns the server's memory picture now: its devices, every model with its state
// and memory, and the budget. Config.RequestTimeout applies to the call.
func (c *Client) MemoryStats(ctx context.Context) (*MemorySnapshot, error) {
	ctx, cancel := c.callContext(ctx)
	defer cancel()
	resp, err := c.rpc.GetMemoryStats(ctx, &pb.GetMemoryStatsRequest{})
	if err != nil {
		return nil, fromRPC(err)
	}
	if resp.GetSnapshot() == nil {
		return nil, fmt.Errorf("maistro: %w: memory stats without a snapshot", ErrBadResponse)
	}
	return memorySnapshotFromProto(resp.GetSnapshot()), nil
}

// ClearMemory unloads every idle model that is not pinned (pinned ones too with
// opts.IncludePinned), waiting up to opts.WaitForIdle for busy ones, and says what it unloaded
// and what it left.
//
// Config.RequestTimeout applies to the call, extended by opts.WaitForIdle so that the wait
// does not use it up; a deadline of ctx's own is left as it is.
func (c *Client) ClearMemory(ctx context.Context, opts ClearOptions) (*ClearResult, error) {
	if _, ok := ctx.Deadline(); !ok && c.requestTimeout > 0 && opts.WaitForIdle > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.requestTimeout+opts.WaitForIdle)
		defer cancel()
	}
	ctx, cancel := c.callContext(ctx)
	defer cancel()
	req := &pb.ClearMemoryRequest{IncludePinned: opts.IncludePinned}
	if opts.WaitForIdle != 0 {
		req.WaitForIdle = durationpb.New(opts.WaitForIdle)
	}
	resp, err := c.rpc.ClearMemory(ctx, req)
	if err != nil {
		return nil, fromRPC(err)
	}
	return &ClearResult{
		Unloaded:   nonNil(resp.GetUnloadedModels()),
		Skipped:    nonNil(resp.GetSkippedModels()),
		FreedBytes: resp.GetFreedBytes(),
	}, nil
}

// nonNil makes a missing list an empty one, so that JSON shows [] rather than null.
func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

// ---------------------------------------------------------------------------------------------
// Conversions to and from inference.v1
// ---------------------------------------------------------------------------------------------

func memorySnapshotFromProto(m *pb.MemorySnapshot) *MemorySnapshot {
	s := &MemorySnapshot{
		Devices:     make([]DeviceMemory, len(m.GetDevices())),
		Models:      make([]ModelMemory, len(m.GetModels())),
		BudgetBytes: m.GetBudgetBytes(),
		TakenAt:     timeFromProto(m.GetTakenAt()),
	}
	for i, d := range m.GetDevices() {
		s.Devices[i] = DeviceMemory{
			Device:     d.GetDevice(),
			TotalBytes: d.GetTotalBytes(),
			UsedBytes:  d.GetUsedBytes(),
			FreeBytes:  d.GetFreeBytes(),
		}
	}
	for i, mm := range m.GetModels() {
		s.Models[i] = ModelMemory{
			Model:        mm.GetModel(),
			State:        modelStateFromProto(mm.GetState()),
			MemoryBytes:  mm.GetMemoryBytes(),
			MemorySource: MemorySource(mm.GetMemorySource()),
			Pinned:       mm.GetPinned(),
			InFlight:     int(mm.GetInFlight()),
			LastUsed:     timeFromProto(mm.GetLastUsed()),
			ExpiresAt:    timeFromProto(mm.GetExpiresAt()),
			Reason:       mm.GetReason(),
		}
	}
	return s
}

func modelStateFromProto(s pb.ModelState) ModelState {
	switch s {
	case pb.ModelState_MODEL_STATE_UNSPECIFIED:
		return ""
	case pb.ModelState_MODEL_STATE_UNLOADED:
		return ModelStateUnloaded
	case pb.ModelState_MODEL_STATE_LOADING:
		return ModelStateLoading
	case pb.ModelState_MODEL_STATE_LOADED:
		return ModelStateLoaded
	case pb.ModelState_MODEL_STATE_UNLOADING:
		return ModelStateUnloading
	case pb.ModelState_MODEL_STATE_FAILED:
		return ModelStateFailed
	}
	// A state added to the proto after this client was built: keep its name rather than drop it.
	return ModelState(strings.ToLower(strings.TrimPrefix(s.String(), "MODEL_STATE_")))
}
