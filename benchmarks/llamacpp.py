"""llama.cpp's OpenAI-compatible server as a benchmark peer: built once, models converted to GGUF, started.

    python benchmarks/llamacpp.py build                       # once: about 8 minutes on 2 cores
    python benchmarks/llamacpp.py convert MODEL_DIR OUT.gguf --outtype f32    # f32 | f16 | bf16
    python benchmarks/llamacpp.py serve OUT.gguf --parallel 64 --port 8080   # until Ctrl-C

Source: llama-cpp-python's source distribution (PyPI, pinned below) carries llama.cpp's whole tree; only
its `llama-server` target is built, with CMake (`GGML_NATIVE=ON`: this CPU's instruction set; no HTTPS,
no prebuilt web UI: nothing is downloaded at build time). Everything lives under
$RAYGEN_CACHE/bench/ (default ~/.cache/raygen/bench/): the sdist, the build, converted models.

Conversion runs llama.cpp's own `convert_hf_to_gguf.py` (from the same tree) with two adjustments a
raygen or random-init model needs: GPT-2 configs written by transformers 5 carry `n_positions` but the
converter reads `n_ctx`, so a copy of config.json gets both; and the converter identifies a BPE
pre-tokenizer by hashing its output on a test string, which raygen's own BPE tokenizer does not match, so
it is declared GPT-2's (byte-level BPE, the same family); a Llama-shaped model with that tokenizer goes
straight to the BPE vocabulary (the converter would try sentencepiece first). The benchmark sends token-id prompts to every
server, so no tokenizer difference can change the work.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
import urllib.request
from pathlib import Path

VERSION = "0.3.36"  # llama-cpp-python; its vendor/llama.cpp is the llama.cpp that is built
CACHE = Path(os.environ.get("RAYGEN_CACHE") or Path.home() / ".cache" / "raygen") / "bench"


def source() -> Path:
    """llama.cpp's tree from llama-cpp-python's sdist, downloaded and unpacked once."""
    root = CACHE / f"llama-cpp-python-{VERSION}"
    tree = root / "vendor" / "llama.cpp"
    if (tree / "CMakeLists.txt").exists():
        return tree
    dl = CACHE / "dl"
    dl.mkdir(parents=True, exist_ok=True)
    sdist = dl / f"llama_cpp_python-{VERSION}.tar.gz"
    if not sdist.exists():
        print(f"downloading llama-cpp-python {VERSION} (source, ~75 MB)", flush=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                        "-d", str(dl), f"llama-cpp-python=={VERSION}"], check=True)
    tmp = CACHE / f".unpack-{os.getpid()}"
    with tarfile.open(sdist) as tf:
        tf.extractall(tmp, filter="tar")
    (tmp / f"llama_cpp_python-{VERSION}").rename(root)
    tmp.rmdir()
    return tree


def server_binary() -> Path:
    return CACHE / f"llama.cpp-{VERSION}-build" / "bin" / "llama-server"


def build() -> Path:
    """Build llama-server once (CMake + Ninja when present); prints CMake's progress lines as it goes."""
    binary = server_binary()
    if binary.exists():
        return binary
    for tool in ("cmake", "c++"):
        if not shutil.which(tool):
            raise SystemExit(f"building llama.cpp needs {tool}: apt-get install cmake g++ (or pip install cmake)")
    tree, out = source(), binary.parent.parent
    gen = ["-G", "Ninja"] if shutil.which("ninja") else []
    t0 = time.time()
    subprocess.run(["cmake", "-S", str(tree), "-B", str(out), *gen, "-DCMAKE_BUILD_TYPE=Release",
                    "-DGGML_NATIVE=ON", "-DLLAMA_CURL=OFF", "-DLLAMA_OPENSSL=OFF", "-DLLAMA_USE_PREBUILT_UI=OFF",
                    "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF", "-DBUILD_SHARED_LIBS=OFF"],
                   check=True, stdout=subprocess.DEVNULL)
    proc = subprocess.Popen(["cmake", "--build", str(out), "--target", "llama-server", "-j", str(os.cpu_count() or 1)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    last = 0.0
    for line in proc.stdout:
        if line.startswith("[") and time.time() - last > 15:  # "[123/456] Building CXX ...": progress
            print(f"  llama.cpp build {line.split(']')[0]}] after {time.time() - t0:.0f} s", flush=True)
            last = time.time()
        elif "error" in line.lower():
            print(line.rstrip(), flush=True)
    if proc.wait() or not binary.exists():
        raise SystemExit(f"llama.cpp build failed (exit {proc.returncode}); rerun `cmake --build {out}` to see why")
    print(f"llama-server built in {time.time() - t0:.0f} s: {binary}", flush=True)
    return binary


_CONVERT = """
import sys
sys.argv = ["convert_hf_to_gguf.py", *{argv!r}]
sys.path.insert(0, {tree!r})
import conversion.base as base
base.TextModel.get_vocab_base_pre = lambda self, tokenizer: "gpt-2"  # byte-level BPE, as raygen's tokenizer
import conversion.llama as llama  # a Llama shape with a BPE tokenizer.json: no sentencepiece model to try
llama.LlamaModel.set_vocab = lambda self: self._set_vocab_gpt2()
import runpy
runpy.run_path({script!r}, run_name="__main__")
"""


def convert(model_dir: str | Path, out: str | Path, outtype: str = "f32") -> Path:
    """A Hugging Face model directory as one GGUF file (`outtype` f32, f16 or bf16), converted once."""
    out, model_dir = Path(out), Path(model_dir)
    if out.exists():
        return out
    tree = source()
    staged = out.with_suffix(".hf")  # the model with an adjusted config.json; weights linked, not copied
    shutil.rmtree(staged, ignore_errors=True)
    staged.mkdir(parents=True)
    for f in model_dir.iterdir():
        if f.name != "config.json":
            (staged / f.name).symlink_to(f.resolve())
    cfg = json.loads((model_dir / "config.json").read_text())
    if "n_positions" in cfg:  # GPT-2: the converter reads n_ctx
        cfg.setdefault("n_ctx", cfg["n_positions"])
    (staged / "config.json").write_text(json.dumps(cfg))
    tmp = out.with_suffix(".tmp.gguf")
    code = _CONVERT.format(argv=[str(staged), "--outfile", str(tmp), "--outtype", outtype], tree=str(tree),
                           script=str(tree / "convert_hf_to_gguf.py"))
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    shutil.rmtree(staged, ignore_errors=True)
    if p.returncode or not tmp.exists():
        raise RuntimeError(f"GGUF conversion of {model_dir} failed:\n{p.stderr[-3000:]}")
    tmp.rename(out)
    return out


class Server:
    """llama-server on 127.0.0.1 with continuous batching: `parallel` slots, each with `ctx_per_slot` tokens
    of KV cache (llama.cpp's default split KV: one stream per slot; `--kv-unified` makes every token attend
    over the whole pool's cells, masked, which made concurrency 64 2x slower here), `threads` for decode and
    prompt batches."""

    def __init__(self, gguf: str | Path, port: int, parallel: int, ctx_per_slot: int, threads: int | None = None,
                 batch: int = 2048, log: Path | None = None):
        threads = threads or os.cpu_count() or 1
        self.url = f"http://127.0.0.1:{port}"
        self.args = [str(build()), "-m", str(gguf), "--host", "127.0.0.1", "--port", str(port),
                     "-np", str(parallel), "-c", str(parallel * ctx_per_slot), "-cb",
                     "-t", str(threads), "-tb", str(threads), "-b", str(batch), "-ub", str(min(batch, 512)),
                     "--no-webui", "--metrics"]
        self.log = log
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> Server:
        out = open(self.log, "ab") if self.log else subprocess.DEVNULL
        self.proc = subprocess.Popen(self.args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + 300
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"llama-server exited ({self.proc.returncode}); see {self.log}: {self.args}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.5)
        self.__exit__()
        raise RuntimeError(f"llama-server did not become healthy in 300 s; see {self.log}")

    def __exit__(self, *exc) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("build")
    c = sub.add_parser("convert")
    c.add_argument("model_dir")
    c.add_argument("out")
    c.add_argument("--outtype", default="f32", choices=["f32", "f16", "bf16"])
    s = sub.add_parser("serve")
    s.add_argument("gguf")
    s.add_argument("--port", type=int, default=8080)
    s.add_argument("--parallel", type=int, default=8)
    s.add_argument("--ctx-per-slot", type=int, default=1024)
    args = ap.parse_args()
    if args.cmd == "build":
        print(build())
    elif args.cmd == "convert":
        print(convert(args.model_dir, args.out, args.outtype))
    else:
        with Server(args.gguf, args.port, args.parallel, args.ctx_per_slot) as srv:
            print(f"llama-server at {srv.url}; Ctrl-C stops it", flush=True)
            try:
                srv.proc.wait()
            except KeyboardInterrupt:
                pass


if __name__ == "__main__":
    main()
