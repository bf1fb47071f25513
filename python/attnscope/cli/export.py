"""`attnscope export`: a Hugging Face folder or a GGUF file -> TorchScript archive with capture ops."""
import os


def export(args):
    import attnscope
    src = args.hf
    if os.path.isfile(src) and src.endswith(".gguf"):
        if args.dtype != "fp32":  # the GGUF loader dequantizes into fp32: saying so, not writing fp32 silently
            raise ValueError(f"--dtype {args.dtype}: a GGUF file is exported in fp32 (its weights are dequantized "
                             "into attnscope's Llama-family module); export a Hugging Face folder for bf16 or fp16")
        from attnscope.models import export as export_module, load_gguf
        model, tok = load_gguf(src, attention=args.attention, progress=True)
        export_module(model, args.out, tokenizer=tok, source=os.path.basename(src))
        print(f"wrote {args.out} (attnscope's Llama-family module, {args.attention}) from {src}")
        return
    if not os.path.isdir(src):
        raise FileNotFoundError(f"--hf {src!r}: expected a Hugging Face checkpoint folder or a .gguf file")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    device = "cuda" if args.device == "auto" and torch.cuda.is_available() else (
        "cpu" if args.device == "auto" else args.device)
    model = AutoModelForCausalLM.from_pretrained(src, dtype=dtype).to(device)
    tok = AutoTokenizer.from_pretrained(src) if os.path.isfile(os.path.join(src, "tokenizer.json")) else None
    r = attnscope.export_hf(model, tok, args.out, attention=args.attention, verify=not args.no_verify)
    check = ("" if r["max_abs_diff"] is None else
             f"; checked on {len(r['checked'])} kinds of input (other ids, lengths, padding) against eager attentions "
             f"of each row alone: max diff {r['max_abs_diff']:.2g}")
    print(f"wrote {args.out} (route: {r['route']}, {args.attention}, {args.dtype}, traced on {device}{check})")
    if r["reason"]:
        print(f"fallback because: {r['reason']}")
