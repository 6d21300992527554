"""The Linux layer: what makes a program written for the kernel run here unchanged.

Program types and their contexts (``programs``, run natively by ``pktrun``), the kernel's maps
(``maps``) and helpers (``stdhelpers``, with what they ask of the host in ``host``), and the
loader of objects built with clang and libbpf's headers: ELF and BTF (``elf``), CO-RE
relocations (``core``), and values decoded through BTF (``btfvalues``). It sits above the ISA,
the engines and the verifier, which know nothing of Linux.
"""
