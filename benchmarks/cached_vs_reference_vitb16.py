"""Cached features vs the reference code's way (re-encode augmented images at every use), at ViT-B/16 size.

Per-step costs of both sides are measured in ONE run on this machine with open_clip's ViT-B-16 architecture and
RANDOM weights (same FLOPs as the real model, no download), then combined into full-run costs by the formula
printed with the result. The training code is the project's: `ShipGenerator` (VAE + the frozen `TextTower`) and
CoOp's step (`TextTower` over the label space's prompts with the learned context spliced in, as CoOp calls it).
Both sides run the same (our) generator and CoOp steps, so the ratio measures caching alone (the reference code's
CoOp runs the full 77-token context, which would make its side slower still).

Setting (options): a base-to-new split with 100 classes (50 base with 16 shots = 800 training images, 50 new);
class names are 100 ImageNet names (every 10th). Generator: 50 epochs, batch 256 (params.yaml). CoOp+SHIP:
50 epochs, batch 32 real + 32 synthetic features (params.yaml's CoOp), label space = all 100 classes.

  reference generator step  encode B_g augmented images with the image tower + the generator step (fwd+bwd+AdamW)
  cached generator step     the generator step on B_g cached features
  reference CoOp+SHIP step  encode B_c images + decode B_c synthetic features through the generator + CoOp step
  cached CoOp+SHIP step     the CoOp step (real and synthetic features come from the stores)
  one-off, cached side      extraction of (1 + K) views per training image (K = 10), and synthesis of
                            200 features per new class through the generator

The per-seed sweep (printed last). The one-run comparison above understates what a cached store saves: one seed's
store serves EVERY method of the sweep, and each of them, in its reference code, re-encodes the training images at
every epoch (CoOp and CLIP-Adapter in Dassl's trainers, SHIP's VAE and CoOp+SHIP, Tip-Adapter-F's training loop;
Tip-Adapter also encodes `augment_epoch` = 10 augmented passes once to build its cache). Per seed, with the
reference recipes (options):

  encoder passes per training image, reference = G + E_cs + E_coop + 2 E_ca + 2 (A_tip + E_tip)
      generator G = 50, CoOp+SHIP E_cs = 200, CoOp E_coop = 200, CLIP-Adapter(+SHIP) E_ca = 200 each,
      Tip-Adapter-F(+SHIP): cache A_tip = 10 + training E_tip = 20 each            -> 910 passes
  encoder passes per training image, cached    = 1 + K = 11 (the train store)
  training steps (the same on both sides: the same step code runs on encoded or cached features)
      generator  G x N / 256 steps (as above),   CoOp+SHIP  E_cs x ceil(N / 256) steps of 256 real + 256 fresh
      synthetic features (decode 256 + CoOp step), CoOp  E_coop x floor(N / 32) steps (CoOp's steps are the
      shared-prefix ones, `TextTower.encode_prompts`, which CoOp runs),
      CLIP-Adapter(+SHIP)  2 x E_ca x floor(N / 32) steps (32 + 32),  Tip-Adapter-F(+SHIP)  2 x E_tip x ceil(N / 256)
      steps (256 + 256) on a cache of N + 16 x new-class keys
  reference = N x passes_ref x encode + steps;   cached = N x (1 + K) x encode + steps + synthesis
Not counted on either side: test-set encoding (both encode the test split once: our eval store is shared by seeds
and methods, which favours the reference), Tip-Adapter's alpha/beta search and model selection (on cached val
features on both sides), image decoding and augmentation (per encoder pass on the reference side, so leaving it
out favours the reference too). The ceiling while encoding dominates is 910 / 11 = 82.7x.
Measured on a 2-core x86-64 CPU VM (shared, load 3.5-5): encode 0.630 s/image, CoOp step 1.63 s, CoOp+SHIP step 4.86 s,
generator step 7.5 s; reference 471794 s vs cached 18969 s per seed: 24.9x (the one-run figures above: 11.4x
training only, 5.3x with extraction). CoOp's 5000 text-tower steps, the same on both sides, are 43% of the cached
side; on a GPU the ratio of text-tower to image-tower cost differs, so the sweep ratio there is not measured here.

Image decoding and augmentation are left out on BOTH sides (only the encoder forward is timed, on random
224x224 tensors); counting them would add the same per-image cost to every reference step and to extraction.
The encoder is timed on a smaller batch and scaled linearly to the batch of a step (encoding is per image).

    .venv/bin/python benchmarks/cached_vs_reference_vitb16.py        # ~3-6 minutes on 2 cores
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from typing import Annotated

import typer

MODEL = "ViT-B-16"


def main(
    threads: Annotated[int, typer.Option(help="torch intra-op threads (this machine has 2 cores)")] = 2,
    base_classes: Annotated[int, typer.Option(help="labelled (base) classes")] = 50,
    new_classes: Annotated[int, typer.Option(help="label-only (new) classes")] = 50,
    shots: Annotated[int, typer.Option(help="training images per base class")] = 16,
    views: Annotated[int, typer.Option(help="augmented views cached per training image (+ 1 clean view)")] = 10,
    gen_epochs: Annotated[int, typer.Option(help="generator epochs")] = 50,
    gen_batch: Annotated[int, typer.Option(help="generator batch size")] = 256,
    coop_epochs: Annotated[int, typer.Option(help="CoOp+SHIP epochs")] = 50,
    coop_batch: Annotated[int, typer.Option(help="CoOp+SHIP real features per step (+ as many synthetic)")] = 32,
    per_class: Annotated[int, typer.Option(help="synthetic features per new class (synthesis, one-off)")] = 200,
    encode_batch: Annotated[int, typer.Option(help="images per timed encoder call (scaled to the step's batch)")] = 32,
    repeats: Annotated[int, typer.Option(help="timed repeats of each component (median), after a warm-up")] = 3,
    sweep_gen_epochs: Annotated[int, typer.Option(help="sweep: generator epochs (SHIP's reference)")] = 50,
    sweep_coop_ship_epochs: Annotated[int, typer.Option(help="sweep: CoOp+SHIP epochs (SHIP's reference)")] = 200,
    sweep_coop_ship_batch: Annotated[int, typer.Option(help="sweep: CoOp+SHIP real (+ synthetic) batch")] = 256,
    sweep_coop_epochs: Annotated[int, typer.Option(help="sweep: CoOp epochs (CoOp's vit_b16 config)")] = 200,
    sweep_clip_adapter_epochs: Annotated[int, typer.Option(help="sweep: CLIP-Adapter(+SHIP) epochs")] = 200,
    sweep_tip_epochs: Annotated[int, typer.Option(help="sweep: Tip-Adapter-F(+SHIP) epochs")] = 20,
    sweep_tip_augment: Annotated[int, typer.Option(help="sweep: Tip-Adapter's cache passes (augment_epoch)")] = 10,
) -> None:
    """Print per-step seconds of both sides, the full-run formula and the cached-vs-reference ratio."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # read when torch's OpenMP runtime starts (import below)
    import open_clip
    import torch
    import torch.nn.functional as F
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    from pipeline.generator import ShipGenerator
    from pipeline.params.generator import GeneratorParams
    from pipeline.text_tower import TextTower

    torch.set_num_threads(threads)
    load_before = os.getloadavg()[0]
    torch.manual_seed(0)
    clip = open_clip.create_model(MODEL).eval()
    tower = TextTower(clip, open_clip.get_tokenizer(MODEL))
    n_classes = base_classes + new_classes
    names = list(IMAGENET_CLASSNAMES)[:: len(IMAGENET_CLASSNAMES) // n_classes][:n_classes]
    dim = int(clip.text_projection.shape[1])
    gp = GeneratorParams(encoder_hidden=2048, bias_activation="relu")  # the default preset's (SHIP's reference)
    generator = ShipGenerator.from_params(tower, names, dim, gp)
    gen_opt = torch.optim.AdamW(generator.trainable_parameters(), lr=gp.lr, weight_decay=gp.weight_decay)
    g = torch.Generator().manual_seed(0)

    size = clip.visual.image_size
    images = torch.randn(encode_batch, 3, *((size, size) if isinstance(size, int) else size))

    def encode() -> None:
        with torch.inference_mode():
            clip.encode_image(images)

    def generator_step() -> None:
        x = F.normalize(torch.randn(gen_batch, dim), dim=-1)
        y = torch.randint(base_classes, (gen_batch,))
        loss = generator.loss(x, y, kl_weight=gp.kl_weight, generator=g).total
        gen_opt.zero_grad(set_to_none=True)
        loss.backward()
        gen_opt.step()

    def decode() -> None:  # the reference's synthetic features of a CoOp+SHIP step
        with torch.no_grad():
            z = torch.randn(coop_batch, generator.latent_dim)
            generator.decode(z, base_classes + torch.randint(new_classes, (coop_batch,)))

    prompts, eot = tower.context_prompts(names, 4)
    ctx = torch.nn.Parameter(tower.context_init("a photo of a", 4))
    coop_opt = torch.optim.SGD([ctx], lr=0.002, momentum=0.9, weight_decay=5e-4)

    def coop_step() -> None:  # CoOp's forward (pipeline/adapters/coop.py) over real + synthetic features
        feats = F.normalize(torch.randn(2 * coop_batch, dim), dim=-1)
        text = tower.encode_embeddings(tower.splice_context(prompts, ctx), eot)
        loss = F.cross_entropy(100.0 * feats @ text.T, torch.randint(n_classes, (2 * coop_batch,)))
        coop_opt.zero_grad(set_to_none=True)
        loss.backward()
        coop_opt.step()

    def coop_step_shared_prefix() -> None:  # the same step through TextTower.encode_prompts (not yet CoOp's call)
        feats = F.normalize(torch.randn(2 * coop_batch, dim), dim=-1)
        text = tower.encode_prompts(prompts, eot, ctx)
        loss = F.cross_entropy(100.0 * feats @ text.T, torch.randint(n_classes, (2 * coop_batch,)))
        coop_opt.zero_grad(set_to_none=True)
        loss.backward()
        coop_opt.step()

    from pipeline.adapters.clip_adapter import VisualAdapter

    def coop_ship_step() -> None:  # SHIP's reference CoOp+SHIP step: 256 real + 256 fresh synthetic features
        with torch.no_grad():
            z = torch.randn(sweep_coop_ship_batch, generator.latent_dim)
            fake = generator.decode(z, base_classes + torch.randint(new_classes, (sweep_coop_ship_batch,)))
        feats = torch.cat([F.normalize(torch.randn(sweep_coop_ship_batch, dim), dim=-1), fake.float()])
        text = tower.encode_prompts(prompts, eot, ctx)
        loss = F.cross_entropy(100.0 * feats @ text.T, torch.randint(n_classes, (len(feats),)))
        coop_opt.zero_grad(set_to_none=True)
        loss.backward()
        coop_opt.step()

    with torch.no_grad():
        clip_classifier = F.normalize(torch.randn(n_classes, dim), dim=-1)
    adapter = VisualAdapter(dim, 4, 0.2, torch.Generator().manual_seed(0))
    adapter_opt = torch.optim.SGD(adapter.parameters(), lr=0.002, momentum=0.9, weight_decay=5e-4)

    def clip_adapter_step() -> None:  # CLIP-Adapter(+SHIP): 32 real + 32 synthetic features
        feats = F.normalize(torch.randn(2 * coop_batch, dim), dim=-1)
        loss = F.cross_entropy(100.0 * adapter(feats) @ clip_classifier.T, torch.randint(n_classes, (len(feats),)))
        adapter_opt.zero_grad(set_to_none=True)
        loss.backward()
        adapter_opt.step()

    n_keys = base_classes * shots + new_classes * shots
    keys = torch.nn.Parameter(F.normalize(torch.randn(n_keys, dim), dim=-1))
    values = F.one_hot(torch.randint(n_classes, (n_keys,)), n_classes).float()
    tip_opt = torch.optim.AdamW([keys], lr=0.001, eps=1e-4, weight_decay=0.01)

    def tip_step() -> None:  # Tip-Adapter-F(+SHIP): 256 real + 256 synthetic features against the cache
        feats = F.normalize(torch.randn(2 * 256, dim), dim=-1)
        affinity = feats @ keys.T
        logits = 100.0 * feats @ clip_classifier.T + torch.exp(-5.5 * (1.0 - affinity)) @ values
        loss = F.cross_entropy(logits, torch.randint(n_classes, (len(feats),)))
        tip_opt.zero_grad(set_to_none=True)
        loss.backward()
        tip_opt.step()

    components = {
        "encode": encode,
        "generator_step": generator_step,
        "decode": decode,
        "coop_step": coop_step,
        "coop_step_prefix": coop_step_shared_prefix,
        "coop_ship_step": coop_ship_step,
        "clip_adapter_step": clip_adapter_step,
        "tip_step": tip_step,
    }
    times: dict[str, list[float]] = {k: [] for k in components}
    for r in range(repeats + 1):  # round 0 = warm-up; components interleaved so machine load hits all alike
        for k, fn in components.items():
            t0 = time.perf_counter()
            fn()
            if r:
                times[k].append(time.perf_counter() - t0)
        print(
            f"  round {r}: " + ("warm-up" if not r else "  ".join(f"{k} {v[-1]:.2f}s" for k, v in times.items())),
            file=sys.stderr,
            flush=True,
        )
    t = {k: statistics.median(v) for k, v in times.items()}

    enc_img = t["encode"] / encode_batch  # seconds per image through the image tower
    n_train = base_classes * shots
    gen_steps = gen_epochs * n_train / gen_batch  # batches of B_g (cost linear in batch, so fractional is exact)
    coop_steps = coop_epochs * n_train / coop_batch
    ref_gen_step = gen_batch * enc_img + t["generator_step"]
    ref_coop_step = coop_batch * enc_img + t["decode"] + t["coop_step"]
    extraction = (1 + views) * n_train * enc_img
    synthesis = new_classes * per_class * t["decode"] / coop_batch

    ref_gen, cached_gen = gen_steps * ref_gen_step, gen_steps * t["generator_step"]
    ref_coop, cached_coop = coop_steps * ref_coop_step, coop_steps * t["coop_step"]
    reference = ref_gen + ref_coop
    cached = cached_gen + cached_coop + extraction + synthesis

    print(f"{MODEL}, random weights; torch threads {threads}; OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}")
    print(
        f"load average (1 min) before / after: {load_before:.1f} / {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
    )
    print(
        f"dataset: {base_classes} base classes x {shots} shots = {n_train} training images, {new_classes} new classes;"
        f" generator {gen_epochs} epochs x batch {gen_batch}; CoOp+SHIP {coop_epochs} epochs x batch {coop_batch}"
        f" real + {coop_batch} synthetic, label space {n_classes} classes"
    )
    print(f"per-step seconds (median of {repeats} interleaved repeats, after a warm-up round):")
    rows = [
        (f"encode 1 image (image tower, timed at {encode_batch} per call)", enc_img),
        (f"generator step (batch {gen_batch}: forward + backward + AdamW)", t["generator_step"]),
        (f"generator decode ({coop_batch} features, no grad)", t["decode"]),
        (f"CoOp step ({n_classes} prompts, {2 * coop_batch} features: fwd + bwd + SGD)", t["coop_step"]),
        (f"reference generator step = {gen_batch} x encode + generator step", ref_gen_step),
        ("cached generator step    = generator step", t["generator_step"]),
        (f"reference CoOp+SHIP step = {coop_batch} x encode + decode + CoOp step", ref_coop_step),
        ("cached CoOp+SHIP step    = CoOp step", t["coop_step"]),
        ("CoOp step with the shared prefix (TextTower.encode_prompts)", t["coop_step_prefix"]),
    ]
    for label, seconds in rows:
        print(f"  {label:66s}{seconds:9.3f}")
    print("full run (seconds):")
    print(
        f"  steps: generator {gen_epochs} x {n_train}/{gen_batch} = {gen_steps:.2f}; CoOp+SHIP {coop_epochs} x "
        f"{n_train}/{coop_batch} = {coop_steps:.2f}"
    )
    print(
        f"  reference = gen steps x ref gen step + CoOp steps x ref CoOp step = {ref_gen:.0f} + {ref_coop:.0f}"
        f" = {reference:.0f}"
    )
    print(
        f"  cached    = gen steps x gen step + CoOp steps x CoOp step + extraction + synthesis"
        f" = {cached_gen:.0f} + {cached_coop:.0f} + {extraction:.0f} + {synthesis:.0f} = {cached:.0f}"
    )
    print(
        f"    extraction = (1 + {views}) views x {n_train} images x encode; synthesis = {new_classes} x {per_class}"
        f" features x decode/feature"
    )
    print(f"speed-up, training only (no extraction/synthesis): {reference / (cached_gen + cached_coop):6.1f}x")
    print(f"speed-up, one-off extraction + synthesis counted:  {reference / cached:6.1f}x")
    # Both sides run the same CoOp step, so a cheaper one (shared prefix) raises the ratio.
    prefix_coop = coop_steps * (t["coop_step_prefix"] - t["coop_step"])
    prefix_ratio = (reference + prefix_coop) / (cached + prefix_coop)
    print(
        f"  with the shared-prefix CoOp step on both sides (as pipeline/adapters/coop.py runs it): {prefix_ratio:6.1f}x"
    )
    bound = (gen_epochs + coop_epochs) / (1 + views)
    print(
        f"  (encoder passes per training image: reference {gen_epochs} + {coop_epochs}, cached 1 + {views}:"
        f" the ratio cannot exceed {bound:.1f}x while encoding dominates)"
    )

    # --- the per-seed sweep one cached store serves (module docstring) -------------------------------------------
    n = n_train
    passes_ref = (
        sweep_gen_epochs
        + sweep_coop_ship_epochs
        + sweep_coop_epochs
        + 2 * sweep_clip_adapter_epochs
        + 2 * (sweep_tip_augment + sweep_tip_epochs)
    )
    steps = {
        "generator": (sweep_gen_epochs * n / gen_batch, t["generator_step"]),
        "CoOp+SHIP": (sweep_coop_ship_epochs * -(-n // sweep_coop_ship_batch), t["coop_ship_step"]),
        "CoOp": (sweep_coop_epochs * (n // coop_batch), t["coop_step_prefix"]),
        "CLIP-Adapter(+SHIP)": (2 * sweep_clip_adapter_epochs * (n // coop_batch), t["clip_adapter_step"]),
        "Tip-Adapter-F(+SHIP)": (2 * sweep_tip_epochs * -(-n // 256), t["tip_step"]),
    }
    shared = sum(k * c for k, c in steps.values())
    sweep_ref = n * passes_ref * enc_img + shared
    sweep_cached = n * (1 + views) * enc_img + shared + synthesis
    print("per-seed sweep served by one cached store (formula in the module docstring):")
    print(
        f"  encoder passes per training image: reference {sweep_gen_epochs} + {sweep_coop_ship_epochs} + "
        f"{sweep_coop_epochs} + 2 x {sweep_clip_adapter_epochs} + 2 x ({sweep_tip_augment} + {sweep_tip_epochs}) = "
        f"{passes_ref}; cached 1 + {views} = {1 + views}"
    )
    print(
        f"  per-step seconds: CoOp+SHIP step ({sweep_coop_ship_batch} real + {sweep_coop_ship_batch} fresh synthetic:"
        f" decode + CoOp step) {t['coop_ship_step']:.3f}, CLIP-Adapter step ({2 * coop_batch} features)"
        f" {t['clip_adapter_step']:.4f}, Tip-Adapter-F step (512 features, {n_keys} keys) {t['tip_step']:.4f}"
    )
    for name, (k, c) in steps.items():
        print(f"  {name:22s} {k:9.1f} steps x {c:8.4f} s = {k * c:9.0f} s (both sides)")
    print(
        f"  reference = {n} images x {passes_ref} passes x encode + steps = {n * passes_ref * enc_img:.0f} + "
        f"{shared:.0f} = {sweep_ref:.0f} s"
    )
    print(
        f"  cached    = {n} images x {1 + views} passes x encode + steps + synthesis = "
        f"{n * (1 + views) * enc_img:.0f} + {shared:.0f} + {synthesis:.0f} = {sweep_cached:.0f} s"
    )
    print(f"speed-up, per-seed sweep, extraction + synthesis counted: {sweep_ref / sweep_cached:6.1f}x")
    print(
        f"  (ceiling while encoding dominates: {passes_ref} / {1 + views} = {passes_ref / (1 + views):.1f}x; the"
        f" shared training steps, {shared / sweep_cached:.0%} of the cached side, are what keeps it below)"
    )


if __name__ == "__main__":
    typer.run(main)
