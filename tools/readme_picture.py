"""Redraws README.md's picture (docs/demo_answer_layers.png): the demo's answer (the default
model, greedy, the demo's question) as four layers' head-mean maps in a 2 x 2 grid, sized so
that its text reads at the width GitHub shows it (about 880 px). Run from the repository root:
  PYTHONPATH=python .venv/bin/python tools/readme_picture.py"""
import matplotlib

matplotlib.use("Agg")

import attnscope  # noqa: E402
from attnscope.cli import DEMO_QUESTION  # noqa: E402

LAYERS = [0, 9, 18, 29]


def main():
    model = attnscope.load(device="cpu", progress=False)
    answer = model.generate(DEMO_QUESTION, chat=True, max_new_tokens=96, progress=False)
    fig = attnscope.visualize_attention_layers(answer, LAYERS, ncols=2, panel=3.6, paper=False, max_labels=14)
    fig.savefig("docs/demo_answer_layers.png", dpi=110)
    print(f"{answer.input_ids.shape[1]} tokens; wrote docs/demo_answer_layers.png at {fig.get_size_inches() * 110} px")


if __name__ == "__main__":
    main()
