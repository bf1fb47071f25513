import attnscope

model = attnscope.load()                 # SmolLM2-135M-Instruct, offline; or load("ckpt/" | "x.gguf" | "x.pt")
trace = model.run("The cat sat on the mat because it was warm.")   # no capture spec: figures ask
attnscope.visualize_attention(trace, [(0, 0), (14, 0), (29, 8)]).savefig("heads.png")
attnscope.visualize_attention_patterns(trace, [(14, 0)], "max").savefig("received.png")
attnscope.visualize_attention_layers(trace, [0, 1, 2, 9, 14, 18, 23, 29]).savefig("layers.pdf")

answer = model.generate("Is 3599 prime? Think step by step.", chat=True, max_new_tokens=200)
print(answer.response)                                     # where it hesitated: yellow marks
attnscope.visualize_attention_layers(answer, [0, 9, 14, 29]).savefig("answer_layers.png")
