package comfyuitest

import (
	"encoding/json"
	"math/big"
)

// The node classes the fake knows, with the input specs ComfyUI and the
// DDColor custom node declare for them. Only these class_types are accepted;
// any other is refused as invalid_prompt ("Cannot execute because node X does
// not exist."), as on a ComfyUI 0.3.64 without that custom node.

type inputKind int

const (
	kindLink   inputKind = iota // a link from another node's output (IMAGE, MODEL, ...)
	kindInt                     // INT widget
	kindFloat                   // FLOAT widget
	kindString                  // STRING widget
	kindCombo                   // a list of choices
)

type inputSpec struct {
	name     string
	kind     inputKind
	typ      string // link type, or INT/FLOAT/STRING
	optional bool
	imin     *big.Int // INT bounds
	imax     *big.Int
	fmin     *float64 // FLOAT bounds
	fmax     *float64
	options  []string       // combo choices
	extra    map[string]any // the spec's options as ComfyUI reports them in input_config
	custom   bool           // checked by the node's own validation, not by type/bounds/list
}

// config is the input_config of validation errors: [type, options].
func (in inputSpec) config() []any {
	var t any = in.typ
	if in.kind == kindCombo {
		t = in.options
	}
	extra := in.extra
	if extra == nil {
		extra = map[string]any{}
	}
	return []any{t, extra}
}

type nodeSpec struct {
	inputs  []inputSpec
	outputs []string // RETURN_TYPES
	output  bool     // OUTPUT_NODE
	heavy   bool     // the node that takes the job's time and reports progress
	// validate is the node's own input check (VALIDATE_INPUTS): it returns a
	// reason per failing input.
	validate func(s *Server, in map[string]any) map[string]string
	run      func(x *execution, a args) ([]any, map[string]any, error)
}

func link(name, typ string) inputSpec { return inputSpec{name: name, kind: kindLink, typ: typ} }

func intIn(name string, def, lo, hi, step int64) inputSpec {
	return inputSpec{
		name: name, kind: kindInt, typ: "INT",
		imin: big.NewInt(lo), imax: big.NewInt(hi),
		extra: map[string]any{"default": def, "min": lo, "max": hi, "step": step},
	}
}

func floatIn(name string, def, lo, hi, step float64) inputSpec {
	return inputSpec{
		name: name, kind: kindFloat, typ: "FLOAT",
		fmin: &lo, fmax: &hi,
		extra: map[string]any{"default": def, "min": lo, "max": hi, "step": step},
	}
}

func stringIn(name, def string, multiline bool) inputSpec {
	extra := map[string]any{"default": def}
	if multiline {
		extra = map[string]any{"multiline": true, "dynamicPrompts": true}
	}
	return inputSpec{name: name, kind: kindString, typ: "STRING", extra: extra}
}

func combo(name string, options ...string) inputSpec {
	return inputSpec{name: name, kind: kindCombo, options: options}
}

func optional(in inputSpec) inputSpec { in.optional = true; return in }

// Model files the fake pretends to have.
var (
	ddcolorCheckpoints = []string{"ddcolor_paper_tiny.pth", "ddcolor_paper.pth", "ddcolor_modelscope.pth", "ddcolor_artistic.pth"}
	unetModels         = []string{"z_image_turbo_bf16.safetensors"}
	clipModels         = []string{"qwen_3_4b.safetensors"}
	vaeModels          = []string{"ae.safetensors"}
	clipTypes          = []string{"stable_diffusion", "stable_cascade", "sd3", "stable_audio", "mochi", "ltxv", "pixart", "cosmos", "lumina2", "wan", "hidream", "chroma", "ace", "omnigen2", "qwen_image", "hunyuan_image"}
	samplers           = []string{"euler", "euler_cfg_pp", "euler_ancestral", "euler_ancestral_cfg_pp", "heun", "heunpp2", "dpm_2", "dpm_2_ancestral", "lms", "dpm_fast", "dpm_adaptive", "dpmpp_2s_ancestral", "dpmpp_2s_ancestral_cfg_pp", "dpmpp_sde", "dpmpp_sde_gpu", "dpmpp_2m", "dpmpp_2m_cfg_pp", "dpmpp_2m_sde", "dpmpp_2m_sde_gpu", "dpmpp_3m_sde", "dpmpp_3m_sde_gpu", "ddpm", "lcm", "ipndm", "ipndm_v", "deis", "res_multistep", "res_multistep_cfg_pp", "res_multistep_ancestral", "res_multistep_ancestral_cfg_pp", "gradient_estimation", "er_sde", "seeds_2", "seeds_3", "ddim", "uni_pc", "uni_pc_bh2"}
	schedulers         = []string{"simple", "sgm_uniform", "karras", "exponential", "ddim_uniform", "beta", "normal", "linear_quadratic", "kl_optimal"}
)

