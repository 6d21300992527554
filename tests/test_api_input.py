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


def test_typed_runners_name_bad_fields() -> None:
    """(AttributeError, OverflowError and IndexError came out of the context builders.)"""
    with VM(assemble("mov r0, 1\nexit"), prog_type=ProgType.SK_LOOKUP) as vm:
        for remote in (("1.2.3.4", 65536), ("1.2.3.4", -1), ("1.2.3.4", None), ("1.2.3.4",)):
            with pytest.raises(ValueError, match=r"port|pair"):
                vm.run_sk_lookup(remote=remote)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="a dict of its fields, not int"):
            vm.run_context(5)  # type: ignore[arg-type]
    with VM(assemble("mov r0, 1\nexit"), prog_type=ProgType.SK_REUSEPORT) as vm:
        for protocol in (65536, None):
            with pytest.raises(ValueError, match="0 to 65535"):
                vm.run_sk_reuseport(b"\0" * 40, eth_protocol=protocol)  # type: ignore[arg-type]


@pytest.mark.parametrize("engine", ENGINES)
def test_threads_handles_and_helper_ids_are_ints(engine: str) -> None:
    """(The interpreter's run_batch took any threads; a float handle or id was kept.)"""
    with _xdp() as vm:
        for threads, error in ((0, ValueError), (-1, ValueError), (1.5, TypeError), ("2", TypeError)):
            with pytest.raises(error, match="threads must"):
                vm.run_batch([b"\x01"], engine=engine, threads=threads)  # type: ignore[arg-type]
    with VM(assemble("mov r0, 1\nexit")) as vm:
        from jitbpf.linux.maps import HashMap

        with pytest.raises(TypeError, match="a map handle is an int"):
            vm.add_map(HashMap(name="H"), 1.5)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="a helper id is an int"):
            vm.register_helper(1.5, lambda *_: 0)  # type: ignore[arg-type]
