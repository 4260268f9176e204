"""Run by tests/test_data_scale.py in its own process: its own local Ray with a small object store."""
import json
import resource
import sys
import time
from pathlib import Path
import numpy as np
import ray

def main(home: str, mib: int, store_mib: int):
    from raygen.config import load_config
    from raygen.data.pipeline import prepare_data
    home = Path(home)
    src = home / "corpus"
    src.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    letters = list("abcdefghijklmnopqrstuvwxyz")
    # The work is per document (exact dedup's groups) and per token (packing), the memory per byte: so few,
    # long documents (3,000 words, ~18 KB; ~4,800 of them, so exact dedup still shuffles over two partitions)
    # and a tokenizer holding every word (one token per word, 4x fewer than a 512 vocabulary gives).
    words = np.array(["".join(rng.choice(letters, size=rng.integers(2, 9))) for _ in range(1000)])
    per_file = 200
    written, i = 0, 0
    while written < mib * 2**20:
        with open(src / f"part-{i:03d}.jsonl", "w") as f:
            for _ in range(per_file):
                text = " ".join(words[rng.integers(0, len(words), size=3000)])
                f.write(json.dumps({"text": text}) + "\n")
                written += len(text) + 12
        i += 1
    from raygen.data.features import train_tokenizer

    train_tokenizer([" ".join(words[rng.integers(0, len(words), size=300)]) for _ in range(300)], 4096,
                    str(home / "tok"))
    cfg = load_config(None, [f"features.tokenizer={home / 'tok'}", f"data.output_dir={home}/data", f"data.paths=[{src}]", "data.builtin=false",
                             "data.stages=[normalize,exact_dedup]", "data.labelers=[]", "features.vocab_size=4096",
                             "features.block_size=256", "features.pack_batch_docs=256"])
    ray.init(address="local", num_cpus=2, object_store_memory=store_mib * 2**20, include_dashboard=False)
    # Warm-up on a small corpus: imports and Ray Data's machinery count once, so the big run's peak above
    # this one is what the corpus itself costs the driver.
    small = home / "small"
    small.mkdir(exist_ok=True)
    (small / "a.jsonl").write_text("\n".join((src / "part-000.jsonl").read_text().split("\n")[:50]) + "\n")
    prepare_data(load_config(None, [f"features.tokenizer={home / 'tok'}", f"data.output_dir={home}/warm",
                                    f"data.paths=[{small}]", "data.builtin=false", "data.stages=[normalize]",
                                    "data.labelers=[]", "features.block_size=16", "features.val_fraction=0.5"]))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    t = time.time()
    st = prepare_data(cfg)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    ray.shutdown()
    print(json.dumps({"corpus_bytes": written, "docs": st.num_documents, "collected": st.num_collected,
                      "driver_growth": peak - before, "driver_peak": peak, "seconds": time.time() - t}))

if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
