"""cgroup/getsockopt and cgroup/setsockopt programs: the ``struct bpf_sockopt`` context (the
option's value as packet memory between optval and optval_end; what each attach type may read and
write), the verdict range, and runs in both engines of programs that rewrite an option; the
verifier's answers are checked against the kernel's where it can load programs (root)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from jitbpf.errors import VerifierError
from jitbpf.linux.elf import load_elf
from tests.kernel import Kernel
from tests.support import ENGINES, c_builder

Build = Callable[[str], Path]
HEADER = """
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
"""
# getsockopt(SOL_IP, IP_TOS) reads 0x80 with the call's error cleared; setsockopt(SOL_SOCKET,
# SO_SNDBUF) is capped at 64 KiB and SO_RCVBUF becomes SO_SNDBUF; anything else passes as it is.
REWRITE = """
SEC("cgroup/getsockopt") int get(struct bpf_sockopt *ctx) {
    unsigned char *optval = ctx->optval, *end = ctx->optval_end;
    if (ctx->level != 0 || ctx->optname != 1)
        return 1;
    if (optval + 1 > end)
        return 0;
    ctx->retval = 0;
    optval[0] = 0x80;
    ctx->optlen = 1;
    return 1;
}
SEC("cgroup/setsockopt") int set(struct bpf_sockopt *ctx) {
    unsigned int *optval = ctx->optval;
    if (ctx->level != 1 || (void *)(optval + 1) > ctx->optval_end)
        return 1;
    if (ctx->optname == 8)
        ctx->optname = 7;
    if (*optval > 65536)
        *optval = 65536;
    return 1;
}
"""
# Bodies of a getsockopt (G) or setsockopt (S) program, each refused for the reason given.
REFUSED = [
    ("S", "ctx->retval = 0; return 1;", "write to the context"),  # setsockopt has no result to set
    ("G", "ctx->level = 1; return 1;", "write to the context"),  # getsockopt cannot change the option
    ("G", "return 2;", r"should have been in \[0, 1\]"),
    ("S", "return *(unsigned char *)ctx->optval;", "invalid access to packet"),  # not checked against the end
]
ACCEPTED = [
    ("G", "ctx->retval = 0; return 1;"),
    ("S", "ctx->optname = 2; return 1;"),
    ("S", "ctx->level = 6; return 1;"),
    ("S", "ctx->optlen = -1; return 1;"),  # the kernel then passes the original value on
]


def _program(which: str, body: str) -> str:
    section = "cgroup/getsockopt" if which == "G" else "cgroup/setsockopt"
    return f'SEC("{section}") int prog(struct bpf_sockopt *ctx) {{ {body} }}\n'


@pytest.fixture(scope="module")
def build(tmp_path_factory: pytest.TempPathFactory) -> Build:
    return c_builder(tmp_path_factory.mktemp("sockopt"), HEADER)


@pytest.mark.parametrize("engine", ENGINES)
def test_getsockopt_rewrites_the_answer(build: Build, engine: str) -> None:
    prog = load_elf(build(REWRITE)).programs["get"]
    verdict, fields, value = prog.run(bytes(4), level=0, optname=1, retval=-22, engine=engine)
    assert (verdict, fields["optlen"], fields["retval"], value) == (1, 1, 0, b"\x80\0\0\0")
    verdict, fields, value = prog.run(b"", level=0, optname=1, engine=engine)
    assert verdict == 0  # no room for the answer: the call fails
    verdict, fields, value = prog.run(b"\x07", level=6, optname=1, retval=-22, engine=engine)
    assert (verdict, fields["retval"], value) == (1, -22, b"\x07")


@pytest.mark.parametrize("engine", ENGINES)
def test_setsockopt_rewrites_the_option(build: Build, engine: str) -> None:
    prog = load_elf(build(REWRITE)).programs["set"]
    verdict, fields, value = prog.run((1 << 20).to_bytes(4, "little"), level=1, optname=8, engine=engine)
    assert (verdict, fields["optname"], int.from_bytes(value, "little")) == (1, 7, 65536)
    verdict, fields, value = prog.run((100).to_bytes(4, "little"), level=1, optname=7, engine=engine)
    assert (verdict, fields["optname"], int.from_bytes(value, "little")) == (1, 7, 100)


@pytest.mark.parametrize(("which", "body", "message"), REFUSED)
def test_the_verifier_refuses(build: Build, kernel: Kernel | None, which: str, body: str, message: str) -> None:
    path = build(_program(which, body))
    with pytest.raises(VerifierError, match=message):
        load_elf(path).programs["prog"].vm().check()
    if kernel is not None:
        assert isinstance(kernel.load(path, "prog", None), str)


@pytest.mark.parametrize(("which", "body"), ACCEPTED)
def test_the_verifier_accepts(build: Build, kernel: Kernel | None, which: str, body: str) -> None:
    path = build(_program(which, body))
    load_elf(path).programs["prog"].vm().check()
    if kernel is not None:
        loaded = kernel.load(path, "prog", None)
        assert not isinstance(loaded, str), loaded
        loaded.close()
