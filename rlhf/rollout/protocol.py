"""What the training process and its vLLM engine process say to each other: one owner for both sides.

Messages are (kind, payload) tuples over a socket pair that the engine inherits (multiprocessing's Connection,
so pickled): nobody else can connect. Weights never go through the socket: they are written as raw bytes into
a file in /dev/shm (memory, not disk) that both processes map, and the socket carries only their names, dtypes,
shapes and offsets (`TensorEntry`). Standard library only: the engine's process imports it too.
"""

from __future__ import annotations

import os
import tempfile
from typing import NamedTuple

# The socket the engine process talks on, as an inherited file descriptor number.
CONNECTION_FD_ENV = "RLHF_ENGINE_FD"

# Requests (training process -> engine), each answered by REPLY_OK with a payload, or an error.
START = "start"  # payload: engine settings (dict); answered by READY
GENERATE = "generate"  # payload: {"prompts": [[ids]], "seeds": [int], "sampling": {...}}
# A weight sync is one stream, so that vLLM reloads the model once (its `reload_weights` re-runs the loading of
# every layer, and the CPU backend's repacking, when the layer's last tensor has arrived):
LOAD_WEIGHTS = "load_weights"  # payload: None; then BUCKET messages, each answered by REPLY_OK once copied out
BUCKET = "bucket"  # payload: {"path": shared file, "entries": [TensorEntry]}
END_OF_WEIGHTS = "end_of_weights"  # payload: None; LOAD_WEIGHTS is answered after it
SLEEP = "sleep"  # payload: level (GPU only)
WAKE_UP = "wake_up"  # payload: tags or None (GPU only)
CLOSE = "close"

# Replies (engine -> training process).
READY = "ready"  # payload: {"vllm": version, "max_model_len": int}
REPLY_OK = "ok"
USER_ERROR = "user_error"  # payload: one line for the user (rlhf.errors)
FAILED = "failed"  # payload: the engine's traceback (a bug, ours or vLLM's)

ALIGNMENT = 64  # bytes; every tensor starts at a multiple of it in the shared file


class TensorEntry(NamedTuple):
    """One tensor in the shared file: its name in the checkpoint's (Hugging Face) layout, torch dtype name
    (`float32`), shape and byte offset."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    offset: int


def aligned(offset: int) -> int:
    return -(-offset // ALIGNMENT) * ALIGNMENT


def shared_memory_dir() -> str:
    """/dev/shm where it exists (memory), else the temporary directory (page cache; macOS has no /dev/shm)."""
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else tempfile.gettempdir()
