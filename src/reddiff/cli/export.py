"""``reddiff export``: write an ADM prior as a diffusers pipeline folder."""

from __future__ import annotations

import argparse

from .common import add_prior_args, say

NAME = "export"
RANK = 9
HELP = "write an ADM prior (bundled, named, guided-diffusion checkpoint) as a diffusers pipeline folder"
DESCRIPTION = ("Convert the --prior's ADM UNet to diffusers' UNet2DModel (the same network, weights mapped one to one) "
               "and its schedule to a DDPMScheduler config, and write them as a DDPMPipeline folder (model_index.json, "
               "unet/ in safetensors, scheduler/). Load it back with --prior diffusers:FOLDER, or sample it with "
               "diffusers' own DDPMPipeline.from_pretrained(FOLDER). Configurations UNet2DModel cannot express "
               "(class-conditional models, a first level wider than the base channels, attention heads of different "
               "widths) are refused with the reason.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--output", metavar="DIR", required=True, help="the diffusers folder to write")
    p.add_argument("--overwrite", action="store_true", help="replace DIR when it exists")
    add_prior_args(p, runtime=False, device=False)


def run(args: argparse.Namespace) -> int:
    from ..networks.export import export_diffusers
    from ..prior import load_prior

    prior = load_prior(args.prior, args.prior_config, device="cpu")
    folder = export_diffusers(prior, args.output, overwrite=args.overwrite)
    say(f"wrote {folder} (use it with --prior diffusers:{folder})")
    return 0
