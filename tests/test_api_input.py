"""Odd input from the caller, a case each: the same results in both engines, or a TypeError or
ValueError naming what is wrong, never a foreign exception, another engine's answer or memory
outside what was given."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from jitbpf import ProgType
from jitbpf.asm import assemble
from jitbpf.disasm import disassemble
from jitbpf.vm import VM
from tests.support import ENGINES

# r0 = the packet's first byte (255 when it is empty).
FIRST_BYTE = ("ldxw r2, [r1+0]\nldxw r3, [r1+4]\nmov r0, 0xff\nmov r4, r2\nadd r4, 1\njgt r4, r3, out\n"
              "ldxb r0, [r2]\nout:\nexit")


def _xdp() -> VM:
    return VM(assemble(FIRST_BYTE), prog_type=ProgType.XDP)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("keep", [False, True])
@pytest.mark.parametrize("kind", [bytes, bytearray])
def test_a_batch_read_once(engine: str, keep: bool, kind: type[bytes] | type[bytearray]) -> None:
    """A generator of packets: it was read twice (sizes, then contents), so the native loop ran on
    an empty buffer with the real packets' offsets (bytes from outside it, or a crash)."""
    def packets() -> Iterator[bytes | bytearray]:
        return (kind([i + 1]) * 3 for i in range(4))

    with _xdp() as vm:
        out = vm.run_batch(packets(), engine=engine, keep_packets=keep)
        assert list(out.results) == [1, 2, 3, 4]
        if keep:
            assert out.packets == [bytes([i + 1]) * 3 for i in range(4)]


def test_a_strided_packet_on_the_bound_path_is_copied() -> None:
    with _xdp() as vm:
        vm.run_xdp(b"\x01", engine="jit")  # binds this thread's native path
        packet = memoryview(bytearray(range(10)))[1::2]
        assert vm.run_xdp(packet, engine="jit") == vm.run_xdp(packet, engine="interp") == (1, bytes(range(1, 10, 2)))


def test_a_read_only_numpy_array_is_copied_by_the_jit() -> None:
    np = pytest.importorskip("numpy")
    with VM(assemble("ldxb r0, [r1+1]\nexit")) as vm:
        data = np.frombuffer(b"\x00\x06", np.uint8)
        assert vm.execute(data) == vm.execute_jit(data) == vm.execute_jit(data) == 6


@pytest.mark.parametrize("engine", ENGINES)
def test_a_number_is_no_packet(engine: str) -> None:
    """bytes(5) is five zero bytes: an int was run as a packet of that length."""
    with _xdp() as vm:
        vm.run_xdp(b"\x01", engine=engine)
        for packet in (5, 2**70):
            with pytest.raises(TypeError, match="the packet must be bytes or a buffer, not int"):
                vm.run_xdp(packet, engine=engine)  # type: ignore[arg-type]


@pytest.mark.parametrize(("make", "message"), [
    (lambda: VM("mov r0, 1\nexit"), "not text: assemble it first"),  # type: ignore[arg-type]
    (lambda: VM([1, 2]), "instructions are Instructions, not int"),  # type: ignore[list-item]
    (lambda: VM(assemble("mov r0, 1\nexit"), helpers=[5]), "not int"),  # type: ignore[list-item]
    (lambda: VM(assemble("mov r0, 2\nexit"), prog_type="xdp", attach=5), "not int"),  # type: ignore[arg-type]
    (lambda: assemble(None), "not NoneType"),  # type: ignore[arg-type]
    (lambda: assemble("exit", maps=5), "not int"),  # type: ignore[arg-type]
    (lambda: disassemble("exit"), "not text"),  # type: ignore[arg-type]
])
def test_arguments_of_the_wrong_type_are_type_errors(make: object, message: str) -> None:
    """(They were AttributeErrors from deep inside.)"""
    with pytest.raises(TypeError, match=message):
        make()  # type: ignore[operator]
