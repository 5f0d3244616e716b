"""``make_teacher``: the backend a ``TeacherConfig`` names, imported only when chosen."""

from __future__ import annotations

from rtune.components.teacher.config import TeacherConfig
from rtune.components.teacher.protocol import Teacher


def make_teacher(config: TeacherConfig) -> Teacher:
    """Build the teacher for ``config.backend`` (heavy libraries load here, not at import)."""
    if config.backend == "openai":
        from rtune.components.teacher.openai_backend import OpenAITeacher

        return OpenAITeacher(config)
    if config.backend == "vllm":
        from rtune.components.teacher.vllm_backend import VLLMTeacher

        return VLLMTeacher(config)
    from rtune.components.teacher.transformers_backend import TransformersTeacher

    return TransformersTeacher(config)
