package comfyui

import (
	"context"
	"fmt"
	"time"

	"github.com/sluicehq/sluice/engine"
)

// BaseURL is the ComfyUI server the client talks to.
func (c *Client) BaseURL() string { return c.base }

// GPUs reads the server's devices from /system_stats: how a gateway that
// does not share a host with the GPUs sees their memory. ComfyUI reports no
// utilisation, so it is -1.
//
// Memory: used = vram_total − vram_free, in bytes, vram_free clamped to
// [0, vram_total]. ComfyUI's vram_free (comfy.model_management
// get_free_memory) is already the CUDA driver's free memory plus what
// PyTorch's caching allocator holds reserved but unused (torch_vram_free =
// reserved − active), so the allocator's cache counts as free; adding
// torch_vram_free again would count it twice. Model weights ComfyUI keeps
// loaded are active tensors: ComfyUI unloads them on demand, but
// /system_stats does not tell them apart from live work, so they count as
// used.
//
// Devices of type "cpu" (a CPU-only server; "index" null, memory the
// host's RAM) come back with Type "cpu" and Index -1: the engine shows
// them apart and never counts them as GPUs. Other devices keep their type
// ("cuda", "mps", ...).
func (c *Client) GPUs(ctx context.Context, now time.Time) ([]engine.GPU, error) {
	stats, err := c.SystemStats(ctx)
	if err != nil {
		return nil, err
	}
	var out []engine.GPU
	for _, d := range stats.Devices {
		if d.VRAMTotal <= 0 {
			continue
		}
		index, id := -1, c.base+"#"+d.Type
		if d.Index != nil {
			index, id = *d.Index, fmt.Sprintf("%s#%d", c.base, *d.Index)
		}
		free := min(max(d.VRAMFree, 0), d.VRAMTotal)
		out = append(out, engine.GPU{
			ID:          id,
			Source:      "comfyui",
			Backend:     c.base,
			Type:        d.Type,
			Index:       index,
			Name:        d.Name,
			MemoryUsed:  uint64(d.VRAMTotal - free),
			MemoryTotal: uint64(d.VRAMTotal),
			Utilization: -1,
			SampledAt:   now,
		})
	}
	return out, nil
}
