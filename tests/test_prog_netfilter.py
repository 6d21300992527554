"""netfilter programs: the BTF-typed ``struct bpf_nf_ctx`` (the hook's state and the skb, typed
pointers whose fields the program reads), NF_DROP/NF_ACCEPT verdicts, runs on the state and skb
the caller gives in both engines; with the running kernel's BTF, the verifier's answers are the
kernel's (where it can load programs: root)."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest

from jitbpf import VM, assemble
from jitbpf.errors import VerifierError
from jitbpf.linux.btfctx import BtfTypes
from jitbpf.linux.elf import VMLINUX_BTF, Btf, BtfKind
from tests import kernel_oracle
from tests.support import ENGINES, BtfBuilder

NETFILTER, BPF_NETFILTER = 32, 45  # the program type, and its attach type


def _target_btf() -> Btf:
    """A target BTF with the context's three structs, reduced to the fields the programs read."""
    b = BtfBuilder()
    u8, u32 = b.integer("unsigned char", 1), b.integer("unsigned int", 4)
    state = b.struct("nf_hook_state", 8, [("hook", u8, 0), ("pf", u8, 1)])
    skb = b.struct("sk_buff", 8, [("len", u32, 4)])
    b.struct("bpf_nf_ctx", 16, [("state", b.ptr(state), 0), ("skb", b.ptr(skb), 8)])
    return Btf(b.blob())


def _offsets(btf: Btf) -> dict[str, int]:
    types = BtfTypes(btf)
    out = {}
    for struct, field in (("nf_hook_state", "hook"), ("nf_hook_state", "pf"), ("sk_buff", "len")):
        sid = types.lookup(BtfKind.STRUCT, struct)
        assert sid is not None
        member = types.member(sid, field)
        assert member is not None
        out[field] = member.offset
    return out


# Drops IPv4 (pf 2) packets longer than 1000 bytes at the hook the program reads.
DROP_LONG_IPV4 = """
    ldxdw r2, [r1+0]
    ldxb r3, [r2+{pf}]
    mov r0, 1
    jne r3, 2, +4
    ldxdw r2, [r1+8]
    ldxw r3, [r2+{len}]
    jle r3, 1000, +1
    mov r0, 0
    exit
"""
# Each refused for the reason given, by the kernel as by jitbpf.
REFUSED = [
    ("mov r0, 2\nexit", r"should have been in \[0, 1\]"),
    ("mov r0, 1\nstdw [r1+0], 0\nexit", "context"),  # the context is read-only
    ("ldxdw r0, [r1+16]\nmov r0, 1\nexit", "context"),  # past struct bpf_nf_ctx
    ("ldxdw r2, [r1+0]\nstb [r2+{hook}], 1\nmov r0, 1\nexit", "write"),  # the hook's state is read-only
]


@functools.cache
def _kernel_btf() -> Btf:
    return Btf(Path(VMLINUX_BTF).read_bytes())


def _vm(text: str, btf: Btf) -> VM:
    return VM(assemble(text), prog_type="netfilter", attach="netfilter", btf=btf)  # type: ignore[arg-type]


@pytest.mark.parametrize("engine", ENGINES)
def test_verdicts_from_the_state_and_the_skb(engine: str) -> None:
    btf = _target_btf()
    vm = _vm(DROP_LONG_IPV4.format(**_offsets(btf)), btf)
    vm.check()
    cases = [({"pf": 2, "hook": 1}, {"len": 1500}, 0), ({"pf": 2}, {"len": 100}, 1), ({"pf": 10}, {"len": 1500}, 1)]
    for state, skb, verdict in cases:
        assert vm.run_tracing(state, skb, engine=engine) == verdict


@pytest.mark.parametrize(("text", "message"), REFUSED)
def test_the_verifier_refuses(text: str, message: str) -> None:
    btf = _target_btf()
    with pytest.raises(VerifierError, match=message):
        _vm(text.format(**_offsets(btf)), btf).check()


@pytest.mark.skipif(not kernel_oracle.available() or not Path(VMLINUX_BTF).is_file(),
                    reason="needs root, the BPF syscall and the kernel's BTF")
@pytest.mark.parametrize("text", [DROP_LONG_IPV4] + [text for text, _ in REFUSED])
def test_the_kernel_agrees(text: str) -> None:
    code = text.format(**_offsets(_kernel_btf()))
    try:
        _vm(code, _kernel_btf()).check()
        ours = True
    except VerifierError:
        ours = False
    verdict = kernel_oracle.kernel_verify(assemble(code), NETFILTER, expected_attach_type=BPF_NETFILTER)
    assert verdict.accepted == ours, verdict.log
