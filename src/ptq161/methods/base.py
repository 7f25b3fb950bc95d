"""What every quantization method implements (the table of methods is ``ptq161.methods.METHODS``)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from ..calibration import BlockCall, ChannelStats
from ..errors import PTQ161Error

Parts = dict[str, torch.Tensor]  # the stored pieces of one quantized linear layer


@dataclass
class MethodConfig:
    """Base of the typed per-method configs; subclasses validate in ``__post_init__``.

    ``renamed``: earlier names of settings (old name -> field), still read by ``from_dict`` so that
    outputs written before a rename load and resume."""

    renamed: ClassVar[dict[str, str]] = {}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of all settings."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MethodConfig:
        """Rebuild from ``to_dict`` output, rejecting unknown keys."""
        names = {f.name for f in dataclasses.fields(cls)}
        d = {cls.renamed.get(k, k): v for k, v in d.items()}
        unknown = set(d) - names
        if unknown:
            raise PTQ161Error(f"unknown {cls.__name__} settings: {', '.join(sorted(unknown))}")
        return cls(**d)


@dataclass
class BlockContext:
    """Everything a method sees for one decoder block.

    x_fp / x_q: [N, seq, d] inputs of the block in the FP model and in the model whose
    earlier blocks are already quantized; y_fp = F(x_fp) with the original block;
    stats: per-linear input statistics measured on x_fp. groups / absorbers: the adapter's
    ``linear_groups`` and ``scale_absorbers`` (empty: every linear its own group, no absorber).
    """

    index: int
    block: nn.Module
    linears: dict[str, nn.Linear]
    x_fp: torch.Tensor
    x_q: torch.Tensor
    y_fp: torch.Tensor
    stats: dict[str, ChannelStats]
    call: BlockCall
    report: Callable[..., None] = field(default=lambda **_: None)
    groups: tuple[tuple[str, ...], ...] = ()  # the linears grouped by shared input (the adapter's)
    absorbers: dict[str, str] = field(default_factory=dict)  # group's first linear -> module that absorbs scales


@dataclass
class BlockResult:
    """The parts of each quantized linear (keyed by its path in the block) and a log."""

    parts: dict[str, Parts]
    log: dict[str, Any]


@dataclass
class LayerBits:
    """Bit accounting of one layer: the paper's count and what is really stored."""

    numel: int
    paper_bits: float  # bits per weight as the method's paper counts them
    stored_bits: int  # total bits of every stored part


class Method:
    """A block-wise quantization method. Subclasses set ``name`` and ``config_class``."""

    name: ClassVar[str]
    config_class: ClassVar[type[MethodConfig]]

    def __init__(self, config: MethodConfig) -> None:
        self.config = config

    def quantize_block(self, ctx: BlockContext) -> BlockResult:
        """Quantize all linears of ``ctx.block`` in place (write the dequantized weights) and return parts."""
        raise NotImplementedError

    def dequantize(self, parts: Parts) -> torch.Tensor:
        """The dequantized weight [m, n] float32 exactly as ``quantize_block`` wrote it."""
        raise NotImplementedError

    def layer_bits(self, parts: Parts) -> LayerBits:
        """Bit accounting for one layer's parts."""
        raise NotImplementedError

    @property
    def packs(self) -> bool:
        """Whether this method (with its config) has a packed storage format; False = dense "fake-quant" output."""
        return False

    def packed_module(self, parts: Parts, bias: torch.Tensor | None) -> nn.Module:
        """The packed module that replaces a linear with ``parts`` (and ``bias`` [m]); only when ``packs``."""
        raise NotImplementedError(f"method '{self.name}' has no packed format")

    def code_paths(self, device: torch.device) -> dict[str, str]:
        """The machine-dependent choices this method's settings resolve to on ``device`` (e.g. the dtype of
        its training products), recorded with every output: results may differ between them."""
        return {}

    @property
    def trains_end_to_end(self) -> bool:
        """Whether ``trainable_module`` gives modules (the end-to-end stage applies)."""
        return False

    def trainable_module(
        self, parts: Parts, bias: torch.Tensor | None, train_signs: bool = False, device: torch.device | None = None
    ) -> nn.Module | None:
        """A module computing the layer from ``parts`` whose continuous factors train end to end
        (bits unchanged) on ``device`` (None: the CPU), or None when the method has no such stage.
        Its ``parts()`` returns the stored parts; with ``train_signs`` its binary signs train too
        (through a parameter named ``latent``) and ``flipped()`` returns (signs changed, signs)."""
        return None
