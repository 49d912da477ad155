#!/usr/bin/env python3
"""diffusers' SDXL inpainting pipeline with random weights of the real architecture
(diffusers/stable-diffusion-xl-1.0-inpainting-0.1), timed as `outpaint bench pipeline
--model sdxl-inpaint --random-weights` times ours: both text encoders on a prompt and an empty
negative prompt, VAE encode of the masked image, `--steps` guided UNet steps (DDIM), VAE
decode. Prints the same JSON lines (`run` per run, a last `median`).

    python3 benches/gpu/sdxl_diffusers.py --steps 30 --runs 3              # CUDA, fp16
    python3 benches/gpu/sdxl_diffusers.py --device cpu --dtype float32 --resolution 128 --steps 1 --runs 1

No hub access: every component is built from its config; prompts are fixed token ids.
"""
import argparse
import json
import statistics
import time

import torch

# diffusers/stable-diffusion-xl-1.0-inpainting-0.1: unet/config.json (as torch_reference.py),
# vae/config.json, text_encoder/config.json, text_encoder_2/config.json.
SDXL_INPAINT_UNET = dict(
    sample_size=128, in_channels=9, out_channels=4, center_input_sample=False,
    flip_sin_to_cos=True, freq_shift=0,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    block_out_channels=(320, 640, 1280), layers_per_block=2, downsample_padding=1,
    mid_block_scale_factor=1, act_fn="silu", norm_num_groups=32, norm_eps=1e-5,
    cross_attention_dim=2048, transformer_layers_per_block=(1, 2, 10),
    attention_head_dim=(5, 10, 20), use_linear_projection=True,
    addition_embed_type="text_time", addition_embed_type_num_heads=64,
    addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816,
)
SDXL_VAE = dict(
    in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512),
    layers_per_block=2, act_fn="silu", latent_channels=4, norm_num_groups=32,
    sample_size=1024, scaling_factor=0.13025, force_upcast=True,
)
CLIP_L = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
              num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu",
              projection_dim=768)
CLIP_BIGG = dict(vocab_size=49408, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
                 num_attention_heads=20, max_position_embeddings=77, hidden_act="gelu",
                 projection_dim=1280)


def build(device, dtype):
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import (CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection)

    torch.manual_seed(0)
    unet = UNet2DConditionModel(**SDXL_INPAINT_UNET)
    vae = AutoencoderKL(**SDXL_VAE)
    te1 = CLIPTextModel(CLIPTextConfig(**CLIP_L))
    te2 = CLIPTextModelWithProjection(CLIPTextConfig(**CLIP_BIGG))
    sched = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                          num_train_timesteps=1000, steps_offset=1, clip_sample=False,
                          set_alpha_to_one=False)
    return [m.to(device, dtype).eval() for m in (unet, vae, te1, te2)] + [sched]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="float16", choices=["float16", "bfloat16", "float32"])
    ap.add_argument("--resolution", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--guidance", type=float, default=8.0)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)

    from diffusers import StableDiffusionXLInpaintPipeline

    t0 = time.perf_counter()
    unet, vae, te1, te2, sched = build(device, dtype)
    pipe = StableDiffusionXLInpaintPipeline(vae=vae, text_encoder=te1, text_encoder_2=te2,
                                            tokenizer=None, tokenizer_2=None, unet=unet,
                                            scheduler=sched, requires_aesthetics_score=False,
                                            force_zeros_for_empty_prompt=True)
    pipe.set_progress_bar_config(disable=True)
    n_params = sum(p.numel() for m in (unet, vae, te1, te2) for p in m.parameters())
    print(json.dumps({"event": "ready", "fw": "diffusers", "component": "pipeline",
                      "model": "sdxl-inpaint", "device": str(device), "dtype": args.dtype,
                      "params": n_params, "build_s": round(time.perf_counter() - t0, 3),
                      "torch": torch.__version__}), flush=True)

    r = args.resolution
    ids = torch.tensor([[(i * 7919 + 13) % 49408 for i in range(77)]], device=device)
    image = torch.full((1, 3, r, r), 0.5)
    mask = torch.ones((1, 1, r, r))

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def run():
        with torch.inference_mode():
            # The prompt through both encoders (penultimate hidden states, pooled projection);
            # the empty negative prompt is zeros (force_zeros_for_empty_prompt), as in ours.
            h1 = te1(ids, output_hidden_states=True).hidden_states[-2]
            out2 = te2(ids, output_hidden_states=True)
            embeds = torch.cat([h1, out2.hidden_states[-2]], dim=-1)
            pooled = out2.text_embeds
            y = pipe(prompt_embeds=embeds, negative_prompt_embeds=torch.zeros_like(embeds),
                     pooled_prompt_embeds=pooled,
                     negative_pooled_prompt_embeds=torch.zeros_like(pooled),
                     image=image, mask_image=mask, height=r, width=r, strength=1.0,
                     num_inference_steps=args.steps, guidance_scale=args.guidance,
                     output_type="pt").images
            sync()
            return y

    for _ in range(args.warmup):
        t = time.perf_counter()
        run()
        print(json.dumps({"event": "warmup", "seconds": round(time.perf_counter() - t, 4)}),
              flush=True)
    times = []
    for _ in range(args.runs):
        t = time.perf_counter()
        y = run()
        dt = time.perf_counter() - t
        times.append(dt)
        print(json.dumps({"event": "run", "fw": "diffusers", "component": "pipeline",
                          "seconds": round(dt, 4), "out_shape": list(y.shape)}), flush=True)
    if times:
        print(json.dumps({"event": "median", "component": "pipeline",
                          "seconds": round(statistics.median(times), 4)}), flush=True)
        if device.type == "cuda":
            print(json.dumps({"event": "memory",
                              "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)}))


if __name__ == "__main__":
    main()
