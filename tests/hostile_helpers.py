"""Hostile programs for the helpers: random sequences of map loads, helper calls and register
moves, run unverified and verified in the JIT. Run as a module so that a crash is a failing
exit status rather than the end of the test process: ``python -m tests.hostile_helpers SEED N``."""

from __future__ import annotations

import gc
import io
import random
import sys

from jitbpf.errors import BpfError
from jitbpf.isa import Instruction, encode
from jitbpf.linux.maps import Array, BpfMap, HashMap, Queue, RingBuf
from jitbpf.vm import VM

HELPER_IDS = (1, 2, 3, 5, 6, 7, 8, 12, 14, 15, 16, 25, 87, 88, 89, 118, 125, 130, 131, 132, 133, 134)
VALUES = (0, 1, 4, 8, -8, 4096, 1 << 20, -1)


def program(rng: random.Random, maps: int) -> bytes:
    insns = []
    for _ in range(rng.randrange(2, 12)):
        roll = rng.random()
        if roll < 0.25:
            insns.append(Instruction(0x18, rng.randrange(1, 6), 1, 0, rng.randrange(maps) + 1, 0))  # lddw rX, map
        elif roll < 0.5:
            insns.append(Instruction(0x85, 0, 0, 0, rng.choice(HELPER_IDS)))  # call
        elif roll < 0.65:
            insns.append(Instruction(0xB7, rng.randrange(10), 0, 0, rng.choice(VALUES)))  # mov rX, imm
        elif roll < 0.8:
            insns.append(Instruction(0xBF, rng.randrange(10), rng.choice((10, 0, 1, 6)), 0, 0))  # mov rX, rY
        elif roll < 0.85:
            insns.append(Instruction(0x07, rng.randrange(10), 0, 0, rng.choice((-4, -8, 4, 1, -512))))  # add
        elif roll < 0.9:
            insns.append(Instruction(0x62, 10, 0, rng.choice((-4, -8)), rng.randrange(10)))  # stw [r10-N]
        elif roll < 0.95:  # through what a helper returned (a map value, a ring buffer sample), or not
            insns.append(Instruction(0x7B, 0, rng.randrange(10), rng.choice((0, 4, 8, 4096, -8)), 0))  # stxdw [r0+N]
        else:
            insns.append(Instruction(0x79, rng.randrange(10), 0, rng.choice((0, 8, 64, -16)), 0))  # ldxdw rX, [r0+N]
    insns.append(Instruction(0x95, 0, 0, 0, 0))
    return encode(insns)


def main(seed: int, count: int) -> int:
    rng = random.Random(seed)
    maps: list[BpfMap] = [HashMap(key_size=4, value_size=8, max_entries=8, name="H"),
                          Array(value_size=8, max_entries=4, name="A"), RingBuf(max_entries=4096, name="R"),
                          Queue(value_size=4, max_entries=4, name="Q")]
    ran = 0
    for _ in range(count):
        code = program(rng, len(maps))
        for verify in (False, True):
            try:
                with VM(code, verify=verify) as vm:
                    for handle, m in enumerate(maps, 1):
                        vm.add_map(m, handle)
                    vm.use_standard_helpers(trace_stream=io.StringIO())
                    vm.execute_jit(bytearray(16))
                    ran += 1
            except BpfError:
                pass  # rejected, or stopped with a jitbpf error: what hostile input should get
        gc.collect()  # a write past a buffer into Python's heap shows up here, at this program
    print(f"{count} programs, {ran} runs to completion")
    return 0


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]), int(sys.argv[2])))
