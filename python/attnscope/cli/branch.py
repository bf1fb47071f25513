"""`attnscope branch`: the model answers, then the branches at its turning points — which
hesitations change the final answer."""
import os

from ..files import output_folder, write_atomic
from .common import _check_out_dir, save_figure


def branch(args):
    import attnscope
    _check_out_dir(args.out)
    for name in ("k", "alternatives", "max_new_tokens", "branch_tokens"):
        v = getattr(args, name)
        if v is not None and v < 1:
            raise ValueError(f"--{name.replace('_', '-')} {v} must be >= 1")
    model = attnscope.load(args.model, device=args.device)
    answer = model.generate(args.prompt, chat=args.chat, system=args.system, max_new_tokens=args.max_new_tokens,
                            temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed,
                            progress=not args.no_progress)
    print(f"{answer.response}\n")
    tp = attnscope.turning_points(answer, k=args.k, alternatives=args.alternatives,
                                  max_new_tokens=args.branch_tokens, answer_of=args.answer_regex,
                                  progress=not args.no_progress)
    table = str(tp)
    with output_folder(args.out) as stage:  # all five files, or none: the old ones stay whole
        write_atomic(os.path.join(stage, "turning_points.md"), table + "\n")
        write_atomic(os.path.join(stage, "response.txt"), answer.response)
        save_figure(attnscope.visualize_turning_points(tp), os.path.join(stage, "turning_points.png"), args.dpi)
        save_figure(attnscope.visualize_entropy(answer, show_prob=True), os.path.join(stage, "entropy.png"), args.dpi)
        answer.save(os.path.join(stage, "trace.safetensors"))
    changed = [r for r in tp.rows if r["changed"]]
    print(f"final answer: {tp.rows[0]['original_answer']!r}; {len(changed)} of {len(tp.rows)} branches change it")
    print(table)
    print("wrote turning_points.md, turning_points.png, entropy.png, response.txt, trace.safetensors to " + args.out)
