"""transformers' DeepSeek-V2 on the same random-weight shape as `dsv2 bench e2e` — the baseline
of issue #8's speed-up. Run on a machine with PyTorch, transformers and a GPU:

    python3 scripts/bench/hf_e2e.py CONFIG_JSON_FILE LAYERS PREFILL(1024,4096) BATCH(1,8,64) CONTEXT STEPS OUT.json

Random weights in bf16 made on the GPU (torch's default init; speed does not depend on the
values), eager attention, the model's own KV cache. Prefill: one forward over the prompt;
decode: `STEPS` single-token forwards with past_key_values after a CONTEXT-token prompt, batch b.
Timings with torch.cuda.synchronize() around wall-clock, like the dsv2 side (which times whole
steps including the token's trip to the host). Writes {rows: [{phase, size, ms, tokensPerS}]}
or {error} when the model cannot be built here.
"""
import json
import sys
import time


def main() -> int:
    cfg_file, layers, prefill, batch, context, steps, out = sys.argv[1:8]
    result = {"rows": []}
    try:
        import torch
        import transformers
        from transformers import AutoConfig, AutoModelForCausalLM

        raw = json.load(open(cfg_file))
        raw["num_hidden_layers"] = int(layers)
        raw.pop("architectures", None)
        # YaRN changes the rope tables, not the work: dropped so a transformers version that
        # validates rope_scaling differently still builds the model.
        raw.pop("rope_scaling", None)
        model_type = raw.pop("model_type", "deepseek_v2")
        config = AutoConfig.for_model(model_type, **raw)
        config._attn_implementation = "eager"
        torch.manual_seed(0)
        torch.set_default_dtype(torch.bfloat16)
        with torch.device("cuda"):
            model = AutoModelForCausalLM.from_config(config, torch_dtype=torch.bfloat16)
        model.eval()
        result["transformers"] = transformers.__version__
        result["torch"] = torch.__version__
        result["device"] = torch.cuda.get_device_name()
        vocab = raw["vocab_size"]

        def tokens(b, n, salt):
            return (torch.arange(b * n, device="cuda").reshape(b, n) * 7919 + salt * 104729 + 1) % vocab

        with torch.inference_mode():
            for n in [int(x) for x in prefill.split(",")]:
                ids = tokens(1, n, 0)
                model(ids, use_cache=False)  # warm-up
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                for _ in range(3):
                    model(ids, use_cache=False)
                torch.cuda.synchronize()
                ms = (time.perf_counter() - t0) / 3 * 1e3
                result["rows"].append({"phase": "prefill", "size": n, "ms": ms, "tokensPerS": n / ms * 1e3})
            for b in [int(x) for x in batch.split(",")]:
                ids = tokens(b, int(context), 1)
                out_ = model(ids, use_cache=True)
                past = out_.past_key_values
                nxt = out_.logits[:, -1:].argmax(-1)
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                for _ in range(int(steps)):
                    out_ = model(nxt, past_key_values=past, use_cache=True)
                    past = out_.past_key_values
                    nxt = out_.logits[:, -1:].argmax(-1)
                    nxt.cpu()  # the token reaches the host each step, as in dsv2
                torch.cuda.synchronize()
                ms = (time.perf_counter() - t0) / int(steps) * 1e3
                result["rows"].append({"phase": "decode", "size": b, "ms": ms, "tokensPerS": b / ms * 1e3})
                del past, out_
                torch.cuda.empty_cache()
    except Exception as e:  # report, never crash the check
        result["error"] = f"{type(e).__name__}: {e}"
    with open(out, "w") as f:
        json.dump(result, f, indent=2)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
