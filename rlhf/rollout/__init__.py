"""Sampling engines shared by PPO's rollouts, its evaluations and the labels export: `hf` (transformers'
`generate`, in the training process) or `vllm` (a vLLM engine in a process of its own beside it).

Import-light: the engine's process (`vllm_server`) imports this package with nothing but the standard library,
torch and vLLM installed.
"""
