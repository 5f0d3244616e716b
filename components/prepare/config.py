"""Typed configuration of the ``prepare`` stage (validated on construction)."""

from __future__ import annotations

from dataclasses import dataclass, field

from rtune.components.common.student import student_field


@dataclass
class PrepareConfig:
    """How ``prepare`` reads, checks and flags the seed data.

    ``tokenizer`` (the student's, from ``student:``) counts tokens exactly as the student will:
    ``"default"`` is the embedded default model, otherwise a local Hugging Face folder or an
    ``s3://`` prefix holding one. ``count_tokens: false`` (or ``tokenizer=None`` in code) counts
    with the rough ``ceil(chars / 4)`` estimate, for runs that have no tokenizer at hand.
    """

    max_length: int = student_field("max_length")
    tokenizer: str | None = student_field(
        "tokenizer_spec", default="default", help="the student's tokenizer (model or tokenizer)"
    )
    count_tokens: bool = field(
        default=True, metadata={"help": "false = estimate tokens as chars/4 (no tokenizer)"}
    )
    limit: int | None = field(
        default=None,
        metadata={"help": "keep only the first N records after de-duplication (small runs)"},
    )
    s3_endpoint: str | None = field(
        default=None,
        metadata={"help": "S3 endpoint URL (MinIO, moto); default: $AWS_ENDPOINT_URL or AWS"},
    )

    def __post_init__(self) -> None:
        if not _is_int(self.max_length) or self.max_length < 1:
            raise ValueError(f"max_length must be a positive integer, got {self.max_length!r}")
        if self.limit is not None and (not _is_int(self.limit) or self.limit < 1):
            raise ValueError(
                f"limit must be a positive integer or null (no limit), got {self.limit!r}"
            )
        if self.tokenizer is not None and (
            not isinstance(self.tokenizer, str) or not self.tokenizer.strip()
        ):
            raise ValueError(
                "tokenizer must be 'default', a model folder, an s3:// prefix, or null "
                f"(chars/4 estimate), got {self.tokenizer!r}"
            )
        if self.s3_endpoint is not None and (
            not isinstance(self.s3_endpoint, str)
            or not self.s3_endpoint.startswith(("http://", "https://"))
        ):
            raise ValueError(
                f"s3_endpoint must be an http(s):// URL such as http://minio:9000, "
                f"got {self.s3_endpoint!r}"
            )


def _is_int(value: object) -> bool:
    """True for real integers; ``True``/``False`` are ints to Python but not counts to a person."""
    return isinstance(value, int) and not isinstance(value, bool)
