"""Facts of the target's memory (x86-64 Linux), written once for every layer."""

from __future__ import annotations

PAGE_SIZE = 4096  # what one copy-on-write break copies: an order-0 page
USER_ADDRESS_END = 0x800000000000  # user addresses lie below (bpf: USER_ADDR_END)
