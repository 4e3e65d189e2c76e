import platform

import pytest

from qmix_cli.allocator import keep_freed_memory

glibc_only = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")


@glibc_only
def test_thresholds_are_set_on_glibc() -> None:
    assert keep_freed_memory(environ={}) is True


@pytest.mark.parametrize("key", ["MALLOC_TRIM_THRESHOLD_", "MALLOC_ARENA_MAX", "GLIBC_TUNABLES"])
def test_a_user_tuned_allocator_is_left_alone(key) -> None:
    assert keep_freed_memory(environ={key: "1"}) is False
