"""``make_teacher``: the backend a ``TeacherConfig`` names, imported only when chosen."""

from __future__ import annotations

from rtune.components.common.errors import InputError
from rtune.components.teacher.config import IMPORTED, TeacherConfig
from rtune.components.teacher.protocol import Teacher


def make_teacher(config: TeacherConfig) -> Teacher:
    """Build the teacher for ``config.backend`` (heavy libraries load here, not at import)."""
    if config.backend == IMPORTED:  # reflections made elsewhere: there is no teacher to call
        raise InputError(
            "teacher.backend",
            "is 'imported': no teacher runs, the reflections come from teacher.import_uri",
            "read them with `rtune import` (the pipeline does so by itself), or pick a teacher "
            "backend (transformers, openai, vllm) to reflect",
            field="backend",
        )
    if config.backend == "openai":
        from rtune.components.teacher.openai_backend import OpenAITeacher

        return OpenAITeacher(config)
    if config.backend == "vllm":
        from rtune.components.teacher.vllm_backend import VLLMTeacher

        return VLLMTeacher(config)
    from rtune.components.teacher.transformers_backend import TransformersTeacher

    return TransformersTeacher(config)
