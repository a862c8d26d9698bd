"""The training loss, for callers that import it from here: it lives in `vicuna_jax.model.loss` (LoRA
differentiates it too, and LoRA must not import `train`)."""

from vicuna_jax.model.loss import cross_entropy_sums, loss_sums

__all__ = ["cross_entropy_sums", "loss_sums"]
