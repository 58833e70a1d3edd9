"""``reddiff train``: train a diffusion prior (DDPM ε-prediction or rectified flow; ADM or diffusers UNet) on random
crops."""

from __future__ import annotations

import argparse

from .common import NONNEG_FLOAT, NONNEG_INT, POS_FLOAT, POS_INT, say

NAME = "train"
RANK = 7
HELP = "train a diffusion prior (DDPM ε or rectified flow; ADM or diffusers UNet) on random crops"
DESCRIPTION = ("Train a denoiser (the ADM network, or with --arch unet2d diffusers' UNet2DModel; DDPM ε-prediction, "
               "or with --objective flow rectified-flow velocity) on random crops (flips, 90° rotations, mild "
               "rescaling) of the built-in offline image set or a folder, with AdamW, EMA weights and gradient "
               "clipping. DIR receives checkpoint.pt (continue with --resume), the EMA weights (ADM: "
               "prior.safetensors + prior.json for --prior; unet2d: a diffusers folder DIR/diffusers for --prior "
               "diffusers:DIR/diffusers), "
               "loss.png and train.json. CUDA is used when present (bf16 autocast); on the CPU a run is deterministic "
               "for a given seed. After the first steps it says how long the whole run will take; Ctrl-C saves a "
               "checkpoint to resume from.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..tools.train import ARCHITECTURES, DEFAULT_MODEL, OBJECTIVES, TrainConfig

    d = TrainConfig(out="")
    p.add_argument("--output", metavar="DIR", required=True, help="output folder")
    p.add_argument("--data", default=d.data, help="'builtin' (offline scikit-image/scikit-learn pictures, the "
                   "held-out astronaut/chelsea/coffee excluded) or a folder of images (default: %(default)s)")
    p.add_argument("--steps", type=POS_INT, default=d.steps, help="total steps (default: %(default)s)")
    p.add_argument("--batch-size", type=POS_INT, default=d.batch_size, help="crops per step (default: %(default)s)")
    p.add_argument("--crop", type=POS_INT, default=d.crop, help="crop side in pixels (default: %(default)s)")
    p.add_argument("--lr", type=POS_FLOAT, default=d.lr, help="AdamW learning rate (default: %(default)s)")
    p.add_argument("--weight-decay", type=NONNEG_FLOAT, default=d.weight_decay,
                   help="AdamW weight decay (default: %(default)s)")
    p.add_argument("--warmup", type=NONNEG_INT, default=d.warmup, help="warm-up steps (default: %(default)s)")
    p.add_argument("--ema", type=NONNEG_FLOAT, default=d.ema_decay, help="EMA decay (default: %(default)s)")
    p.add_argument("--grad-clip", type=POS_FLOAT, default=d.grad_clip,
                   help="gradient-norm clip (default: %(default)s)")
    p.add_argument("--seed", type=NONNEG_INT, default=d.seed, help="seed (default: %(default)s)")
    p.add_argument("--checkpoint-every", type=POS_INT, default=d.checkpoint_every,
                   help="steps between checkpoints (default: %(default)s)")
    p.add_argument("--deadleaves", type=NONNEG_FLOAT, default=d.deadleaves,
                   help="fraction of crops from generated dead-leaves images (default: %(default)s)")
    p.add_argument("--low-t", type=NONNEG_FLOAT, default=d.low_t,
                   help="fraction of each batch with timesteps below --low-t-max, more signal where the presets work "
                   "(default: %(default)s)")
    p.add_argument("--low-t-max", type=POS_INT, default=d.low_t_max,
                   help="upper end of the low-noise timestep range (default: %(default)s)")
    p.add_argument("--cooldown", type=NONNEG_INT, default=d.cooldown,
                   help="linear learning-rate decay towards 0 over the last N steps (default: %(default)s)")
    p.add_argument("--channels", type=POS_INT, default=DEFAULT_MODEL["num_channels"],
                   help="base channels (ADM: a multiple of 32) (default: %(default)s)")
    p.add_argument("--channel-mult", default=DEFAULT_MODEL["channel_mult"],
                   help="ADM channel multipliers per level (default: %(default)s)")
    p.add_argument("--res-blocks", type=POS_INT, default=DEFAULT_MODEL["num_res_blocks"],
                   help="residual blocks per level (default: %(default)s)")
    p.add_argument("--attention", default=DEFAULT_MODEL["attention_resolutions"],
                   help="ADM attention resolutions, e.g. '8' (relative to a 64 px image; default: none)")
    p.add_argument("--arch", default=d.arch, choices=list(ARCHITECTURES),
                   help="network: adm (guided-diffusion's UNet, exported as prior.safetensors) or unet2d (diffusers' "
                   "UNet2DModel, exported as a diffusers folder for --prior diffusers:DIR/diffusers; needs "
                   "reddiff[diffusers]) (default: %(default)s)")
    p.add_argument("--objective", default=d.objective, choices=list(OBJECTIVES),
                   help="eps (DDPM ε-prediction on the VP schedule) or flow (rectified flow, velocity prediction; "
                   "with --arch unet2d) (default: %(default)s)")
    p.add_argument("--device", default=d.device, help="auto, cpu, cuda, cuda:N (default: %(default)s)")
    p.add_argument("--resume", action="store_true", help="continue DIR/checkpoint.pt (raise --steps to go on)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def run(args: argparse.Namespace) -> int:
    from ..io import dumps
    from ..tools.train import TrainConfig, train

    model = _model(args)
    cfg = TrainConfig(
        out=args.output, data=args.data, steps=args.steps, batch_size=args.batch_size, crop=args.crop, lr=args.lr,
        weight_decay=args.weight_decay, warmup=args.warmup, ema_decay=args.ema, grad_clip=args.grad_clip,
        seed=args.seed, checkpoint_every=args.checkpoint_every, deadleaves=args.deadleaves, low_t=args.low_t,
        low_t_max=args.low_t_max, cooldown=args.cooldown, device=args.device, model=model, arch=args.arch,
        objective=args.objective,
    )
    summary = train(cfg, resume=args.resume, progress=not args.no_progress, say=say)
    if args.json:
        print(dumps(summary))
    else:
        print(f"trained {summary['steps']} steps in {summary['seconds']:.0f} s, final loss {summary['final_loss']:.4f}")
        spec = f"diffusers:{summary['export']}" if args.arch == "unet2d" else summary["export"]
        print(f"prior: {summary['export']}  (use --prior {spec})")
        if summary["loss_curve"]:
            print(f"loss curve: {summary['loss_curve']}")
    return 0


def _model(args: argparse.Namespace) -> dict:
    """The network's arguments from the architecture flags."""
    from ..errors import ReddiffError
    from ..tools.train import DEFAULT_MODEL, DEFAULT_UNET2D

    if args.arch == "adm":
        model = dict(DEFAULT_MODEL)
        model.update(num_channels=args.channels, channel_mult=args.channel_mult, num_res_blocks=args.res_blocks,
                     attention_resolutions=args.attention)
        if model["attention_resolutions"]:
            model["num_head_channels"] = 32
        return model
    if args.attention:
        raise ReddiffError("--attention is for --arch adm; the unet2d network has no attention blocks")
    try:
        mult = [int(m) for m in str(args.channel_mult).split(",")]
    except ValueError:
        raise ReddiffError(f"--channel-mult must be comma-separated integers, got {args.channel_mult!r}") from None
    levels = len(mult)
    return {**DEFAULT_UNET2D, "block_out_channels": [args.channels * m for m in mult],
            "layers_per_block": args.res_blocks, "down_block_types": ["DownBlock2D"] * levels,
            "up_block_types": ["UpBlock2D"] * levels}
