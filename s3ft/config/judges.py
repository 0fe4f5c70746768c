"""The `judge` section and the options each judge kind takes.

The option schemas live here, with the section that holds them, so that validating a config (and
`s3ft --help`) knows every kind and option without importing a judge, its sandbox or its engines.
A judge registers under a kind that has a schema here: adding a kind is its file plus one line below.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator

from s3ft.config.section import Section
from s3ft.config.stages import GenerationConfig, ModelConfig


class NoOptions(Section):
    """A judge whose settings all have keys of their own in the judge section."""


class MathOptions(Section):
    verifier: Literal["auto", "number", "math_verify"] = Field(
        "auto", description="auto: numbers compared as numbers, LaTeX/MATH-style gold through math-verify; "
        "number: numbers only; math_verify: always math-verify.")
    timeout_s: int = Field(5, gt=0, description="math-verify's time limit per answer, seconds.")


class CodeOptions(Section):
    timeout_s: float = Field(10.0, gt=0, description="Wall-clock limit of one program, seconds.")
    memory_mb: int = Field(1024, gt=0, description="Memory limit of one program, MiB.")
    num_workers: int = Field(0, ge=0, description="Programs run at once; 0 means one per usable CPU.")


JUDGE_OPTIONS: dict[str, type[Section]] = {
    "math": MathOptions,
    "qa": NoOptions,
    "code": CodeOptions,
    "llm": NoOptions,
    "python": NoOptions,
}


class EndpointConfig(Section):
    base_url: str = Field(description="The server's OpenAI API root, e.g. http://127.0.0.1:8000/v1 (vLLM's `vllm serve`).")
    model: str = Field(description="The model name the server serves (as /v1/models lists it).")
    api_key_env: str | None = Field(None, description="Environment variable that holds the API key; none sends no key (a local server).")
    max_concurrency: int = Field(8, gt=0, description="Requests in flight at once.")
    timeout_s: float = Field(120.0, gt=0, description="Timeout of one request, in seconds.")
    max_retries: int = Field(8, ge=0, description="Retries of a request after a 429, a 5xx, a timeout or a dropped connection.")
    backoff_s: float = Field(1.0, gt=0, description="Wait before the first retry; doubles each time up to 30 s, or the server's Retry-After.")
    cache_dir: str | None = Field(None, description="Folder of the reply cache keyed by (model, prompt); in a run, default OUTPUT_DIR/cache.")


class LLMJudgeConfig(Section):
    model: ModelConfig | None = Field(None, description="The judge model served in Ray actors (often a larger instruct model than the one trained).")
    endpoint: EndpointConfig | None = Field(None, description="Instead of `model`: an OpenAI-compatible server that serves the judge model.")
    generation: GenerationConfig = Field(
        default_factory=lambda: GenerationConfig(max_tokens=64), description="How the judge model is served."
    )
    template: str | None = Field(None, description="Judge prompt: {question}, {gold}, {response} become fenced data blocks, {nonce} their code; the instruction must follow them.")
    audit_with: str | None = Field(None, description="A rule judge kind (qa, math) to compare verdicts with on a sample.")
    audit_size: int = Field(100, gt=0, description="How many rows the audit compares.")

    @model_validator(mode="after")
    def _one_judge_model_and_a_template_that_reads_the_answer_as_data(self) -> LLMJudgeConfig:
        if (self.model is None) == (self.endpoint is None):
            raise ValueError("judge.llm needs exactly one of model (served in Ray actors) and endpoint (an OpenAI-compatible server)")
        if self.template is not None:
            check_judge_template(self.template)
        return self


JUDGED_FIELDS = ("question", "gold", "response")  # the data blocks of an LLM judge's prompt
_JUDGED_FIELD = re.compile(r"\{(" + "|".join(JUDGED_FIELDS) + r")\}")


def check_judge_template(template: str) -> None:
    """A judge template must hold the response and end with the instruction, after every data block."""
    fields = list(_JUDGED_FIELD.finditer(template))
    if "response" not in {m.group(1) for m in fields}:
        raise ValueError("judge.llm.template: needs a {response} placeholder")
    if not template[fields[-1].end():].strip():
        raise ValueError("judge.llm.template: the instruction must come after the data ({question}, {gold}, "
                         "{response}); nothing follows the last of them")


class JudgeConfig(Section):
    kind: str = Field("math", description=f"{' | '.join(JUDGE_OPTIONS)} (python: then `target`).")
    match: Literal["exact", "contains"] = Field("exact", description="qa: exact match, or a gold as a whole-word span.")
    target: str | None = Field(None, description="python judge: 'package.module:function'.")
    options: dict[str, Any] = Field(default_factory=dict, description="Extra options of the judge (code: timeout_s, memory_mb, num_workers).")
    llm: LLMJudgeConfig | None = Field(None, description="llm judge: its model, serving and prompt.")
    num_workers: int = Field(0, ge=0, description="Parallel Ray tasks; 0 means one per CPU of the cluster.")

    @model_validator(mode="after")
    def _kind_has_its_settings(self) -> JudgeConfig:
        if self.kind not in JUDGE_OPTIONS:
            raise ValueError(f"unknown judge kind '{self.kind}'; known: {', '.join(sorted(JUDGE_OPTIONS))}")
        if self.kind == "python" and not self.target:
            raise ValueError("judge.kind 'python' needs judge.target: 'package.module:function'")
        if self.kind == "llm" and self.llm is None:
            raise ValueError("judge.kind 'llm' needs a judge.llm section with model.path or an endpoint")
        self.kind_options()
        return self

    def kind_options(self) -> dict[str, Any]:
        """`options` checked against the kind's schema, defaults filled in: what the judge is built with."""
        schema = JUDGE_OPTIONS[self.kind]
        try:
            return schema.model_validate(self.options).model_dump()
        except ValidationError as exc:
            unknown = sorted(str(e["loc"][0]) for e in exc.errors() if e["type"] == "extra_forbidden")
            if unknown:
                raise ValueError(f"judge.options: unknown option(s) {', '.join(unknown)} for the '{self.kind}' judge; "
                                 f"allowed: {', '.join(sorted(schema.model_fields)) or 'none'}") from None
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            raise ValueError(f"judge.options for the '{self.kind}' judge: {problems}") from None

    def cache_key(self) -> dict[str, Any]:
        """The settings that decide verdicts: a stage's cache key (how many workers judge does not)."""
        return self.model_dump(exclude={"num_workers"})
