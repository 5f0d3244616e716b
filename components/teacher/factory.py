"""``make_teacher``: the backend a ``TeacherConfig`` names, imported only when chosen."""

from __future__ import annotations

from components.teacher.config import TeacherConfig
from components.teacher.protocol import Teacher


def make_teacher(config: TeacherConfig) -> Teacher:
    """Build the teacher for ``config.backend`` (heavy libraries load here, not at import)."""
    if config.backend == "openai":
        from components.teacher.openai_backend import OpenAITeacher

        return OpenAITeacher(config)
    if config.backend == "vllm":
        from components.teacher.vllm_backend import VLLMTeacher

        return VLLMTeacher(config)
    from components.teacher.transformers_backend import TransformersTeacher

    return TransformersTeacher(config)
