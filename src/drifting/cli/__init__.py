"""The ``drifting`` command line: thin wrappers that build a config and call a recipe.

:func:`build_parser` assembles the commands from one module per command group (each with its
``add_*_parser`` and ``cmd_*`` functions); :mod:`.args` holds the argument types and options they
share. The recipes under :mod:`drifting.recipes` know nothing of the command line.
"""

from __future__ import annotations

import argparse
import os
import sys

from .. import __version__
from ..threads import choose_threads, usable_cores
from .cmd_ablations import add_ablate_parser
from .cmd_analysis import add_analysis_parsers
from .cmd_autoencoders import add_autoencoder_parsers
from .cmd_distill import add_distill_parser
from .cmd_evaluate import add_eval_classifier_parser, add_eval_parser
from .cmd_flow import add_flow_parser
from .cmd_images import add_image_parsers
from .cmd_latent_stats import add_latent_stats_parser
from .cmd_peers import add_peers_parser
from .cmd_points import add_points_parser
from .cmd_policy import add_policy_parser
from .cmd_toy import add_toy_parser


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="drifting",
                                description="One-step generative models trained with a drifting field.")
    p.add_argument("--version", action="version", version=f"drifting {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    add_points_parser(sub)  # drifting fit-points DATA: an MLP generator on a point cloud
    add_toy_parser(sub)  # drifting toy fig3|fig4|ablation: the paper's toy studies
    add_image_parsers(sub)  # drifting train / train-mae / sample: the image generator
    add_eval_classifier_parser(sub)  # drifting eval-classifier SAMPLES.npz: in-domain classifier metrics
    add_eval_parser(sub)  # drifting eval SAMPLES.npz --ref REF: FID, precision/recall, density/coverage
    add_ablate_parser(sub)  # drifting ablate NAME --out DIR: a paper ablation table at CPU scale
    add_flow_parser(sub)  # drifting train-flow: class-conditional flow matching (peer / Drift-RAE teacher)
    add_autoencoder_parsers(sub)  # drifting train-rae / train-vae: Drift-RAE's latent spaces
    add_distill_parser(sub)  # drifting distill: Drift-RAE one-step distillation of a flow model
    # drifting latent-stats: Drift-RAE Tables 1-2 (isotropy, dispersion), curvature
    add_latent_stats_parser(sub)
    add_policy_parser(sub)  # drifting policy collect|train|eval|compare: Drifting Policy vs Diffusion Policy
    add_peers_parser(sub)  # drifting peers: drifting vs flow matching vs MMD, side by side
    # drifting guidance-sweep (Fig. 5), drifting neighbours (Fig. 6), drifting drift-norm
    add_analysis_parsers(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    import torch

    args = build_parser().parse_args(argv)
    threads = torch.get_num_threads()
    chosen, why = choose_threads(getattr(args, "threads", None))
    if chosen is not None:
        torch.set_num_threads(chosen)
        if args.threads == "auto" and chosen < len(usable_cores()):
            print(f"drifting {args.command}: {chosen} torch thread(s) ({why}; --threads N to choose)",
                  file=sys.stderr)
    try:
        rc = args.func(args)
        if os.environ.get("WORLD_SIZE", "1") != "1":  # under torchrun: all ranks leave the group together
            from ..distributed import shutdown

            shutdown()
        return rc
    except (ValueError, FileNotFoundError, FloatingPointError, ImportError) as e:
        print(f"drifting {args.command}: error: {e}", file=sys.stderr)
        return 2
    finally:
        torch.set_num_threads(threads)  # main() may be called in-process (tests, notebooks)
