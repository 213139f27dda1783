"""The CPU instruction set a spec requires, as required node affinity on Node Feature Discovery
labels, merged into the user's own affinity without ever loosening it."""

from __future__ import annotations

import copy

NFD_PREFIX = "feature.node.kubernetes.io/cpu-cpuid."
# Each level includes the ones below it, as on real hardware. avx512 is OpenVINO's avx512_core
# (F, BW, VL); amx adds the tile and bf16 units its bf16 and int8 kernels use.
ISA_FEATURES = {
    "avx2": ("AVX2",),
    "avx512": ("AVX2", "AVX512F", "AVX512BW", "AVX512VL"),
    "amx": ("AVX2", "AVX512F", "AVX512BW", "AVX512VL", "AMXTILE", "AMXBF16"),
}


def isa_expressions(min_isa: str) -> list[dict]:
    return [{"key": NFD_PREFIX + feature, "operator": "In", "values": ["true"]} for feature in ISA_FEATURES[min_isa]]


def merge_affinity(user_affinity: dict, min_isa: str) -> dict:
    """The user's affinity with the ISA requirement added to every required node selector term.

    Terms are ORed and expressions within a term ANDed, so the requirement goes into each term: the
    user can narrow where pods run, never widen it past the instruction set.
    """
    affinity = copy.deepcopy(user_affinity or {})
    node = affinity.setdefault("nodeAffinity", {})
    required = node.setdefault("requiredDuringSchedulingIgnoredDuringExecution", {})
    terms = required.get("nodeSelectorTerms") or [{}]
    for term in terms:
        own = term.get("matchExpressions", [])
        term["matchExpressions"] = own + [expr for expr in isa_expressions(min_isa) if expr not in own]
    required["nodeSelectorTerms"] = terms
    return affinity
