#!/usr/bin/env python3
"""Builds tiny, randomly initialised SD-inpainting pipelines under fixtures/tiny-sd-inpaint,
fixtures/tiny-sd2-inpaint and fixtures/tiny-sdxl-inpaint (diffusers layout, f16 safetensors) and
records diffusers' f32 outputs for a fixed input as
fixtures/golden/tiny_{sd,sd2,sdxl}_inpaint.safetensors. The Rust test `parity` loads both and
must match.

    python3 -m venv .venv && .venv/bin/pip install torch diffusers transformers safetensors numpy
    .venv/bin/python crates/diffusion/tests/make_golden.py [sd sd2 sdxl]   # default: all

Deterministic inputs (no hub access): explicit initial latents, explicit per-step noise for
Euler-ancestral (diffusers' `randn_tensor` is patched), and the VAE encode of the masked image
takes the posterior's mode (the Rust pipeline does the same), so nothing depends on torch's RNG
except the weights, which are saved.
"""
import json
import os
import shutil
import sys

import numpy as np
import torch
from safetensors.torch import save_file

import diffusers
import diffusers.schedulers.scheduling_euler_ancestral_discrete as euler_mod
import diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_inpaint as inpaint_mod
import diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl_inpaint as xl_inpaint_mod
from diffusers import (AutoencoderKL, DDIMScheduler, EulerAncestralDiscreteScheduler,
                       StableDiffusionInpaintPipeline, StableDiffusionXLInpaintPipeline, UNet2DConditionModel)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

HERE = os.path.dirname(os.path.abspath(__file__))
GOLDEN = os.path.join(HERE, "fixtures", "golden")
# Two variants: SD 1.x style, and SD 2 style (linear projections in the transformers, exact
# GELU in the text encoder, "!" as the pad token, v-prediction).
VARIANTS = {
    "sd": dict(use_linear_projection=False, hidden_act="quick_gelu", pad="<|endoftext|>", prediction="epsilon"),
    "sd2": dict(use_linear_projection=True, hidden_act="gelu", pad="!", prediction="v_prediction"),
}
W, H = 48, 32  # image size; the tiny VAE downsamples by 2, the latent is 24x16
STEPS = 4
GUIDANCE = 7.5
PROMPT = "a red house by the sea"
NEGATIVE = "blurry"

torch.manual_seed(1234)


def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def make_tokenizer(path, pad):
    """A CLIP BPE vocabulary: the 256 byte symbols, each with `</w>`, a few learnt merges."""
    chars = bytes_to_unicode()
    vocab = chars + [c + "</w>" for c in chars]
    corpus = ("a red house by the sea with a blue sky and green trees photo of an office desk window "
              "blurry the sea the house the sky a photo").split()
    words = [tuple(w[:-1]) + (w[-1] + "</w>",) for w in corpus]
    merges = []
    for _ in range(60):
        counts = {}
        for w in words:
            for a, b in zip(w, w[1:]):
                counts[(a, b)] = counts.get((a, b), 0) + 1
        if not counts:
            break
        best = max(sorted(counts), key=lambda p: counts[p])
        if counts[best] < 2:
            break
        merges.append(best)
        vocab.append(best[0] + best[1])
        new_words = []
        for w in words:
            out, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and (w[i], w[i + 1]) == best:
                    out.append(w[i] + w[i + 1])
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            new_words.append(tuple(out))
        words = new_words
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "vocab.json"), "w") as f:
        json.dump({t: i for i, t in enumerate(vocab)}, f, ensure_ascii=False)
    with open(os.path.join(path, "merges.txt"), "w") as f:
        f.write("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    slow = CLIPTokenizer(os.path.join(path, "vocab.json"), os.path.join(path, "merges.txt"),
                         pad_token=pad, model_max_length=77)
    slow.save_pretrained(path)
    # Real SD repositories ship vocab.json + merges.txt only (no tokenizer.json): so does this fixture.
    for extra in ("tokenizer.json", "added_tokens.json"):
        if os.path.exists(os.path.join(path, extra)):
            os.remove(os.path.join(path, extra))
    return slow, len(vocab)


