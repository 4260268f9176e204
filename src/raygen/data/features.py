"""Features: train a byte-level BPE tokenizer, tokenize, split by document hash, pack fixed-length blocks."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from functools import lru_cache

import numpy as np

from raygen.data.clean import in_val_split
from raygen.errors import DataError
from raygen.storage import local_copy

EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"
STATS_SPLIT = "_stats"


def train_tokenizer(texts: Iterable[str], vocab_size: int, out_dir: str, chat_template: str | None = None):
    """Train byte-level BPE on a text stream and save it as a Hugging Face fast tokenizer in out_dir."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TOKEN, PAD_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte encodable: no unknown tokens
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=EOS_TOKEN, bos_token=EOS_TOKEN, pad_token=PAD_TOKEN,
        model_max_length=1_000_000_000, clean_up_tokenization_spaces=False,
    )
    if chat_template:
        hf.chat_template = chat_template
    hf.save_pretrained(out_dir)
    return hf


@lru_cache(maxsize=4)
def _load_tokenizer(path: str):  # by path: the data job writes each tokenizer to a new directory
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def pack(docs: list[list[int]], eos_id: int, block_size: int) -> tuple[np.ndarray, int]:
    """Concatenate documents, each followed by EOS, and cut into (N, block_size) blocks.

    Returns the blocks and the number of tail tokens that did not fill a block (dropped, and counted)."""
    stream = np.fromiter((t for d in docs for t in (*d, eos_id)), dtype=np.int32)
    n = len(stream) // block_size
    return stream[: n * block_size].reshape(n, block_size), len(stream) - n * block_size


def _row_hashes(blocks: np.ndarray) -> np.ndarray:
    # int63 digests of each block; their sum (order-free) is the dataset version.
    return np.array([int.from_bytes(hashlib.blake2b(b.tobytes(), digest_size=8).digest(), "little") >> 1
                     for b in blocks], dtype=np.int64)


def repeats(weight: float, doc_hash: str) -> int:
    """How many times a document of this mixing weight goes into the training stream: floor(weight), plus
    one more for a hash-chosen share equal to the fraction (deterministic, so runs agree)."""
    whole = int(weight)
    return whole + (int(doc_hash[8:16], 16) / 0xFFFFFFFF < weight - whole)


def select_split(batch: dict, split: str) -> dict:
    return {"input_ids": batch["input_ids"][batch["split"] == split]}


def tokenize_and_pack(batch: dict, tokenizer_dir: str, block_size: int, val_fraction: float) -> dict:
    """A Ray Data batch fn: rows of cleaned docs in, rows of packed blocks out (with their split).
    Train documents repeat by their `weight` column when there is one; validation stays unweighted."""
    tok = _load_tokenizer(str(local_copy(tokenizer_dir, "tokenizer.json")))  # a URI: fetched once per node
    texts, hashes = list(batch["text"]), list(batch["hash"])
    weights = list(batch["weight"]) if "weight" in batch else [1.0] * len(texts)
    ids = tok(texts, add_special_tokens=False)["input_ids"]
    out_blocks, out_split, out_dropped, streamed = [], [], [], 0
    for split in ("train", "val"):
        docs = [d for d, h, w in zip(ids, hashes, weights, strict=True)
                if in_val_split(h, val_fraction) == (split == "val")
                for _ in range(1 if split == "val" else repeats(w, h))]
        streamed += sum(len(d) + 1 for d in docs)
        blocks, dropped = pack(docs, tok.eos_token_id, block_size)
        out_blocks.append(blocks)
        out_split += [split] * len(blocks)
        out_dropped.append(dropped)
    # One bookkeeping row per batch (split "_stats", no block) carries the token counts, so they add up
    # exactly even for a batch too small to fill a block.
    blocks = np.concatenate(out_blocks + [np.zeros((1, block_size), np.int32)])
    n = len(blocks)
    tail = np.zeros(n, np.int64)
    doc_tokens = np.zeros(n, np.int64)
    tail[-1], doc_tokens[-1] = sum(out_dropped), streamed
    hashes = _row_hashes(blocks)
    hashes[-1] = 0
    return {
        "input_ids": blocks,  # (N, block_size) int32
        "split": np.array(out_split + [STATS_SPLIT], dtype=object),
        "row_hash": hashes,  # int63 per block
        "tail_tokens": tail,  # tokens dropped at the end of each split's stream in this batch
        "doc_tokens": doc_tokens,  # document tokens (EOS included) that went into this batch
    }


def text_stream(ds, batch_size: int = 256, max_bytes: int | None = None) -> Iterator[str]:
    """Stream a dataset's text column to the driver batch by batch (for tokenizer training). With max_bytes,
    a hash-chosen share of documents (about max_bytes of text) is streamed instead of all of it."""
    if max_bytes is not None:
        total = int(ds.sum("n_bytes")) if "n_bytes" in ds.schema().names else None
        if total and total > max_bytes:
            share = max_bytes / total
            ds = ds.filter(lambda r: int(r["hash"][:8], 16) / 0xFFFFFFFF < share)
    for batch in ds.iter_batches(batch_size=batch_size, batch_format="numpy"):
        yield from batch["text"]


def use_tokenizer(src: str, out_dir: str):
    """Reuse an existing Hugging Face tokenizer: copy it into out_dir; it needs an EOS token for packing."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(src)
    except (OSError, ValueError) as exc:
        raise DataError(f"features.tokenizer={src} is not a Hugging Face tokenizer directory: {exc}") from exc
    if tok.eos_token_id is None:
        raise DataError(f"the tokenizer at {src} has no EOS token; packing puts one between documents")
    tok.save_pretrained(out_dir)
    return tok
