"""Auction memory: past auctions, retrieved by task similarity, feeding refinement.

    entry.py     MemoryEntry (what one auction leaves), contrastive_pairs (the refinement input)
    embed.py     Embedder protocol + registry: numpy all-MiniLM-L6-v2, torch reference, hashing
    minilm.py    the numpy MiniLM (WordPiece + BERT forward pass over the shipped safetensors)
    shard.py     MemoryShard: Arrow segments + embedding matrix, exact top-k, bounded
    sharded.py   ShardedMemory: routes writes, fans out queries, merges, recovers, snapshots
    pool.py      the ShardPool seam (in-process form) and what shards run on themselves
    snapshot.py  Parquet snapshots: atomic commit via data -> manifest -> pointer, verified restore
    store.py     where snapshots live (local folder / S3 via pyarrow.fs; pointer CAS via boto3)
    remote.py    the Ray edge: shard actors, start_memory / connect_memory (the only Ray import)
    config.py    MemoryConfig, StorageConfig

Importing this package is cheap: no Ray, no model weights.
"""

from .config import MemoryConfig, StorageConfig
from .entry import ContrastPair, MemoryBid, MemoryEntry, contrastive_pairs, entry_from_record

__all__ = [
    "ContrastPair",
    "MemoryBid",
    "MemoryConfig",
    "MemoryEntry",
    "StorageConfig",
    "contrastive_pairs",
    "entry_from_record",
]