def main():
    only = sys.argv[1:]
    for name, variant in VARIANTS.items():
        if not only or name in only:
            build(name, **variant)
    if not only or "sdxl" in only:
        build_sdxl()


def build(name, use_linear_projection, hidden_act, pad, prediction):
    torch.manual_seed(1234)
    OUT = os.path.join(HERE, "fixtures", f"tiny-{name}-inpaint")
    shutil.rmtree(OUT, ignore_errors=True)
    os.makedirs(GOLDEN, exist_ok=True)
    tokenizer, vocab_size = make_tokenizer(os.path.join(OUT, "tokenizer"), pad)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=77, hidden_act=hidden_act, projection_dim=32, layer_norm_eps=1e-5,
        bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1)).eval()
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=9, out_channels=4, layers_per_block=1, block_out_channels=(32, 32),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=(2, 4), norm_num_groups=32,
        use_linear_projection=use_linear_projection)  # candle's UNet resnets use 32 groups.eval()
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(16, 32), layers_per_block=1,
        latent_channels=4, norm_num_groups=8, sample_size=32).eval()
    # Random weights are small around zero; spread them so that the golden output is not flat.
    with torch.no_grad():
        for m in (unet, vae, text_encoder):
            for p in m.parameters():
                p.add_(torch.randn_like(p) * 0.05)
                # Stored as f16 (half the size); rounded here so both sides use the same values.
                p.copy_(p.half().float())
    ddim = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
                         clip_sample=False, set_alpha_to_one=False, steps_offset=1, timestep_spacing="leading",
                         prediction_type=prediction)
    pipe = StableDiffusionInpaintPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                          scheduler=ddim, safety_checker=None, feature_extractor=None,
                                          requires_safety_checker=False)
    pipe.to(torch.float16)
    pipe.save_pretrained(OUT, safe_serialization=True)
    pipe.to(torch.float32)
    # save_pretrained rewrites the tokenizer folder with tokenizer.json: keep the repository layout.
    for extra in ("tokenizer.json", "added_tokens.json"):
        p = os.path.join(OUT, "tokenizer", extra)
        if os.path.exists(p):
            os.remove(p)
    pipe.set_progress_bar_config(disable=True)

    image, mask, latents, euler_noise = fixed_inputs()

    ids, neg_ids = token_ids(tokenizer, PROMPT), token_ids(tokenizer, NEGATIVE)
    with torch.no_grad():
        text_emb = text_encoder(ids)[0]

    noises = fix_randomness(inpaint_mod, euler_noise)

    def run(scheduler):
        pipe.scheduler = scheduler
        with torch.no_grad():
            out = pipe(prompt=PROMPT, negative_prompt=NEGATIVE, image=image, mask_image=mask, height=H, width=W,
                       num_inference_steps=STEPS, guidance_scale=GUIDANCE, latents=latents.clone(),
                       output_type="np").images
        return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()  # shape: [1, 3, H, W]

    out_ddim = run(ddim)
    euler = EulerAncestralDiscreteScheduler.from_config(ddim.config)
    out_euler = run(euler)
    assert len(noises) == STEPS

    save_file({
        "image": image.contiguous(), "mask": mask.contiguous(), "latents": latents.contiguous(),
        "euler_noise": euler_noise.contiguous(),
        "prompt_ids": ids.to(torch.int64).contiguous(), "negative_ids": neg_ids.to(torch.int64).contiguous(),
        "text_embeddings": text_emb.contiguous(),
        "out_ddim": out_ddim, "out_euler": out_euler,
    }, os.path.join(GOLDEN, f"tiny_{name}_inpaint.safetensors"),
        metadata={"prompt": PROMPT, "negative_prompt": NEGATIVE, "steps": str(STEPS), "guidance": str(GUIDANCE),
                  "torch": torch.__version__, "diffusers": diffusers.__version__})
    print(name)
    print("ddim mean", float(out_ddim.mean()), "std", float(out_ddim.std()))
    print("euler mean", float(out_euler.mean()), "std", float(out_euler.std()))
    print("prompt ids", ids[0, :12].tolist())


