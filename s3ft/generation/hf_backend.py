"""The Hugging Face backend: plain `transformers` generate, for machines or models vLLM cannot serve.

It mirrors vLLM's output: the completion without prompt or EOS, special tokens skipped, cut at the
stop string that completes first. Prompts of similar length share a batch (less padding); results
come back in prompt order.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from s3ft.errors import ModelError
from s3ft.generation.base import BACKENDS, Sampling


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """vLLM's rule: the stop string whose end comes first wins (ties: list order); it is not kept."""
    best: tuple[int, int] | None = None  # (end, start)
    for s in stop:
        start = text.find(s)
        if start != -1 and (best is None or start + len(s) < best[0]):
            best = (start + len(s), start)
    return text if best is None else text[: best[1]]


class HFBackend:
    def __init__(
        self,
        model_path: str | Path,
        *,
        batch_size: int = 32,
        dtype: str = "auto",
        device: str = "cpu",
        trust_remote_code: bool = False,
    ) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        try:
            self._tokenizer = AutoTokenizer.from_pretrained(str(model_path), trust_remote_code=trust_remote_code)
            self._model = AutoModelForCausalLM.from_pretrained(
                str(model_path),
                dtype=dtype if dtype == "auto" else getattr(torch, dtype),
                trust_remote_code=trust_remote_code,
            )
        except (OSError, ValueError) as exc:
            raise ModelError(f"cannot load model '{model_path}': {exc}") from None
        self._attach(batch_size, device)

    @classmethod
    def from_model(cls, model: Any, tokenizer: Any, *, batch_size: int = 32, device: str = "cpu") -> HFBackend:
        """Serve a model already in memory (one just trained), without a round trip through disk."""
        backend = cls.__new__(cls)
        backend._model, backend._tokenizer = model, tokenizer
        backend._attach(batch_size, device)
        return backend

    def _attach(self, batch_size: int, device: str) -> None:
        self._model.to(device).eval()
        self._device = device
        self._batch_size = batch_size
        self._tokenizer.padding_side = "left"
        eos = self._model.generation_config.eos_token_id
        self._eos_ids = {self._tokenizer.eos_token_id, *(eos if isinstance(eos, list) else [eos])} - {None}
        self._pad_id = self._tokenizer.pad_token_id
        if self._pad_id is None:
            self._pad_id = self._tokenizer.eos_token_id
        self._lock = threading.Lock()  # concurrent callers take turns: one generate at a time is fastest

    def generate(self, prompts: Sequence[str], sampling: Sampling) -> list[list[str]]:
        if not prompts:
            return []
        token_ids: list[list[int]] = self._tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
        order = sorted(range(len(token_ids)), key=lambda i: len(token_ids[i]))
        results: list[list[str]] = [[] for _ in token_ids]
        with self._lock:
            for start in range(0, len(order), self._batch_size):
                batch = order[start : start + self._batch_size]
                for i, completions in zip(batch, self._generate_batch([token_ids[i] for i in batch], sampling)):
                    results[i] = completions
        return results

    def _generate_batch(self, token_ids: list[list[int]], sampling: Sampling) -> list[list[str]]:
        import torch
        from transformers import GenerationConfig

        enc = self._tokenizer.pad({"input_ids": token_ids}, padding=True, return_tensors="pt").to(self._device)
        options: dict[str, Any] = (
            {"do_sample": True, "temperature": sampling.temperature, "top_p": sampling.top_p, "top_k": 0}
            if sampling.temperature > 0
            else {"do_sample": False}
        )
        config = GenerationConfig(
            max_new_tokens=sampling.max_tokens,
            num_return_sequences=sampling.n,
            eos_token_id=sorted(self._eos_ids),
            pad_token_id=self._pad_id,
            stop_strings=list(sampling.stop) or None,
            **options,
        )
        torch.manual_seed(sampling.seed)
        with torch.inference_mode():
            out = self._model.generate(**enc, generation_config=config, tokenizer=self._tokenizer)
        texts = [self._decode(row.tolist()) for row in out[:, enc["input_ids"].shape[1] :]]
        texts = [cut_at_stop(t, sampling.stop) for t in texts]
        return [texts[i : i + sampling.n] for i in range(0, len(texts), sampling.n)]

    def _decode(self, ids: list[int]) -> str:
        end = next((k for k, t in enumerate(ids) if t in self._eos_ids), len(ids))
        return self._tokenizer.decode(ids[:end], skip_special_tokens=True)


BACKENDS["hf"] = HFBackend
