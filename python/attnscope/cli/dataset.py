"""`attnscope dataset`: attention statistics over many texts, data-parallel under torchrun."""
import os
import sys

from ..files import output_folder, write_atomic
from .common import _layer_picks, save_figure


def _distributed():
    """Joins the torch.distributed group when launched by torchrun (WORLD_SIZE > 1)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    import torch
    import torch.distributed as dist
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return True


def _launch(nproc, argv):
    """Runs `python -m attnscope <argv>` in `nproc` processes with torchrun's engine
    (torch.distributed.elastic, standalone rendezvous on a free local port)."""
    import uuid

    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch
    cfg = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=str(uuid.uuid4()),
                       rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0,
                       start_method="spawn")
    try:
        elastic_launch(cfg, entrypoint=sys.executable)("-m", "attnscope", *argv)
    except ChildFailedError as e:
        raise RuntimeError(f"a worker failed ({e.get_first_failure()[1].message})") from None


def dataset(args):
    if args.nproc > 1 and "WORLD_SIZE" not in os.environ:
        argv, skip = [], False
        for a in args.argv:  # the workers get the same command without --nproc
            if skip or a.startswith("--nproc="):
                skip = False
            elif a == "--nproc":
                skip = True
            else:
                argv.append(a)
        return _launch(args.nproc, argv)
    dist = _distributed()
    if dist:
        import torch.distributed as tdist
        rank = tdist.get_rank()
    else:
        rank = 0
    device = args.device
    if dist and device == "auto":
        import torch
        device = f"cuda:{rank % torch.cuda.device_count()}" if torch.cuda.is_available() else "cpu"
    try:
        _dataset(args, device, rank, dist)
    finally:
        if dist:
            tdist.destroy_process_group()


def _dataset(args, device, rank, dist):
    import attnscope
    model = attnscope.load(args.model, device=device)
    texts = attnscope.read_texts(args.input)
    capture = {"layer_maps": True, "received": True, "attn_entropy": True, "row_stats": True, "head_maps": args.head_maps}
    d = attnscope.aggregate_dataset(
        model, texts, length=None if args.length == 0 else args.length,
        num=None if args.num == 0 else args.num, capture=capture, batch_size=args.batch_size,
        epsilon=args.epsilon, skip_short=args.skip_short, bos=args.bos,
        progress=not args.no_progress)
    if rank != 0:
        return
    with output_folder(args.out) as stage:  # every output, or none: the old ones stay whole
        summary, figs = _write_dataset_outputs(d, stage, args.dpi)
    print(f"{d.n_sequences} sequences of {d.length} tokens, {d.n_layers} layers x {d.n_heads} heads"
          + (f", {summary['world_size']} processes" if dist else ""))
    print(f"Sink1 (eps={d.epsilon:g}): {d.sink1:.1%} of heads; per layer: "
          + " ".join(f"{x:.0%}" for x in summary["sink1_per_layer"]))
    print("wrote dataset.safetensors, summary.json, " + ", ".join(sorted(figs)) + " to " + args.out)


def _write_dataset_outputs(d, out, dpi):
    import json

    import attnscope
    d.save(os.path.join(out, "dataset.safetensors"))
    summary = d.summary()
    atlas = attnscope.head_atlas(d)
    summary["top_heads"] = {s: [list(p) for p in atlas.top(s, 5)] for s in ("induction", "prev", "duplicate", "self")}
    write_atomic(os.path.join(out, "summary.json"), json.dumps(summary, indent=1))
    layers = _layer_picks(d.n_layers)
    figs = {
        "attention_layers.png": attnscope.visualize_attention_layers(d, layers),
        "head_summary_sink.png": attnscope.visualize_head_summary(d, "sink").figure,
        "head_summary_entropy.png": attnscope.visualize_head_summary(d, "entropy").figure,
        "head_atlas.png": attnscope.visualize_head_atlas(atlas),
        "attention_patterns.png": attnscope.visualize_attention_patterns(
            d, [(l, 0) for l in layers[:4]], "mean"),
    }
    for name, fig in figs.items():
        save_figure(fig, os.path.join(out, name), dpi)
    return summary, figs
