#!/usr/bin/env python3
"""dsv2 against llama.cpp on one checkpoint, alternating runs, weights in 16 and in 8 bits.

The harness is ../shared/peers/llama-cpp (its README: node-llama-cpp 3.21.1 in NLC_DIR, a
checkpoint converted to GGUF); this script adds the 8-bit row the issue asks for and keeps its
measurement rules (both runtimes loaded, asked in turn A B, B A, ...; bandwidth measured
before, between and after):
  bf16  dsv2 (bf16 weights, bf16 latent cache)  vs  llama.cpp BF16 GGUF
  int8  dsv2 (weights: 'int8', bf16 cache)      vs  llama.cpp Q8_0 GGUF (scripts/bench/gguf_q8.py)
  fp8   dsv2 (weights: 'fp8', bf16 cache)       vs  llama.cpp Q8_0 GGUF
Decode roofline: the weight bytes one token reads at batch 1 (2 bytes per parameter in bf16;
1 + 4/128² in 8 bits, kv_b and the router staying bf16) plus the latent cache, over the read
bandwidth (bw.c).

    python3 scripts/bench/llamacpp.py --ckpt DIR --gguf-bf16 F.gguf --gguf-q8 F.gguf \\
        [--phases bf16,int8] [--reps 3] [--prompt-len 512] [--decode 64] [--batch8] --out bench/results/X.json
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PEER = os.environ.get("PEER_DIR", os.path.join(ROOT, "..", "shared", "peers", "llama-cpp"))
sys.path.insert(0, PEER)
from bench import Runner, bandwidth, decode_bytes, log, stats  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--gguf-bf16", required=True)
    ap.add_argument("--gguf-q8", default=None)
    ap.add_argument("--nlc-dir", default=os.environ.get("NLC_DIR"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--prompt-len", type=int, default=512)
    ap.add_argument("--decode", type=int, default=64)
    ap.add_argument("--batch8", action="store_true")
    ap.add_argument("--b8-prompt-len", type=int, default=128)
    ap.add_argument("--b8-decode", type=int, default=32)
    ap.add_argument("--phases", default="bf16,int8")
    # llama.cpp's worker threads keep a core busy for seconds after it answers: dsv2 measured
    # right after it ran at 26 tok/s, 10 s later at 34 (same process, same request). A pause
    # before every measurement lets each runtime start on an idle machine.
    ap.add_argument("--gap", type=float, default=10.0, help="seconds of idle before each measurement")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    if not a.nlc_dir:
        sys.exit("need --nlc-dir / NLC_DIR")
    work = os.environ.get("WORK", "/tmp/dsv2-vs-llamacpp")
    os.makedirs(work, exist_ok=True)
    bw_bin = os.path.join(work, "bw")
    subprocess.run(["gcc", "-O3", "-march=native", "-pthread", os.path.join(PEER, "bw.c"), "-o", bw_bin], check=True)
    with open(os.path.join(a.ckpt, "config.json")) as f:
        cfg = json.load(f)
    maxb = 8 if a.batch8 else 1
    common = ["--prompt-len", str(a.prompt_len), "--decode", str(a.decode), "--threads", str(a.threads)]
    dsv2 = ["node", os.path.join(ROOT, "scripts", "bench", "dsv2_weights.js"), "serve", "--model", a.ckpt, "--kv-cache", "bf16",
            "--max-batch", str(maxb)] + common
    nlc = ["node", os.path.join(PEER, "nlc_run.mjs"), "serve"]
    phases = {
        "bf16": ("bf16", "dsv2 bf16 weights", nlc + ["--model", a.gguf_bf16] + common, "llama.cpp BF16"),
        "int8": ("int8", "dsv2 int8 weights", nlc + ["--model", a.gguf_q8 or ""] + common, "llama.cpp Q8_0"),
        "fp8": ("fp8", "dsv2 fp8 weights", nlc + ["--model", a.gguf_q8 or ""] + common, "llama.cpp Q8_0"),
    }
    base_env = dict(os.environ, NLC_DIR=a.nlc_dir, DSV2_DIR=ROOT, DSV2_NUM_THREADS=str(a.threads))
    res = {"config": {k: cfg.get(k) for k in ("hidden_size", "num_hidden_layers", "n_routed_experts", "num_experts_per_tok",
                                              "moe_intermediate_size", "n_shared_experts", "kv_lora_rank", "vocab_size",
                                              "intermediate_size", "first_k_dense_replace")},
           "threads": a.threads, "promptLen": a.prompt_len, "decode": a.decode, "gapS": a.gap, "runs": [], "bandwidth": []}
    res["bandwidth"].append(bandwidth(bw_bin, a.threads))
    log("bandwidth", res["bandwidth"][-1])
    for ph in a.phases.split(","):
        weights, dname, lcmd, lname = phases[ph]
        runners = [Runner(dname, dsv2, dict(base_env, DSV2_WEIGHTS=weights)), Runner(lname, lcmd, base_env)]
        reqs = [dict(promptLen=a.prompt_len, decode=a.decode, batch=1)]
        if a.batch8:
            reqs.append(dict(promptLen=a.b8_prompt_len, decode=a.b8_decode, batch=8))
        for req in reqs:
            for rep in range(a.reps):
                for r in (runners if rep % 2 == 0 else runners[::-1]):
                    time.sleep(a.gap)
                    t = time.time()
                    out = r.ask(dict(req, seed=1 + rep * 17))
                    out.update(label=r.name, phase=ph, rep=rep)
                    res["runs"].append(out)
                    log(f"{r.name:20s} B={req['batch']} rep {rep}: prefill {out['prefillTokPerS']:.2f} tok/s, decode {out['decodeTokPerS']:.2f} tok/s "
                        f"(load1 {out['loadavg1']:.1f}, {time.time() - t:.0f} s)")
        for r in runners:
            r.close()
        res["bandwidth"].append(bandwidth(bw_bin, a.threads))
        log("bandwidth", res["bandwidth"][-1])

    read_bw = statistics.median(b["read_GBps"] for b in res["bandwidth"])
    ctx = a.prompt_len + a.decode // 2
    w16, cache = decode_bytes(cfg, ctx, 2 * (cfg["kv_lora_rank"] + cfg["qk_rope_head_dim"]))
    # 8-bit: kv_b (absorbed W_UK / W_UV) and the router stay 2 bytes per parameter.
    L, h = cfg["num_hidden_layers"], cfg["num_attention_heads"]
    kvb = L * h * (cfg["qk_nope_head_dim"] + cfg["v_head_dim"]) * cfg["kv_lora_rank"]
    router = (L - cfg.get("first_k_dense_replace", 0)) * (cfg.get("n_routed_experts") or 0) * cfg["hidden_size"]
    params = w16 // 2
    w8 = (params - kvb - router) * (1 + 4 / 128 ** 2) + 2 * (kvb + router)
    rows = []
    for lab in dict.fromkeys(r["label"] for r in res["runs"]):
        for B in sorted({r["batch"] for r in res["runs"]}):
            rs = [r for r in res["runs"] if r["label"] == lab and r["batch"] == B]
            for meas, key in (("prefill", "prefillTokPerS"), ("decode", "decodeTokPerS")):
                st = stats([r[key] for r in rs])
                if not st:
                    continue
                row = {"runtime": lab, "batch": B, "measure": meas, **st}
                if meas == "decode" and B == 1:
                    by = (w8 if ("int8" in lab or "fp8" in lab or "Q8" in lab) else w16) + cache
                    row["roofline_tok_s"] = read_bw * 1e9 / by
                    row["pct_roofline"] = 100 * st["median"] / row["roofline_tok_s"]
                rows.append(row)
    ratios = []
    for ph in a.phases.split(","):
        A, Bn = phases[ph][1], phases[ph][3]
        for B in (1, 8):
            for meas in ("prefill", "decode"):
                ra = next((r for r in rows if r["runtime"] == A and r["batch"] == B and r["measure"] == meas), None)
                rb = next((r for r in rows if r["runtime"] == Bn and r["batch"] == B and r["measure"] == meas), None)
                if ra and rb:
                    ratios.append({"a": A, "b": Bn, "batch": B, "measure": meas, "ratio_of_medians": ra["median"] / rb["median"]})
    res["summary"] = {"read_GBps_median": read_bw, "decode_weight_bytes_bf16": w16, "decode_weight_bytes_8bit": w8,
                      "decode_cache_bytes": cache, "rows": rows, "ratios": ratios}
    if a.out:
        with open(a.out, "w") as f:
            json.dump(res, f, indent=1)
    print(f"\n{cfg['num_hidden_layers']} layers, {a.threads} threads, prompt {a.prompt_len}, decode {a.decode}; read bandwidth {read_bw:.1f} GB/s; "
          f"weights per token {w16 / 1e9:.3f} GB (bf16) / {w8 / 1e9:.3f} GB (8-bit)")
    print(f"{'runtime':22s} {'B':>2} {'measure':8s} {'min':>8} {'median':>8} {'max':>8} {'% roofline':>10}")
    for r in rows:
        pr = f"{r['pct_roofline']:.0f}%" if "pct_roofline" in r else ""
        print(f"{r['runtime']:22s} {r['batch']:>2} {r['measure']:8s} {r['min']:8.2f} {r['median']:8.2f} {r['max']:8.2f} {pr:>10}")
    for x in ratios:
        print(f"{x['a']} / {x['b']}  B={x['batch']} {x['measure']}: {x['ratio_of_medians']:.2f}x")


if __name__ == "__main__":
    main()
