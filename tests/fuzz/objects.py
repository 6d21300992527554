"""Seed ELF objects (the project's C examples and a few sources written for the fuzzer: CO-RE
relocations, global data, externs, callbacks, map kinds) and their mutants: bytes flipped anywhere
or inside one section, section header fields set to edge values, truncation; and the CO-RE target
BTF (the object's own ``.BTF``) mutated the same way."""

from __future__ import annotations

import io
import random
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path

from elftools.elf.elffile import ELFFile

from jitbpf.testing import compile_c

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

# Sources the examples do not cover; each is compiled with libbpf's headers.
SOURCES: dict[str, str] = {
    "core": """
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
struct task_struct { int pid; int tgid; char comm[16]; } __attribute__((preserve_access_index));
struct {
    __uint(type, BPF_MAP_TYPE_HASH); __uint(max_entries, 16); __type(key, int); __type(value, long);
} seen SEC(".maps");
SEC("kprobe/do_nanosleep")
int k(void *ctx) {
    struct task_struct *t = (void *)bpf_get_current_task();
    int pid = BPF_CORE_READ(t, pid);
    long one = bpf_core_field_exists(t->tgid) + bpf_core_type_size(struct task_struct);
    if (bpf_core_field_size(t->comm) != 16) return 1;
    bpf_map_update_elem(&seen, &pid, &one, BPF_ANY);
    return 0;
}
""",
    "globals": """
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
extern int LINUX_KERNEL_VERSION __kconfig;
extern _Bool CONFIG_BPF_JIT __kconfig __weak;
const volatile int limit = 40;
int counter;
char buf[32] = "fuzz";
static __noinline int clamp(int v) { return v > limit ? limit : v; }
__noinline int global_len(struct xdp_md *ctx) { return ctx ? (int)(ctx->data_end - ctx->data) : 0; }
SEC("xdp")
int g(struct xdp_md *ctx) {
    void *data = (void *)(long)ctx->data, *end = (void *)(long)ctx->data_end;
    counter += clamp(global_len(ctx));
    if (data + 2 > end) return XDP_PASS;
    buf[0] = *(unsigned char *)data;
    return (LINUX_KERNEL_VERSION && CONFIG_BPF_JIT) ? XDP_PASS : XDP_DROP;
}
char LICENSE[] SEC("license") = "GPL";
""",
    "callbacks": """
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
struct {
    __uint(type, BPF_MAP_TYPE_ARRAY); __uint(max_entries, 8); __type(key, __u32); __type(value, __u64);
} vals SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_RINGBUF); __uint(max_entries, 4096); } events SEC(".maps");
struct {
    __uint(type, BPF_MAP_TYPE_PROG_ARRAY); __uint(max_entries, 2); __type(key, __u32); __type(value, __u32);
} jump SEC(".maps");
static long add_one(__u32 i, void *ctx) { *(__u64 *)ctx += i; return i > 5; }
static long sum(void *map, __u32 *key, __u64 *val, void *ctx) { *(__u64 *)ctx += *val; return 0; }
SEC("xdp")
int cb(struct xdp_md *ctx) {
    __u64 total = 0;
    bpf_loop(10, add_one, &total, 0);
    bpf_for_each_map_elem(&vals, sum, &total, 0);
    __u64 *e = bpf_ringbuf_reserve(&events, 8, 0);
    if (e) { *e = total; bpf_ringbuf_submit(e, 0); }
    bpf_tail_call(ctx, &jump, 0);
    return XDP_PASS;
}
char LICENSE[] SEC("license") = "GPL";
""",
    "tc": """
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
struct {
    __uint(type, BPF_MAP_TYPE_LRU_HASH); __uint(max_entries, 4); __type(key, __u32); __type(value, __u64);
} flows SEC(".maps");
SEC("tc")
int tc_count(struct __sk_buff *skb) {
    void *data = (void *)(long)skb->data, *end = (void *)(long)skb->data_end;
    struct ethhdr *eth = data;
    if ((void *)(eth + 1) > end || eth->h_proto != bpf_htons(ETH_P_IP)) return 0;
    struct iphdr *ip = (void *)(eth + 1);
    if ((void *)(ip + 1) > end) return 0;
    __u32 key = ip->saddr;
    __u64 *n = bpf_map_lookup_elem(&flows, &key), one = 1;
    if (n) __sync_fetch_and_add(n, 1); else bpf_map_update_elem(&flows, &key, &one, BPF_NOEXIST);
    int verdict = ip->ttl < 2 ? 2 : 0;
    bpf_skb_store_bytes(skb, 0, &key, 4, 0);  /* every packet pointer is stale after this */
    return verdict;
}
char LICENSE[] SEC("license") = "GPL";
""",
}


