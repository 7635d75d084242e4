"""The teacher as a source: a live model or an exact cache of its final hidden states."""

from lit_kd.teacher.build import build_teacher_cache
from lit_kd.teacher.cache import CacheKey, TeacherCache, cache_key, teacher_identity
from lit_kd.teacher.source import CachedTeacher, LiveTeacher, TeacherSource, teacher_source

__all__ = [
    "CacheKey",
    "CachedTeacher",
    "LiveTeacher",
    "TeacherCache",
    "TeacherSource",
    "build_teacher_cache",
    "cache_key",
    "teacher_identity",
    "teacher_source",
]