def fixed_inputs():
    """The image, mask, initial latents and Euler noise of every variant (same draws)."""
    g = torch.Generator().manual_seed(42)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, H), torch.linspace(0, 1, W), indexing="ij")
    image = torch.stack([xx, yy, (xx * yy) ** 0.5])[None]  # shape: [1, 3, H, W], in [0, 1]
    image = (image * 0.8 + 0.2 * torch.rand(1, 3, H, W, generator=g)).clamp(0, 1)
    mask = torch.zeros(1, 1, H, W)
    mask[..., :, 30:] = 1.0  # generate the right part
    mask[..., 26:, :] = 1.0  # and a bottom strip
    latents = torch.randn(1, 4, H // 2, W // 2, generator=g)
    euler_noise = torch.randn(STEPS, 1, 4, H // 2, W // 2, generator=g)
    return image, mask, latents, euler_noise


def token_ids(tokenizer, text):
    """The 77 padded token ids of `text`, as the pipelines take them."""
    return tokenizer(text, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids


def fix_randomness(pipeline_module, euler_noise):
    """Makes the pipeline deterministic: the VAE encode takes the posterior's mode, and
    Euler-ancestral's step noise is `euler_noise`, one step after the other. Returns the list of
    noises handed out, to check that every step took one."""
    pipeline_module.retrieve_latents = lambda enc, generator=None, sample_mode="sample": enc.latent_dist.mode()
    noises = []

    def fake_randn(shape, generator=None, device=None, dtype=None, layout=None):
        n = euler_noise[len(noises)].to(dtype=dtype)
        noises.append(n)
        assert tuple(n.shape) == tuple(shape)
        return n

    euler_mod.randn_tensor = fake_randn
    return noises


def build_sdxl():
    """SDXL style: two text encoders (the second with a projection, its pooled output read at
    the largest id as the real config's eos_token_id = 2 asks), the penultimate hidden states
    side by side, text_time conditioning, transformer depth 2 (level 1 and the mid block), no
    attention at level 0, the SDXL VAE's scaling factor."""
    torch.manual_seed(1234)
    OUT = os.path.join(HERE, "fixtures", "tiny-sdxl-inpaint")
    shutil.rmtree(OUT, ignore_errors=True)
    os.makedirs(GOLDEN, exist_ok=True)
    tokenizer, vocab_size = make_tokenizer(os.path.join(OUT, "tokenizer"), "<|endoftext|>")
    tokenizer_2, _ = make_tokenizer(os.path.join(OUT, "tokenizer_2"), "!")
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=32, layer_norm_eps=1e-5,
        bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1)).eval()
    text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=40, intermediate_size=48, num_hidden_layers=3, num_attention_heads=5,
        max_position_embeddings=77, hidden_act="gelu", projection_dim=24, layer_norm_eps=1e-5,
        bos_token_id=0, eos_token_id=2, pad_token_id=1)).eval()
    time_dim = 8
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=9, out_channels=4, layers_per_block=1, block_out_channels=(16, 24),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2), attention_head_dim=(2, 4), cross_attention_dim=32 + 40,
        norm_num_groups=8, use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=time_dim, projection_class_embeddings_input_dim=24 + 6 * time_dim).eval()
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), layers_per_block=1,
        latent_channels=4, norm_num_groups=8, sample_size=32, scaling_factor=0.13025, force_upcast=True).eval()
    with torch.no_grad():
        for m in (unet, vae, text_encoder, text_encoder_2):
            for p in m.parameters():
                p.add_(torch.randn_like(p) * 0.05)
                p.copy_(p.half().float())
    ddim = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
                         clip_sample=False, set_alpha_to_one=False, steps_offset=1, timestep_spacing="leading",
                         prediction_type="epsilon")
    pipe = StableDiffusionXLInpaintPipeline(
        vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tokenizer,
        tokenizer_2=tokenizer_2, unet=unet, scheduler=ddim, requires_aesthetics_score=False,
        force_zeros_for_empty_prompt=True, add_watermarker=False)
    pipe.to(torch.float16)
    pipe.save_pretrained(OUT, safe_serialization=True)
    pipe.to(torch.float32)
    for folder in ("tokenizer", "tokenizer_2"):
        for extra in ("tokenizer.json", "added_tokens.json"):
            p = os.path.join(OUT, folder, extra)
            if os.path.exists(p):
                os.remove(p)
    pipe.set_progress_bar_config(disable=True)

    image, mask, latents, euler_noise = fixed_inputs()
    ids, ids_2 = token_ids(tokenizer, PROMPT), token_ids(tokenizer_2, PROMPT)
    neg_ids, neg_ids_2 = token_ids(tokenizer, NEGATIVE), token_ids(tokenizer_2, NEGATIVE)
    with torch.no_grad():
        prompt_embeds, _, pooled, _ = pipe.encode_prompt(PROMPT, device="cpu", do_classifier_free_guidance=False)

    noises = fix_randomness(xl_inpaint_mod, euler_noise)
    # What the UNet is called with: checks that the conditioning took the intended branches.
    seen = []
    real_forward = unet.forward

    def spy(*args, **kwargs):
        seen.append({k: v.clone() for k, v in kwargs["added_cond_kwargs"].items()})
        return real_forward(*args, **kwargs)

    unet.forward = spy

    def run(scheduler, negative):
        pipe.scheduler = scheduler
        with torch.no_grad():
            out = pipe(prompt=PROMPT, negative_prompt=negative, image=image, mask_image=mask, height=H, width=W,
                       num_inference_steps=STEPS, guidance_scale=GUIDANCE, latents=latents.clone(), strength=1.0,
                       output_type="np").images
        return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()  # shape: [1, 3, H, W]

    out_ddim = run(ddim, NEGATIVE)
    assert seen[-1]["time_ids"].tolist() == [[H, W, 0, 0, H, W]] * 2, seen[-1]["time_ids"]
    euler = EulerAncestralDiscreteScheduler.from_config(ddim.config)
    out_euler = run(euler, NEGATIVE)
    assert len(noises) == STEPS
    out_ddim_zero_negative = run(ddim, None)  # force_zeros_for_empty_prompt: zero negative conditioning
    assert float(seen[-1]["text_embeds"][0].abs().max()) == 0.0

    save_file({
        "image": image.contiguous(), "mask": mask.contiguous(), "latents": latents.contiguous(),
        "euler_noise": euler_noise.contiguous(),
        "prompt_ids": ids.to(torch.int64).contiguous(), "negative_ids": neg_ids.to(torch.int64).contiguous(),
        "prompt_ids_2": ids_2.to(torch.int64).contiguous(),
        "negative_ids_2": neg_ids_2.to(torch.int64).contiguous(),
        "text_embeddings": prompt_embeds.contiguous(), "pooled_text_embeddings": pooled.contiguous(),
        "out_ddim": out_ddim, "out_euler": out_euler, "out_ddim_zero_negative": out_ddim_zero_negative,
    }, os.path.join(GOLDEN, "tiny_sdxl_inpaint.safetensors"),
        metadata={"prompt": PROMPT, "negative_prompt": NEGATIVE, "steps": str(STEPS), "guidance": str(GUIDANCE),
                  "torch": torch.__version__, "diffusers": diffusers.__version__})
    print("sdxl")
    print("ddim mean", float(out_ddim.mean()), "std", float(out_ddim.std()))
    print("euler mean", float(out_euler.mean()), "std", float(out_euler.std()))
    print("ddim zero negative mean", float(out_ddim_zero_negative.mean()),
          "max diff to ddim", float((out_ddim_zero_negative - out_ddim).abs().max()))
    print("prompt ids", ids[0, :12].tolist(), "ids_2", ids_2[0, :12].tolist())
    print("unet params", sum(p.numel() for p in unet.parameters()))


if __name__ == "__main__":
    main()
