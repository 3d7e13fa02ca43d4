"""The ``routevit`` command.

Exit status of every subcommand: 0 done, 1 the run failed, 2 bad input (recipe, data,
checkpoint, image or flag), 128 + N stopped by signal N. An error is one line on stderr;
``--debug`` adds the Python traceback (see :mod:`routevit.errors`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from .errors import BAD_INPUT, report, signals_stop

EXIT_STATUS = "Exit status: 0 done, 1 the run failed, 2 bad input ({}), 128+N stopped by signal N."


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error (no usage block) and exit status 2."""

    commands: dict[str, argparse.ArgumentParser]

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(BAD_INPUT)


def _number(kind: type, minimum: float, what: str) -> Callable[[str], Any]:
    """An argparse type: a ``kind`` (int or float) >= ``minimum``."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not value >= minimum:  # also refuses nan
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    return parse


def _keep_ratio(text: str) -> float:
    """An argparse type: a share of tokens in (0, 1]."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a keep ratio in (0, 1], got {text!r}")
    return value


def _device(text: str) -> str:
    """An argparse type: cpu, cuda or cuda:N, the latter only where CUDA is available."""
    import torch

    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"expected cpu, cuda or cuda:N, got {text!r}") from None
    if device.type not in ("cpu", "cuda"):
        raise argparse.ArgumentTypeError(f"expected cpu, cuda or cuda:N, got {text!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"expected a device of this machine, got {text!r} (no CUDA here)")
    return text


class _DefaultsHelp(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` shows each option's default, except where there is none to show (None, an
    off switch, an empty list) or the help text already says it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, False, []) or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def _int_list(minimum: int, what: str) -> Callable[[str], list[int]]:
    """An argparse type: comma-separated integers, each at least ``minimum``."""

    def parse(text: str) -> list[int]:
        try:
            values = [int(v) for v in text.split(",")]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
        if any(v < minimum for v in values):
            raise argparse.ArgumentTypeError(f"{what} must be >= {minimum}, got {text!r}")
        return values

    return parse


def _ratios(text: str) -> list[float]:
    try:
        return [_keep_ratio(v) for v in text.split(",")]
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated keep ratios in (0, 1], got {text!r}"
        ) from None


def _bench(args: argparse.Namespace) -> int:
    from .bench_pairs import get_pair, run

    if args.peers:
        from .bench_peers import run_peers

        text = run_peers(
            args.model, dtype=args.dtype, autocast=args.bf16, compile_models=args.compile,
            batch_sizes=args.batch_sizes, keep_ratio=args.keep_ratio, warmup=args.warmup,
            repeats=args.repeats, min_seconds=args.min_seconds, device=args.device,
        )  # fmt: skip
    elif args.dtype != "fp32":
        raise ValueError(f"--dtype {args.dtype} applies to --peers (use --bf16 for autocast), got it without")
    else:
        get_pair(args.model)  # an unknown model is refused before anything is built
        text = run(
            args.model,
            batch_sizes=args.batch_sizes,
            keep_ratio=args.keep_ratio,
            warmup=args.warmup,
            repeats=args.repeats,
            min_seconds=args.min_seconds,
            bf16=args.bf16,
            sweep=args.sweep,
            sweep_batch=args.sweep_batch,
            compile_models=args.compile,
            device=args.device,
        )
    print(text)
    if args.out:
        with open(args.out, "w") as out:
            out.write(text + "\n")
    return 0


def _train(args: argparse.Namespace) -> int:
    from .train import train_command

    # explicit flags win over --set, which wins over the recipe file
    overrides = list(args.set)
    for flag, key in (("data", "data.root"), ("output", "run.output"), ("epochs", "train.epochs"),
                      ("batch_size", "train.batch_size")):  # fmt: skip
        value = getattr(args, flag)
        if value is not None:
            overrides.append(f"{key}={value}")
    return train_command(args.recipe, overrides, args.resume, debug=args.debug)


def _eval(args: argparse.Namespace) -> int:
    from .train import eval_command

    return eval_command(
        args.checkpoint, args.data, args.batch_size, args.ema, args.workers, args.device,
        args.annotations, args.images, args.max_images, args.seed, args.out, args.keep_ratio,
        task=args.task, detections=args.detections, score_threshold=args.score_threshold,
        max_detections=args.max_detections, multimask=args.multimask, bf16=args.bf16,
        box_chunk=args.box_chunk, model=args.model, overrides=args.set,
        holdout_per_class=args.holdout_per_class, debug=args.debug,
    )  # fmt: skip


def _reproduce(args: argparse.Namespace) -> int:
    import logging
    import shlex
    from dataclasses import asdict
    from pathlib import Path

    from .errors import removed_if_left_empty
    from .reproduce import Budget, reproduce
    from .reproduce.cifar10 import HEADLINE_ONLY, PRESETS
    from .reproduce.report import markdown, plot, write_section

    if not Path(args.data).is_dir():
        where = repr(args.data)
        raise FileNotFoundError(f"--data: expected a CIFAR-10 ImageFolder root, got {where} (no folder)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    preset = {**asdict(Budget()), **PRESETS[args.preset]}
    given = {"teacher_epochs": args.teacher_epochs, "student_epochs": args.student_epochs,
             "seeds": tuple(args.seeds) if args.seeds is not None else None, "batch_size": args.batch_size,
             "holdout_per_class": args.holdout_per_class, "num_workers": args.workers,
             "max_train_per_class": args.max_train_per_class, "max_val_per_class": args.max_val_per_class,
             "bench_batch": args.bench_batch, "bench_repeats": args.bench_repeats,
             "sweep": tuple(args.sweep) if args.sweep is not None else None}  # fmt: skip
    budget = Budget(**{**preset, **{k: v for k, v in given.items() if v is not None}})
    only = args.only or (list(HEADLINE_ONLY) if args.preset == "headline" else [])
    if args.plan:
        from .reproduce.plan import plan, plan_table

        print(plan_table(plan(args.data, budget, only=only)))
        return 0
    with removed_if_left_empty(Path(args.out)):
        results = reproduce(args.data, args.out, budget, only=only, jobs=args.jobs)
    command = "routevit " + " ".join(shlex.quote(a) for a in args.command_line)
    section = markdown(results, command)
    print(section)
    if args.plot:
        plot(results, args.plot)
    if args.docs:
        write_section(args.docs, section)
    return 0


def _visualize(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .train.config import factory_overrides
    from .visualize import load_model, read_image, route_picture

    if not Path(args.out).resolve().parent.is_dir():
        raise FileNotFoundError(f"--out {args.out!r}: expected a file in an existing folder")
    image = read_image(args.image)  # before the model: a bad image costs no model load
    loaded = load_model(args.checkpoint, args.model, factory_overrides(args.set), ema=args.ema)
    drawn = route_picture(
        loaded.model, image, keep_ratio=args.keep_ratio, cell=args.cell, mean=loaded.mean, std=loaded.std
    )
    drawn.picture.save(args.out)
    width, height = drawn.picture.size
    print(f"{args.out}: {len(drawn.masks)} prediction layers, {width}x{height} px")
    return 0


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="routevit", description=__doc__, formatter_class=_DefaultsHelp)
    sub = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="on an error, also print the Python traceback")
    positive, non_negative = _number(int, 1, "an integer >= 1"), _number(int, 0, "an integer >= 0")

    bench = sub.add_parser(
        "bench", parents=[common], formatter_class=_DefaultsHelp,
        help="same-run speed comparison against the vanilla models",
        description="Time a big.LITTLE model against the vanilla models it replaces, in one process. "
        + EXIT_STATUS.format("model or flag"),
    )  # fmt: skip
    bench.add_argument("--model", default="blvit_deit_b_t", help="big.LITTLE model to time")
    bench.add_argument("--batch-sizes", type=_int_list(1, "batch sizes"), default="1,32",
                       help="comma-separated batch sizes to time")
    bench.add_argument("--keep-ratio", type=_keep_ratio, default=None, help="default: the model's own")
    bench.add_argument("--warmup", type=non_negative, default=2,
                       help="untimed forward passes of each model first")
    bench.add_argument("--repeats", type=positive, default=7,
                       help="timed runs of each model, alternating; the report gives their median")
    bench.add_argument(
        "--min-seconds", type=_number(float, 0.0, "a number of seconds >= 0"), default=1.0,
        help="each timed run repeats the forward pass until it lasts about this long ",
    )
    bench.add_argument("--bf16", action="store_true", help="time under bfloat16 autocast")
    bench.add_argument(
        "--peers", action="store_true",
        help="one table: the vanilla DeiT, the bLViT model, EViT and ToMe at its MACs, DeiT-S",
    )  # fmt: skip
    bench.add_argument(
        "--dtype", choices=("fp32", "bf16", "int8"), default="fp32",
        help="with --peers: cast weights and inputs (int8: torchao dynamic int8, the int8 extra)",
    )
    bench.add_argument("--sweep", type=_ratios, default=[], help="keep ratios to sweep, e.g. 0.1,0.25,1")
    bench.add_argument("--sweep-batch", type=positive, default=1, help="batch size of the --sweep runs")
    bench.add_argument("--compile", action="store_true", help="torch.compile both models first")
    bench.add_argument("--device", type=_device, default="cpu", help="cpu (default), cuda or cuda:N")
    bench.add_argument("--out", help="also write the Markdown report to this file")
    bench.set_defaults(func=_bench)

    train = sub.add_parser(
        "train", parents=[common], formatter_class=_DefaultsHelp,
        help="train a recipe (one process, or each process of torchrun --nproc_per_node N)",
        description="Train a YAML recipe. Exit status: 0 finished, 128+N stopped by signal N (after "
        "saving a checkpoint), 1 the run failed (e.g. a non-finite loss), 2 bad input (recipe, data, "
        "checkpoint or flag; nothing is written).",
    )  # fmt: skip
    train.add_argument("recipe", help="YAML recipe, e.g. recipes/cifar10/vit_mini.yaml")
    train.add_argument("--data", help="dataset root (data.root)")
    train.add_argument("--output", help="run folder for checkpoints and logs (run.output)")
    train.add_argument("--epochs", type=positive, help="train.epochs")
    train.add_argument("--batch-size", type=positive, help="global batch size (train.batch_size)")
    train.add_argument("--resume", action="store_true", help="continue from the newest checkpoint")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a recipe value, e.g. --set optim.lr=1e-3 (repeatable)")  # fmt: skip
    train.set_defaults(func=_train)

    ev = sub.add_parser(
        "eval", parents=[common], formatter_class=_DefaultsHelp,
        help="evaluate a checkpoint: top-1/top-5, GMACs and images/s (classification), "
        "1-point / 3-point / box mIoU or instance mask AP with detector boxes (task sam)",
        description="Evaluate a checkpoint. A classifier scores every image of the --data folder's "
        "class folders, whose names must be the ones it was trained on. "
        + EXIT_STATUS.format("checkpoint, data or flag"),
    )  # fmt: skip
    ev.add_argument("checkpoint", help="checkpoint directory, a run folder (its best checkpoint), a "
                    "save_pretrained folder, or a weights file with --model")  # fmt: skip
    ev.add_argument("--data", help="classification: a folder of class folders, every image of which is "
                    "scored (default: the recipe's validation split); SAM: the images folder, as --images")
    ev.add_argument("--holdout-per-class", type=positive, metavar="N",
                    help="score only the N lexicographically last files of each class of --data "
                    "(the rule of data.holdout_per_class)")  # fmt: skip
    ev.add_argument("--model", help="routevit classifier of a weights file, e.g. blvit_deit_s_t")
    ev.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="model factory override for --model, e.g. --set num_classes=10")  # fmt: skip
    ev.add_argument("--batch-size", type=positive, help="default: 256 (classification), 1 (SAM)")
    ev.add_argument("--ema", action="store_true", help="evaluate the EMA weights")
    ev.add_argument("--workers", type=non_negative, help="data loader workers (default: the recipe's)")
    ev.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                    help="auto: cuda when available, else cpu")
    ev.add_argument("--keep-ratio", type=_keep_ratio,
                    help="route this share of tokens instead of the trained one (big.LITTLE models)")
    sam = ev.add_argument_group("SAM checkpoints (task: sam)")
    sam.add_argument("--annotations", help="COCO/LVIS instances JSON (default: sam.val_annotations)")
    sam.add_argument("--images", help="folder of its images (default: the recipe's sam.val_images)")
    sam.add_argument("--max-images", type=positive, help="only the first N images by id")
    sam.add_argument("--seed", type=int, help="seed of the point prompts (default: sam.eval_seed)")
    sam.add_argument("--out", help="JSON result file (default: sam_eval_<checkpoint>.json, or "
                     "sam_instances_<checkpoint>.json for --task instances, in the run folder)")  # fmt: skip
    sam.add_argument("--task", choices=("miou", "instances"), default="miou",
                     help="miou: 1 point / 3 points / box mIoU on the annotations' masks (default); "
                     "instances: COCO mask AP of the masks that --detections' boxes prompt")  # fmt: skip
    sam.add_argument("--bf16", action="store_true", help="bfloat16 autocast (CUDA only; ignored on CPU)")
    inst = ev.add_argument_group("instance AP (--task instances)")
    inst.add_argument("--detections", help="detector boxes: COCO results JSON, a list of "
                      "{image_id, category_id, bbox [x, y, w, h], score}")  # fmt: skip
    inst.add_argument("--score-threshold", type=float, help="keep detections with score >= this (default 0)")
    inst.add_argument("--max-detections", type=positive, help="at most N per image, by score (default 100)")
    inst.add_argument("--multimask", action="store_true",
                      help="best of SAM's 3 masks by predicted IoU instead of its single box output")
    inst.add_argument("--box-chunk", type=positive, help="boxes per mask decoder call (default 64)")
    ev.set_defaults(func=_eval)

    vis = sub.add_parser(
        "visualize", parents=[common], formatter_class=_DefaultsHelp,
        help="draw which patches the P path receives at each prediction layer (PNG)",
        description="Run a big.LITTLE model on one image and draw, per prediction layer, the patches "
        "routed to the performance path (the paper's Figure 3). Classifiers see the whole image, its "
        "longest side resized to their img_size and the rest padded (drawn hatched); SAM encoders see "
        "SAM's longest-side resize and padding, with the attention windows drawn and the padding "
        "hatched. " + EXIT_STATUS.format("checkpoint, model, image or flag"),
    )  # fmt: skip
    vis.add_argument("checkpoint", help="a `routevit train` run folder or checkpoint directory, a "
                     "save_pretrained folder, or a weights file (.safetensors, .pth, SAM checkpoint) "
                     "with --model")  # fmt: skip
    vis.add_argument("image", help="any image file Pillow reads")
    vis.add_argument("--out", required=True, help="PNG file to write")
    vis.add_argument("--model", help="routevit model of a weights file, e.g. blvit_deit_s_t, blvit_sam_b_t")
    vis.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="model factory override for --model, e.g. --set num_classes=10")  # fmt: skip
    vis.add_argument("--keep-ratio", type=_keep_ratio,
                     help="route this share of tokens (default: the model's)")
    vis.add_argument("--cell", type=_number(int, 2, "an integer >= 2 (pixels per patch)"),
                     help="pixels per patch in the picture (default: by grid size)")
    vis.add_argument("--ema", action="store_true", help="draw a checkpoint's EMA weights")
    vis.set_defaults(func=_visualize)

    rep = sub.add_parser("reproduce", parents=[common], formatter_class=_DefaultsHelp,
                         help="the paper's Table 1 and Table 3 in miniature (CIFAR-10)",
                         description="Train, evaluate and time every row of the CIFAR-10 miniature of "
                         "the paper's tables; a rerun continues where a killed one stopped. "
                         + EXIT_STATUS.format("data or flag"))  # fmt: skip
    rep.add_argument("target", choices=("cifar10",), help="what to reproduce")
    rep.add_argument("--data", required=True, help="CIFAR-10 ImageFolder root (class folders of images)")
    rep.add_argument("--out", default="runs/cifar10_mini", help="run folders and results.json")
    rep.add_argument("--docs", help="Markdown file whose reproduction section is (re)written")
    rep.add_argument("--plot", help="PNG of accuracy against measured images/s")
    rep.add_argument("--preset", choices=("full", "headline", "quick"), default="full",
                     help="full: every row and table, 3 seeds; headline: teacher, bLViT, EViT and ToMe, "
                          "one seed; quick: every code path on a subset in minutes (not a result). "
                          "The options below override the preset's values")
    rep.add_argument("--teacher-epochs", type=positive, help="epochs of the teacher and the narrow ViT (30)")
    rep.add_argument("--student-epochs", type=positive,
                     help="epochs of the rows initialised from the teacher (12)")
    rep.add_argument("--seeds", type=_int_list(0, "seeds"), help="seeds of the seeded rows (0,1,2)")
    rep.add_argument("--batch-size", type=positive, help="training and evaluation batch size (256)")
    rep.add_argument("--holdout-per-class", type=positive,
                     help="validation: the N lexicographically last files of each class (500)")
    rep.add_argument("--workers", type=non_negative, help="data loader workers per run (0)")
    rep.add_argument("--max-train-per-class", type=positive, help="train on a subset (smoke runs)")
    rep.add_argument("--max-val-per-class", type=positive, help="evaluate on a subset (smoke runs)")
    rep.add_argument("--bench-batch", type=positive, help="batch size of the speed measurements (256)")
    rep.add_argument("--bench-repeats", type=positive, help="timed pairs per speed measurement (7)")
    rep.add_argument("--sweep", type=_ratios, help="keep ratios of the inference-time dial of the bLViT-mini")
    rep.add_argument("--only", nargs="*", default=[], help="row keys to run (the teacher always runs)")
    rep.add_argument("--plan", action="store_true",
                     help="train nothing: time a few steps of every row on this machine and print how long "
                          "each would train (writes nothing under --out)")
    rep.add_argument("--jobs", type=positive, default=1,
                     help="rows trained at a time after the teacher, each in its own process with "
                          "1/N of the intra-op threads")
    rep.set_defaults(func=_reproduce)
    parser.commands = dict(sub.choices)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``routevit ...``: the exit status (see the module docstring); an error is one line."""
    command_line = list(sys.argv[1:] if argv is None else argv)
    parser = _build_parser()
    args, unknown = parser.parse_known_args(command_line)
    if unknown:  # said by the subcommand, whose --help lists its flags
        parser.commands[args.command].error(f"unrecognized arguments: {' '.join(unknown)}")
    args.command_line = command_line
    try:
        with signals_stop():
            return args.func(args)
    except SystemExit:
        raise
    except BaseException as err:  # every error, Ctrl-C and signals end as one line and a status
        return report(args.command, err, args.debug)


if __name__ == "__main__":
    sys.exit(main())
