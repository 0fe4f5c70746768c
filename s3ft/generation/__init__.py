"""Generation: backends that turn rendered prompts into completions, and the Ray pool that runs them.

Importing this package registers every built-in backend; none of them imports vLLM or torch until
it is built, and the pool (which needs Ray) is imported from `s3ft.generation.ray_pool` by its users.
"""

from s3ft.generation import hf_backend, vllm_backend  # noqa: F401
from s3ft.generation.base import BACKENDS, Backend, Sampling

__all__ = ["BACKENDS", "Backend", "Sampling"]
