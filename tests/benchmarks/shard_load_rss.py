"""Host peak RSS of loading a bf16 checkpoint onto cuda:0: transformers' from_pretrained vs the shard loader (issue 18).

On the device machine: PYTHONPATH=$PWD python3 tests/benchmarks/shard_load_rss.py make 4096 11008 1GB [LAYERS VOCAB
HEADS KV_HEADS] (Qwen2.5-32B's size: make 5120 27648 5GB 64 152064 40 8 with FOLDER=/dev/shm/m32), then ... hf,
... shards (one process each: ru_maxrss is per process) and ... compare (both loads, tensor by tensor).
"""
import json, os, resource, sys, time
sys.path.insert(0, os.getcwd())
sys.path.insert(0, os.path.join(os.getcwd(), "tests"))
folder = os.environ.get("FOLDER", "/tmp/gpu_model")   # a 32B-size checkpoint: FOLDER=/dev/shm/m32 (tmpfs)
if sys.argv[1] == "make":
    import torch
    from tiny import make_bpe_tokenizer
    from transformers import LlamaConfig, LlamaForCausalLM
    tok = make_bpe_tokenizer()
    layers, vocab, heads, kv = (int(x) for x in (sys.argv[5:9] + ["24", "32000", "16", "16"][len(sys.argv[5:9]):]))
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=int(sys.argv[2]), intermediate_size=int(sys.argv[3]),
                      num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv,
                      tie_word_embeddings=False, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    torch.set_default_dtype(torch.bfloat16)           # built in bf16 on the GPU: a 32B in fp32 would not fit
    with torch.device("cuda"):
        m = LlamaForCausalLM(cfg)
    m.save_pretrained(folder, max_shard_size=sys.argv[4]); tok.save_pretrained(folder)
    sizes = sorted(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder) if f.endswith(".safetensors"))
    print(json.dumps({"params": sum(p.numel() for p in m.parameters()), "shards": len(sizes), "largest": sizes[-1], "total": sum(sizes)}))
    sys.exit()
import torch
from ftstudio.engine.models import quiet_transformers
quiet_transformers()
torch.zeros(1, device="cuda")
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
t = time.time()
from ftstudio.core.config import ModelConfig
from ftstudio.engine.models import load_model
from transformers import AutoModelForCausalLM
def hf():
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16, weights_only=True, local_files_only=True, device_map={"": "cuda:0"})
def ours():
    lm = load_model(ModelConfig(source=folder), task="causal-lm", dtype="bf16", device="cuda:0")
    print(lm.load_note); return lm.model
if sys.argv[1] == "compare":
    a, b = hf().state_dict(), ours().state_dict()
    bad = [k for k in a if a[k].dtype != b[k].dtype or not torch.equal(a[k], b[k])]
    print(json.dumps({"keys": len(a), "same_keys": a.keys() == b.keys(), "differ": bad[:5]}))
    sys.exit()
model = hf() if sys.argv[1] == "hf" else ours()
torch.cuda.synchronize()
took = time.time() - t
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"how": sys.argv[1], "s": round(took, 1), "baseline_rss_GB": round(base / 1e9, 2), "peak_rss_GB": round(peak / 1e9, 2),
                  "peak_minus_baseline_GB": round((peak - base) / 1e9, 2), "gpu_GB": round(torch.cuda.max_memory_allocated() / 1e9, 2)}))