const maxResolution = 16384

var nodeSpecs map[string]*nodeSpec

func init() {
	seed := inputSpec{
		name: "seed", kind: kindInt, typ: "INT",
		imin: big.NewInt(0), imax: new(big.Int).SetUint64(0xffffffffffffffff),
		extra: map[string]any{"default": 0, "min": 0, "max": json.Number("18446744073709551615"), "control_after_generate": true},
	}
	imageUpload := combo("image")
	imageUpload.custom = true
	imageUpload.extra = map[string]any{"image_upload": true}

	nodeSpecs = map[string]*nodeSpec{
		"LoadImage": {
			inputs:   []inputSpec{imageUpload},
			outputs:  []string{"IMAGE", "MASK"},
			validate: validateLoadImage,
			run:      runLoadImage,
		},
		"DDColor_Colorize": {
			inputs: []inputSpec{
				link("image", "IMAGE"),
				intIn("model_input_size", 512, 32, 4096, 32),
				combo("checkpoint", ddcolorCheckpoints...),
			},
			outputs: []string{"IMAGE"},
			heavy:   true,
			run:     runDDColor,
		},
		"SaveImage": {
			inputs:  []inputSpec{link("images", "IMAGE"), stringIn("filename_prefix", "ComfyUI", false)},
			output:  true,
			run:     runSaveImage,
			outputs: []string{},
		},
		"PreviewImage": {
			inputs:  []inputSpec{link("images", "IMAGE")},
			output:  true,
			run:     runPreviewImage,
			outputs: []string{},
		},
		"UNETLoader": {
			inputs:  []inputSpec{combo("unet_name", unetModels...), combo("weight_dtype", "default", "fp8_e4m3fn", "fp8_e4m3fn_fast", "fp8_e5m2")},
			outputs: []string{"MODEL"},
			run:     runPassThrough("unet_name"),
		},
		"CLIPLoader": {
			inputs:  []inputSpec{combo("clip_name", clipModels...), combo("type", clipTypes...), optional(combo("device", "default", "cpu"))},
			outputs: []string{"CLIP"},
			run:     runPassThrough("clip_name"),
		},
		"VAELoader": {
			inputs:  []inputSpec{combo("vae_name", vaeModels...)},
			outputs: []string{"VAE"},
			run:     runPassThrough("vae_name"),
		},
		"CLIPTextEncode": {
			inputs:  []inputSpec{stringIn("text", "", true), link("clip", "CLIP")},
			outputs: []string{"CONDITIONING"},
			run:     runPassThrough("text"),
		},
		"ConditioningZeroOut": {
			inputs:  []inputSpec{link("conditioning", "CONDITIONING")},
			outputs: []string{"CONDITIONING"},
			run: func(*execution, args) ([]any, map[string]any, error) {
				return []any{""}, nil, nil
			},
		},
		"EmptySD3LatentImage": {
			inputs: []inputSpec{
				intIn("width", 1024, 16, maxResolution, 16),
				intIn("height", 1024, 16, maxResolution, 16),
				intIn("batch_size", 1, 1, 4096, 1),
			},
			outputs: []string{"LATENT"},
			run:     runEmptyLatent,
		},
		"EmptyLatentImage": {
			inputs: []inputSpec{
				intIn("width", 512, 16, maxResolution, 8),
				intIn("height", 512, 16, maxResolution, 8),
				intIn("batch_size", 1, 1, 4096, 1),
			},
			outputs: []string{"LATENT"},
			run:     runEmptyLatent,
		},
		"ModelSamplingAuraFlow": {
			inputs:  []inputSpec{link("model", "MODEL"), floatIn("shift", 1.73, 0, 100, 0.01)},
			outputs: []string{"MODEL"},
			run:     runPassThrough("model"),
		},
		"KSampler": {
			inputs: []inputSpec{
				link("model", "MODEL"),
				seed,
				intIn("steps", 20, 1, 10000, 1),
				floatIn("cfg", 8, 0, 100, 0.1),
				combo("sampler_name", samplers...),
				combo("scheduler", schedulers...),
				link("positive", "CONDITIONING"),
				link("negative", "CONDITIONING"),
				link("latent_image", "LATENT"),
				floatIn("denoise", 1, 0, 1, 0.01),
			},
			outputs: []string{"LATENT"},
			heavy:   true,
			run:     runKSampler,
		},
		"VAEDecode": {
			inputs:  []inputSpec{link("samples", "LATENT"), link("vae", "VAE")},
			outputs: []string{"IMAGE"},
			run:     runVAEDecode,
		},
	}
}
