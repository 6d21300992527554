"""Global (non-static) functions, verified as the kernel verifies them: once, on their own, for any
arguments that match their BTF prototype, each call checked against the prototype and returning
an unknown number. Each case is one C program; its verdict (and the reason of a refusal) is
jitbpf's, and the kernel's where it can load programs (root)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from jitbpf import load_elf
from jitbpf.errors import VerifierError
from jitbpf.linux.subprogs import global_functions
from jitbpf.verifier import Param, ParamKind
from tests.kernel import Kernel
from tests.support import ENGINES, c_builder, check_verdict

HEADER = """
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#define __arg_ctx __attribute__((btf_decl_tag("arg:ctx")))
#define __arg_nonnull __attribute__((btf_decl_tag("arg:nonnull")))
struct { __uint(type, BPF_MAP_TYPE_ARRAY); __uint(max_entries, 4); __type(key, __u32); __type(value, __u64); }
    arr SEC(".maps");
struct two { int a, b; };
"""

Build = Callable[[str], Path]
INVALID = r"Caller passes invalid args into func#1"

# (name, body of a program ``prog`` and its functions, None if accepted else a pattern of the reason)
CASES = [
    ("returns void", "__noinline void f(int x) { bpf_printk(\"%d\", x); }\n"
     "SEC(\"xdp\") int prog(struct xdp_md *c) { f(1); return 2; }",
     r"Global function f\(\) doesn't return scalar.*" + INVALID),
    ("void pointer argument", "__noinline int f(void *p) { return p ? 1 : 0; }\n"
     "SEC(\"xdp\") int prog(struct xdp_md *c) { int x = 0; return f(&x); }",
     r"arg#0 reference type\('UNKNOWN '\) size cannot be determined.*" + INVALID),
    ("context as memory", "__noinline int f(int *p) { return p ? *p : 0; }\n"
     "SEC(\"xdp\") int prog(struct xdp_md *c) { return f((int *)c); }",
     r"r1 type=ctx expected=fp; " + INVALID),
    ("packet end as memory", "__noinline int f(int *p) { return p ? *p : 0; }\n"
     "SEC(\"xdp\") int prog(struct xdp_md *c) { return f((int *)(long)c->data_end); }",
     r"r1 type=pkt_end expected=fp; " + INVALID),
    ("packet unchecked", "__noinline int f(int *p) { return p ? *p : 0; }\n"
     "SEC(\"xdp\") int prog(struct xdp_md *c) { return f((int *)(long)c->data); }",
     r"packet.*" + INVALID),
    ("packet checked", "__noinline int f(int *p) { return p ? *p : 0; }\n"
     "SEC(\"xdp\") int prog(struct xdp_md *c) { void *d = (void *)(long)c->data;\n"
     "  if (d + 4 > (void *)(long)c->data_end) return 0; return f(d) & 1 ? 1 : 2; }", None),
    ("stack smaller than the type", "__noinline int f(struct two *p) { return p ? p->b : 0; }\n"
     "SEC(\"xdp\") int prog(struct xdp_md *c) { int x = 0; return f((struct two *)&x); }",
     r"stack.*" + INVALID),
    ("map value that may be NULL", "__noinline int f(int *p) { return p ? *p : 0; }\n"
     "SEC(\"xdp\") int prog(struct xdp_md *c) { __u32 k = 0; int *v = bpf_map_lookup_elem(&arr, &k);\n"
     "  return f(v) & 1 ? 1 : 2; }", None),
    ("non-NULL argument", "__noinline int f(int *p __arg_nonnull) { return *p; }\n"
     "SEC(\"xdp\") int prog(struct xdp_md *c) { int x = 1; return f(&x) & 1 ? 1 : 2; }", None),
    ("missing NULL check", "__noinline int f(int *p) { return *p; }\n"
     "SEC(\"xdp\") int prog(struct xdp_md *c) { int x = 1; return f(&x) & 1 ? 1 : 2; }",
     r"invalid mem access.*Validating f\(\) func#1"),
    ("result is any number", "__noinline int f(int x) { return x & 1; }\n"
     "SEC(\"xdp\") int prog(struct xdp_md *c) { __u64 a[2] = {0, 0}; int i = f(3); return a[i]; }",
     r"unbounded|variable"),
    ("returns a pointer", "__noinline long f(int *p) { return (long)p; }\n"
     "SEC(\"xdp\") int prog(struct xdp_md *c) { int x = 0; return f(&x) != 0; }",
     r"At subprogram exit the register R0 is not a scalar value.*Validating f\(\) func#1"),
    ("typed context", "__noinline int f(struct xdp_md *ctx) { return ctx->ingress_ifindex; }\n"
     "SEC(\"xdp\") int prog(struct xdp_md *c) { return f(c) & 1 ? 1 : 2; }", None),
    ("tagged context", "__noinline int f(void *ctx __arg_ctx) { return bpf_get_prandom_u32() & 1; }\n"
     "SEC(\"xdp\") int prog(struct xdp_md *c) { return f(c) ? 1 : 2; }", None),
    ("memory past its size", "__noinline int f(const int *p) { return p ? p[100] : 0; }\n"
     "SEC(\"xdp\") int prog(struct xdp_md *c) { int x = 0; return f(&x) & 1 ? 1 : 2; }",
     r"mem_size=4 off=400.*Validating f\(\) func#1"),
    ("never called", "__noinline int f(const int *p) { return p[100]; }\n"
     "SEC(\"xdp\") int prog(struct xdp_md *c) { return 2; }", None),
    # The callback a global function passes to bpf_loop moves the packet: so does the function.
    ("callback moves the packet",
     "static int cb(__u32 i, void *c) { bpf_skb_change_tail(*(struct __sk_buff **)c, 14, 0); return 1; }\n"
     "__noinline int shrink(struct __sk_buff *skb __arg_ctx) { void *p = skb; bpf_loop(1, cb, &p, 0); return 0; }\n"
     "SEC(\"tc\") int prog(struct __sk_buff *skb) { unsigned char *d = (void *)(long)skb->data;\n"
     "  if (d + 60 > (unsigned char *)(long)skb->data_end) return 1; shrink(skb); return d[50]; }",
     r"invalid mem access 'scalar'"),
]


@pytest.fixture(scope="module")
def build(tmp_path_factory: pytest.TempPathFactory) -> Build:
    return c_builder(tmp_path_factory.mktemp("globals"), HEADER)


@pytest.mark.parametrize(("name", "body", "refused"), CASES, ids=[c[0] for c in CASES])
def test_verdict(build: Build, kernel: Kernel | None, name: str, body: str, refused: str | None) -> None:
    path = build(body)
    check_verdict(load_elf(path).programs["prog"].vm(), refused is None, refused)
    if kernel is not None:
        loaded = kernel.load(path, "prog", None)
        assert isinstance(loaded, str) == (refused is not None), loaded
        if not isinstance(loaded, str):
            loaded.close()


def test_prototypes(build: Build) -> None:
    """Scalars, context and sized memory (nullable unless tagged); static functions are not global."""
    path = build("__noinline int g(int a, struct xdp_md *c, struct two *t, int *n __arg_nonnull)\n"
                 "{ return a + c->ingress_ifindex + (t ? t->b : 0) + *n; }\n"
                 "static __noinline int s(int a) { return a * 3; }\n"
                 "SEC(\"xdp\") int prog(struct xdp_md *c) { int a = bpf_get_prandom_u32(); struct two t = {a, a};\n"
                 "  return (g(a, c, &t, &a) + s(a)) & 1 ? 1 : 2; }")
    obj = load_elf(path)
    prog = obj.programs["prog"]
    assert obj.btf is not None
    found = global_functions(obj.btf, prog.functions, "xdp_md")
    assert {f.name for f in found.values()} == {"g"}
    (g,) = found.values()
    assert g.params == (Param(ParamKind.SCALAR), Param(ParamKind.CTX), Param(ParamKind.MEM, 8),
                        Param(ParamKind.MEM, 4, nullable=False))
    assert set(prog.functions.values()) == {"g", "s"}


@pytest.mark.parametrize("engine", ENGINES)
def test_runs_unchanged(build: Build, engine: str) -> None:
    """Verified on its own or not, a global function runs as any function does."""
    path = build("__noinline int f(int *p, int k) { if (!p) return -1; *p += k; return *p; }\n"
                 "SEC(\"xdp\") int prog(struct xdp_md *c) { int x = 40; f(&x, 1); return f(&x, 1) == 42 ? 2 : 1; }")
    vm = load_elf(path).programs["prog"].vm()
    assert vm.run_xdp(bytes(64), engine=engine)[0] == 2


def test_refusal_names_the_function(build: Build) -> None:
    path = build("__noinline int f(int *p) { return *p; }\n"
                 "SEC(\"xdp\") int prog(struct xdp_md *c) { int x = 1; return f(&x) & 1 ? 1 : 2; }")
    with pytest.raises(VerifierError) as info:
        load_elf(path).programs["prog"].vm().check()
    assert "a global function is verified on its own" in str(info.value)
