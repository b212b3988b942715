"""``DALLEConfig``: every hyper-parameter of a DALLE, built once, stored in checkpoints, built by the CLI.

``DALLE(dim=..., vae=..., depth=...)`` keeps DALLE-pytorch's keyword arguments; they become a
``DALLEConfig`` through ``DALLEConfig.from_kwargs``, which also reads the older spellings this project
and DALLE-pytorch accepted: ``sparse_attn`` (a bool per layer), and the flat pattern options
``conv_kernel_size``, ``conv_dilation``, ``sparse_block_size``, ``sparse_local_blocks`` and
``sparse_global_stride`` (today ``attn_options={"conv_like": {"kernel_size": 3}}``, one entry per pattern
with the fields of its ``Options``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from itertools import cycle, islice
from typing import Any

from ..attention import PATTERNS, check_attn_impl, pattern_options
from .transformer import FF_ACTIVATIONS

IMAGE_POS_EMBS = ("axial", "absolute")  # without rotary embedding: row + column, or one per position

# the flat keywords of the pattern options: keyword -> (pattern, option)
FLAT_PATTERN_OPTIONS = {
    "conv_kernel_size": ("conv_like", "kernel_size"),
    "conv_dilation": ("conv_like", "dilation"),
    "sparse_block_size": ("sparse", "block_size"),
    "sparse_local_blocks": ("sparse", "local_blocks"),
    "sparse_global_stride": ("sparse", "global_stride"),
}


@dataclass(frozen=True)
class DALLEConfig:
    """A DALLE's architecture and training-time options (its VAE is given separately).

    ``attn_types`` holds one pattern per layer (a shorter sequence is cycled through the layers) and
    ``attn_options`` the options of the patterns used, defaults filled in. ``num_text_tokens`` is the
    tokenizer's vocabulary; the model adds one padding token per text position.
    """

    dim: int
    depth: int
    num_text_tokens: int = 10000
    text_seq_len: int = 256
    heads: int = 8
    dim_head: int = 64
    ff_mult: int = 4
    reversible: bool = False
    attn_dropout: float = 0.0
    ff_dropout: float = 0.0
    attn_types: tuple[str, ...] = ("full",)
    attn_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    loss_img_weight: float = 7
    stable: bool = False
    sandwich_norm: bool = False
    shift_tokens: bool = True
    rotary_emb: bool = True
    shared_attn_ids: tuple[int, ...] | None = None
    shared_ff_ids: tuple[int, ...] | None = None
    share_input_output_emb: bool = False
    optimize_for_inference: bool = False  # DALLE-pytorch's flag; generation here is always cached
    attn_impl: str = "auto"
    activation_checkpointing: bool = False
    # a plain GPT's layout (minDALL-E's), each an option of this model: biases on the q, k, v projections,
    # a GELU feed-forward, one learned embedding per image position (when rotary_emb is off; "axial": a
    # row's plus a column's, DALLE-pytorch's), and separate text and image output heads without biases
    qkv_bias: bool = False
    ff_activation: str = "geglu"
    image_pos_emb: str = "axial"
    separate_heads: bool = False
    # None: DALLE-pytorch's text layout (a begin token, then the caption with a padding token of its own
    # per position); a token id: a plain GPT's (the caption from position 0, padded with this one token)
    text_pad_id: int | None = None

    def __post_init__(self) -> None:
        if self.depth < 1:
            raise ValueError(f"depth must be at least 1, got {self.depth}")
        if self.text_seq_len < 1:
            raise ValueError(f"text_seq_len must be positive, got {self.text_seq_len}")
        types = (self.attn_types,) if isinstance(self.attn_types, str) else tuple(self.attn_types)
        if not types:
            raise ValueError("attn_types must name at least one attention type")
        for name in types:
            if name not in PATTERNS:
                raise ValueError(f"unknown attention type {name!r}: choose from {', '.join(PATTERNS)}")
        types = tuple(islice(cycle(types), self.depth))
        unused = sorted(set(self.attn_options) - set(types))
        if unused:
            raise ValueError(f"attn_options for {', '.join(unused)}, which attn_types does not use")
        # every used pattern's options checked (defaults filled in); those of patterns with none not kept
        checked = {
            name: asdict(pattern_options(name, self.attn_options.get(name))) for name in dict.fromkeys(types)
        }
        options = {name: opts for name, opts in checked.items() if opts}
        check_attn_impl(self.attn_impl)
        if self.ff_activation not in FF_ACTIVATIONS:
            raise ValueError(
                f"ff_activation must be one of {', '.join(FF_ACTIVATIONS)}, got {self.ff_activation!r}"
            )
        if self.image_pos_emb not in IMAGE_POS_EMBS:
            raise ValueError(
                f"image_pos_emb must be one of {', '.join(IMAGE_POS_EMBS)}, got {self.image_pos_emb!r}"
            )
        if self.text_pad_id is not None and not 0 <= self.text_pad_id < self.num_text_tokens:
            raise ValueError(
                f"text_pad_id {self.text_pad_id} is not a token of the vocabulary of {self.num_text_tokens}"
            )
        if self.text_pad_id is not None and self.text_seq_len < 2:
            raise ValueError("a plain text layout (text_pad_id) needs text_seq_len >= 2")
        if self.separate_heads and self.share_input_output_emb:
            raise ValueError(
                "separate_heads and share_input_output_emb exclude each other: shared embeddings are the "
                "rows of the one output layer"
            )
        set_ = object.__setattr__  # frozen: normalised once, here
        set_(self, "attn_types", types)
        set_(self, "attn_options", options)
        for key in ("shared_attn_ids", "shared_ff_ids"):
            ids = getattr(self, key)
            set_(self, key, None if ids is None else (ids,) if isinstance(ids, int) else tuple(ids))

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> DALLEConfig:
        """A config from DALLE's keyword arguments, older spellings included (see the module docstring).
        An unknown keyword is a ``TypeError``, as for any function."""
        sparse_attn = kwargs.pop("sparse_attn", False)
        if kwargs.get("attn_types") is None:
            sparse = sparse_attn if isinstance(sparse_attn, Sequence) else (sparse_attn,)
            kwargs["attn_types"] = tuple("sparse" if s else "full" for s in sparse)
        options = {name: dict(opts) for name, opts in (kwargs.pop("attn_options", None) or {}).items()}
        types = (kwargs["attn_types"],) if isinstance(kwargs["attn_types"], str) else kwargs["attn_types"]
        for key, (pattern, option) in FLAT_PATTERN_OPTIONS.items():
            value = kwargs.pop(key, None)
            if value is not None and pattern in types:  # options of unused patterns are not kept
                options.setdefault(pattern, {}).setdefault(option, value)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise TypeError(f"DALLE got an unexpected keyword argument {unknown[0]!r}")
        return cls(attn_options=options, **kwargs)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable (what a checkpoint's meta.json stores as ``model``)."""
        out = asdict(self)
        for key, value in out.items():
            if isinstance(value, tuple):
                out[key] = list(value)
        return out

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> DALLEConfig:
        """The config ``to_dict`` wrote (or an older checkpoint's keyword arguments)."""
        return cls.from_kwargs(**values)