@dataclass(frozen=True)
class Seed:
    """One compiled object of the corpus and its BTF (the CO-RE target of its cases)."""

    name: str
    data: bytes
    btf: bytes


def build_corpus(out_dir: Path | None = None) -> list[Seed]:
    """Compile the examples and ``SOURCES`` (clang and libbpf's headers are needed)."""
    directory = out_dir or Path(tempfile.gettempdir())
    sources = sorted(EXAMPLES.glob("*.c"))
    scratch = directory / "fuzz-sources"
    scratch.mkdir(parents=True, exist_ok=True)
    for name, text in SOURCES.items():
        path = scratch / f"{name}.c"
        if not path.is_file() or path.read_text() != text:
            path.write_text(text)
        sources.append(path)
    seeds = []
    for src in sources:
        data = compile_c(src, include=[EXAMPLES / "include"], out_dir=directory).read_bytes()
        seeds.append(Seed(src.stem, data, _section(data, ".BTF")))
    return seeds


def _section(data: bytes, name: str) -> bytes:
    section = ELFFile(io.BytesIO(data)).get_section_by_name(name)
    return b"" if section is None else bytes(section.data())


def _sections(data: bytes) -> list[tuple[int, int]]:
    """(offset, size) of each section with bytes in the file."""
    elf = ELFFile(io.BytesIO(data))
    return [(s["sh_offset"], s["sh_size"]) for s in elf.iter_sections()
            if s["sh_type"] != "SHT_NOBITS" and s["sh_size"] and s["sh_offset"] + s["sh_size"] <= len(data)]


EDGE_VALUES = (0, 1, 7, 8, 0xFF, 0x7FFF_FFFF, 0xFFFF_FFFF, 0xFFFF_FFFF_FFFF_FFFF, 1 << 32, 1 << 63)
SHDR_FIELDS = ((24, 8), (32, 8), (40, 4), (44, 4), (48, 8), (56, 8))  # offset, size, link, info, align, entsize


def flip_bytes(rng: random.Random, data: bytes, lo: int = 0, hi: int | None = None) -> bytes:
    """``data`` with 1-8 bytes in ``[lo, hi)`` replaced by random or edge values."""
    out = bytearray(data)
    hi = len(out) if hi is None else hi
    if hi <= lo:
        return bytes(out)
    for _ in range(rng.randint(1, 8)):
        i = rng.randrange(lo, hi)
        out[i] = rng.choice((rng.randrange(256), 0, 0xFF, 0x7F, 0x80, out[i] ^ (1 << rng.randrange(8))))
    return bytes(out)


def mutate_object(rng: random.Random, data: bytes) -> bytes:
    """One mutant of an ELF object."""
    match rng.randrange(5):
        case 0:
            return flip_bytes(rng, data)
        case 1 | 2:  # inside one section: BTF, relocations, symbols, code, map definitions
            sections = _sections(data)
            if not sections:
                return flip_bytes(rng, data)
            off, size = rng.choice(sections)
            return flip_bytes(rng, data, off, off + size)
        case 3:  # one section header field set to an edge value
            shoff, = struct.unpack_from("<Q", data, 0x28)
            shnum, = struct.unpack_from("<H", data, 0x3C)
            if not shnum or shoff + shnum * 64 > len(data):
                return flip_bytes(rng, data)
            field, width = rng.choice(SHDR_FIELDS)
            at = shoff + rng.randrange(shnum) * 64 + field
            out = bytearray(data)
            out[at:at + width] = (rng.choice(EDGE_VALUES) & ((1 << (8 * width)) - 1)).to_bytes(width, "little")
            return bytes(out)
        case _:
            return data[:rng.randrange(len(data))]


def mutate_btf(rng: random.Random, btf: bytes) -> bytes:
    """The target BTF mutated (header, types or strings), or truncated."""
    if not btf or rng.random() < 0.1:
        return btf[:rng.randrange(len(btf) + 1)]
    return flip_bytes(rng, btf, 0, min(len(btf), 24) if rng.random() < 0.2 else len(btf))
