"""optimum-intel's OVModelForCausalLM, streamed through transformers' TextStreamer."""

from __future__ import annotations

import threading

from . import prompt as prompts
from .engine import Emit, Engine
from .settings import ENGINES, GenerationSettings


class OptimumEngine(Engine):
    """OVModelForCausalLM: re-reads the whole prompt every turn (no prefix cache), but runs
    any model optimum-intel exports, with or without an OpenVINO tokenizer."""

    kind = ENGINES["optimum"]

    def _load(self) -> None:
        from optimum.intel import OVModelForCausalLM
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(self.folder)
        self.model = OVModelForCausalLM.from_pretrained(
            self.folder, device=self.device, ov_config=self.properties
        )
        if self.tokenizer.eos_token_id is not None and not self.eos_ids:
            self.eos_ids = [self.tokenizer.eos_token_id]

    def render_text(self, messages: list[prompts.Message]) -> str:
        return self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True, chat_template=self.chat_template
        )

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False).input_ids

    def decode(self, ids: list[int], keep_special: bool = False) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=not keep_special)

    def _generate(self, ids: list[int], settings: GenerationSettings, emit: Emit, stop: threading.Event) -> list[int]:
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList, TextStreamer

        class Streamer(TextStreamer):
            """transformers' streamer holds back half words and split characters for us."""

            def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
                emit(text)

        class Stopped(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs):
                return torch.full((input_ids.shape[0],), stop.is_set(), dtype=torch.bool)

        input_ids = torch.tensor([ids])
        # transformers matches stop strings on token ids, which it works out with the tokenizer.
        stops = dict(stop_strings=list(settings.stop), tokenizer=self.tokenizer) if settings.stop else {}
        sampling = {}
        if not settings.greedy:
            if settings.seed is not None:
                torch.manual_seed(settings.seed)
            sampling = dict(temperature=settings.temperature, top_p=settings.top_p, top_k=settings.top_k)
        output = self.model.generate(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            max_new_tokens=settings.max_new_tokens,
            min_new_tokens=settings.min_new_tokens,
            do_sample=not settings.greedy,
            repetition_penalty=settings.repetition_penalty,
            eos_token_id=self.eos_ids,
            pad_token_id=self.eos_ids[0] if self.tokenizer.pad_token_id is None else self.tokenizer.pad_token_id,
            streamer=Streamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True),
            stopping_criteria=StoppingCriteriaList([Stopped()]),
            **stops,
            **sampling,
        )
        return output[0, input_ids.shape[1]:].tolist()
