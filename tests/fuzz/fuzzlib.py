"""What the fuzzers share: hypothesis profiles, a watchdog per case, case counters, and byte
mutations.

Rules:
- Two profiles. "fuzz-ci" (the default) keeps `make test` short: few examples per property.
  "fuzz-long" (OBJCACHE_FUZZ=long, `make fuzz`) multiplies every property's examples by
  OBJCACHE_FUZZ_SCALE (default 100). Neither has a hypothesis deadline: the machine is shared
  and slow cases are not failures; hangs are caught by the watchdog instead.
- The profiles apply only to the fuzzers (through `fuzz_settings`), never globally: the other
  tests keep their own settings.
- Every case runs under `watchdog(seconds)`: if it has not finished by then the process dumps
  every thread's stack and exits (faulthandler), so a hang fails loudly instead of stalling the
  suite. Async cases also bound themselves with trio.fail_after, which fails just that case.
- `count(name)` records each case run; tests/fuzz/conftest.py prints the totals at the end.
"""

from __future__ import annotations

import contextlib
import faulthandler
import os
import struct
from collections import Counter
from collections.abc import Iterator

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

LONG = os.environ.get("OBJCACHE_FUZZ", "") == "long"
SCALE = int(os.environ.get("OBJCACHE_FUZZ_SCALE", "100")) if LONG else 1
PROFILE = "fuzz-long" if LONG else "fuzz-ci"
CASE_TIMEOUT_S = 10.0  # one case (a record, a stream, a frame sequence): far above normal
WATCHDOG_S = 120.0  # a case still running after this: dump stacks and exit

_COMMON = dict(
    deadline=None,
    print_blob=True,  # a failure prints @reproduce_failure(...) to replay it exactly
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.filter_too_much,
        HealthCheck.function_scoped_fixture,
    ],
)
settings.register_profile("fuzz-ci", **_COMMON)
settings.register_profile("fuzz-long", **_COMMON)

CASES: Counter[str] = Counter()


def fuzz_settings(examples: int) -> settings:
    """Settings for one property: `examples` in the short run, SCALE times more in the long."""
    return settings(settings.get_profile(PROFILE), max_examples=examples * SCALE)


def count(name: str) -> None:
    CASES[name] += 1


@contextlib.contextmanager
def watchdog(seconds: float = WATCHDOG_S) -> Iterator[None]:
    """Exit the process with every thread's stack if the block runs longer than `seconds`."""
    faulthandler.dump_traceback_later(seconds, exit=True)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()


# --- mutations of valid encodings ---------------------------------------------------------------

# Words that break XDR lengths, counts, enums and record markers.
INTERESTING_U32 = (
    0, 1, 2, 3, 4, 5, 7, 8, 16, 17, 64, 65, 255, 256, 400, 401, 1024, 1025, 4096, 8192, 8193,
    0x7FFF, 0x8000, 0xFFFF, 0x10000, 0x7FFF_FFFF, 0x8000_0000, 0x8000_0001, 0xFFFF_FFFE,
    0xFFFF_FFFF,
)  # fmt: skip
u32s = st.sampled_from(INTERESTING_U32) | st.integers(0, 2**32 - 1)
_MUTATIONS = ("flip", "byte", "word", "truncate", "append", "insert", "delete", "duplicate")


def _at(draw: st.DrawFn, buf: bytearray, extra: int = 0) -> int:
    return draw(st.integers(0, max(len(buf) - 1 + extra, 0)))


def _mutate_once(draw: st.DrawFn, buf: bytearray) -> None:
    op = draw(st.sampled_from(_MUTATIONS))
    if not buf and op not in ("append", "insert"):
        op = "append"
    if op == "flip":
        i = _at(draw, buf)
        buf[i] ^= 1 << draw(st.integers(0, 7))
    elif op == "byte":
        buf[_at(draw, buf)] = draw(st.integers(0, 255))
    elif op == "word":  # an aligned XDR word: lengths, counts, enums, discriminants
        i = _at(draw, buf) & ~3
        buf[i : i + 4] = struct.pack(">I", draw(u32s))
    elif op == "truncate":
        del buf[_at(draw, buf) :]
    elif op == "append":
        buf += draw(st.binary(min_size=1, max_size=64))
    elif op == "insert":
        i = _at(draw, buf, extra=1)
        buf[i:i] = draw(st.binary(min_size=1, max_size=16))
    elif op == "delete":
        i = _at(draw, buf)
        del buf[i : i + draw(st.integers(1, 16))]
    else:  # duplicate a slice in place
        i = _at(draw, buf)
        buf[i:i] = buf[i : i + draw(st.integers(1, 32))]


@st.composite
def mutated(draw: st.DrawFn, data: bytes, max_mutations: int = 4) -> bytes:
    """`data` with 1..max_mutations random changes."""
    buf = bytearray(data)
    for _ in range(draw(st.integers(1, max_mutations))):
        _mutate_once(draw, buf)
    return bytes(buf)


def maybe_mutated(data: bytes, p_valid: float = 0.3) -> st.SearchStrategy[bytes]:
    """Sometimes `data` as is (to reach deep, valid paths), mostly mutated."""
    keep = st.integers(0, 99).map(lambda x: x < p_valid * 100)  # shrinks towards valid
    return keep.flatmap(lambda k: st.just(data) if k else mutated(data))
