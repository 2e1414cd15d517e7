package comfyui

import "context"

// SystemStats is GET /system_stats: the host and its devices' memory, in bytes.
type SystemStats struct {
	System  SystemInfo `json:"system"`
	Devices []Device   `json:"devices"`
}

// SystemInfo describes the ComfyUI host.
type SystemInfo struct {
	OS             string   `json:"os"`
	RAMTotal       int64    `json:"ram_total"`
	RAMFree        int64    `json:"ram_free"`
	ComfyUIVersion string   `json:"comfyui_version"`
	PythonVersion  string   `json:"python_version"`
	PytorchVersion string   `json:"pytorch_version"`
	EmbeddedPython bool     `json:"embedded_python"`
	Argv           []string `json:"argv"`
}

// Device is one compute device of the ComfyUI host.
type Device struct {
	Name string `json:"name"`
	Type string `json:"type"`
	// Index is the device's index; nil for a device without one (ComfyUI
	// reports "index": null for its "cpu" device).
	Index          *int  `json:"index"`
	VRAMTotal      int64 `json:"vram_total"`
	VRAMFree       int64 `json:"vram_free"`
	TorchVRAMTotal int64 `json:"torch_vram_total"`
	TorchVRAMFree  int64 `json:"torch_vram_free"`
}

// SystemStats reads GET /system_stats.
func (c *Client) SystemStats(ctx context.Context) (*SystemStats, error) {
	var s SystemStats
	if err := c.getJSON(ctx, "/system_stats", &s); err != nil {
		return nil, err
	}
	return &s, nil
}
