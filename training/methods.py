"""Self-supervised methods: small modules around a backbone, each with its loss as a plain function.

- SimSiam (Chen & He, "Exploring Simple Siamese Representation Learning", CVPR 2021): Eq. 1 and 4,
  symmetric negative cosine between predictor output and stop-gradient projection.
- RotNet (Gidaris et al., "Unsupervised Representation Learning by Predicting Image Rotations",
  ICLR 2018): 4-way cross-entropy on rotations by 0/90/180/270 degrees (Sec. 2.1-2.2).
- MoBY (Xie et al., "Self-Supervised Learning with Swin Transformers", 2021, Sec. 3; used by MoBYv2AL,
  Caramalau et al. 2022): MoCo v2's key queues and InfoNCE (He et al. 2020, Eq. 1) with BYOL's asymmetric
  predictor and momentum target (Grill et al. 2020, Eq. 1-2). Defaults: tau 0.2, momentum 0.99 -> 1,
  queue 4096.

Every method maps a batch of two (or, RotNet, one) augmented views to a scalar loss; the embedding the
exporters serve is always the backbone's output (``Encoder``), never a projection head's.

Each method is one ``SSLMethod`` subclass that declares what ``training.pretrain.pretrain`` (the one
shared loop) needs to know about it: its published ``defaults`` (lr, weight decay, batch), its views
(``views`` / ``make_views``), whether its encoder needs the rotation head, its constructor keywords
(``option_names``), and its hooks (``before_step``, ``after_step``, ``fixed_lr_params``,
``knn_encoder``). A new method is one subclass plus one line in ``training.modes.METHOD_CLASSES`` (which
``METHODS`` reads).
"""

from __future__ import annotations

import copy
import inspect
import json
import math
import pkgutil
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, cast

import torch
import torch.nn.functional as F
from torch import nn

from shortlist.manifest import Preprocess
from training.augment import AugmentConfig, augment
from training.modes import METHOD_CLASSES


class Encoder(nn.Module):
    """Backbone plus optional heads: Nx3xHxW -> (embedding NxD, logits NxC or None, rotation NxR or None).

    This is what gets exported: ``embedding`` is the backbone feature, ``logits`` the classifier
    (fine-tuned models), ``rotation_logits`` the RotNet head (4 rotations).
    """

    def __init__(self, backbone: nn.Module, num_classes: int = 0, rotation_head: bool = False) -> None:
        super().__init__()
        self.backbone = backbone
        self.dim = int(backbone.out_dim)  # type: ignore[arg-type]
        self.classifier: nn.Linear | None = nn.Linear(self.dim, num_classes) if num_classes else None
        self.rotation: nn.Linear | None = nn.Linear(self.dim, 4) if rotation_head else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)  # type: ignore[no-any-return]


def mlp(dims: list[int], last_bn: bool = True, last_bn_affine: bool = True) -> nn.Sequential:
    """Linear(-BN-ReLU) stack; ``dims`` = [in, hidden..., out]. Biases off where BN follows."""
    layers: list[nn.Module] = []
    for i in range(len(dims) - 1):
        last = i == len(dims) - 2
        bn = not last or last_bn
        layers.append(nn.Linear(dims[i], dims[i + 1], bias=not bn))
        if bn:
            layers.append(nn.BatchNorm1d(dims[i + 1], affine=last_bn_affine or not last))
        if not last:
            layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


# ---------------------------------------------------------------------------------------------- losses


def simsiam_loss(p1: torch.Tensor, p2: torch.Tensor, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """SimSiam, Chen & He 2021, Eq. 4: L = D(p1, sg(z2))/2 + D(p2, sg(z1))/2, D = -cosine (Eq. 1).

    p1, p2: NxP predictor outputs; z1, z2: NxP projections. Scalar in [-1, 1]; -1 is perfect agreement.
    """
    return -(F.cosine_similarity(p1, z2.detach(), dim=-1).mean()
             + F.cosine_similarity(p2, z1.detach(), dim=-1).mean()) / 2


def rotation_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """RotNet, Gidaris et al. 2018, Eq. 1-2: mean cross-entropy of (4N)x4 logits vs rotation index (nats)."""
    return F.cross_entropy(logits.float(), targets)


def info_nce(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, tau: float,
             reduction: str = "mean") -> torch.Tensor:
    """MoCo InfoNCE, He et al. 2020, Eq. 1: -log exp(q.k/tau) / (exp(q.k/tau) + sum_queue exp(q.n/tau)).

    q: NxP queries, k: NxP positive keys (no gradient), queue: KxP negatives; all L2-normalised here.
    Scalar (``reduction="none"``: N per-sample values), nats.
    """
    q = F.normalize(q.float(), dim=1)
    k = F.normalize(k.detach().float(), dim=1)
    pos = (q * k).sum(dim=1, keepdim=True)  # Nx1
    neg = q @ F.normalize(queue.float(), dim=1).T  # NxK
    logits = torch.cat([pos, neg], dim=1) / tau
    return F.cross_entropy(logits, torch.zeros(len(q), dtype=torch.long, device=q.device), reduction=reduction)


def rotate_batch(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Nx3xHxW (H == W) -> (4N)x3xHxW rotated by 0, 90, 180, 270 degrees, and (4N) rotation indices."""
    views = [torch.rot90(x, r, dims=(2, 3)) for r in range(4)]
    targets = torch.arange(4, device=x.device).repeat_interleave(len(x))
    return torch.cat(views), targets


# --------------------------------------------------------------------------------------------- methods


@dataclass(frozen=True)
class MethodDefaults:
    """A method's published training settings: base lr per 256 images, SGD weight decay, global batch."""

    lr: float
    weight_decay: float
    batch_size: int


class SSLMethod(nn.Module):
    """What every self-supervised method declares for the shared pretraining loop (``pretrain``).

    Subclasses set ``defaults`` (and ``views`` / ``rotation_head`` when not 2 / False), take the
    ``Encoder`` as their first constructor argument and only keyword options after it (those become
    ``method_options`` / config.json), fill ``self.options`` with every option's value, and return a
    scalar loss from ``forward(*views)``. The hooks below default to doing nothing.
    """

    defaults: ClassVar[MethodDefaults]
    views: ClassVar[int] = 2  # augmented views per image that ``forward`` takes
    rotation_head: ClassVar[bool] = False  # the Encoder needs its 4-way rotation head (RotNet)
    resume_hint: ClassVar[str] = ""  # added to the error when a --resume checkpoint does not fit the model
    encoder: Encoder
    options: dict[str, Any]

    @classmethod
    def option_names(cls) -> set[str]:
        """The constructor keywords ``method_options`` may set (every parameter after the encoder)."""
        return set(cls.option_defaults())

    @classmethod
    def option_defaults(cls) -> dict[str, Any]:
        """Each constructor keyword's default (``inspect.Parameter.empty`` for one without); the type of a
        default is what ``parse_method_options`` converts a --method-option value to."""
        params = list(inspect.signature(cls.__init__).parameters.values())[2:]
        return {p.name: p.default for p in params}

    def make_views(self, images: torch.Tensor, pre: Preprocess, aug: AugmentConfig, gen: torch.Generator,
                   channels_last: bool) -> list[torch.Tensor]:
        """The inputs of one step from a uint8 Bx3xHxW batch on the device: ``views`` independent
        augmentations at ``pre``'s size (RotNet rotates inside ``forward``)."""
        return [augment(images, pre, aug, gen, channels_last) for _ in range(self.views)]

    def before_step(self, progress: float) -> None:
        """Called before each step's forward with the run's progress in [0, 1] (MoBY: momentum schedule)."""

    def after_step(self, progress: float) -> None:
        """Called after each optimizer step with the progress the step ran at."""

    def fixed_lr_params(self) -> list[nn.Parameter]:
        """Parameters kept at the base lr instead of following the schedule (SimSiam's predictor)."""
        return []

    def knn_encoder(self) -> nn.Module:
        """The module whose output the periodic and final kNN checks embed."""
        return self.encoder


class SimSiam(SSLMethod):
    """Backbone + projector (CIFAR: 2 layers, BN on the output; Sec. 4.1 / appendix D) + predictor
    (bottleneck proj_dim -> pred_dim -> proj_dim, Sec. 3). Two views Nx3xHxW -> scalar loss.

    Head widths: the paper's are 2048 / 512 (pass ``proj_dim=2048, pred_dim=512`` for its recipe). Ours
    default to 256 / 64: with resnet18_w32 (256-d features) in short CPU runs they gave a better kNN accuracy
    than 2048 / 512 (docs/training.md, "Equal-time runs"), and a step is cheaper.

    Defaults (Chen & He 2021, appendix D: SGD, lr 0.03 x B/256 at B=512, wd 5e-4, predictor lr fixed): we
    use 0.06 x B/256 (the value lightly / solo-learn CIFAR benchmarks use), which converges faster in short
    runs."""

    defaults = MethodDefaults(lr=0.06, weight_decay=5e-4, batch_size=512)
    resume_hint = "SimSiam runs from before its heads defaulted to 256 / 64 need --proj-dim 2048 --pred-dim 512"

    def __init__(self, encoder: Encoder, proj_dim: int = 256, pred_dim: int = 64) -> None:
        super().__init__()
        self.encoder = encoder
        self.projector = mlp([encoder.dim, proj_dim, proj_dim], last_bn=True)
        self.predictor = mlp([proj_dim, pred_dim, proj_dim], last_bn=False)
        self.options: dict[str, Any] = {"proj_dim": proj_dim, "pred_dim": pred_dim}  # recorded in config.json

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        # both views in one backbone pass: one big batch is faster than two on CPU; BN statistics are
        # per-view in the reference, here over the pair (a common, harmless variant)
        z = self.projector(self.encoder(torch.cat([x1, x2])))
        p = self.predictor(z)
        z1, z2 = z.float().chunk(2)
        p1, p2 = p.float().chunk(2)
        return simsiam_loss(p1, p2, z1, z2)

    def predictor_params(self) -> list[nn.Parameter]:
        return list(self.predictor.parameters())

    def fixed_lr_params(self) -> list[nn.Parameter]:
        # Chen & He 2021, Sec. 4.2 ("Predictor"): a constant predictor lr works better
        return self.predictor_params()


class RotNet(SSLMethod):
    """Backbone + linear 4-way rotation head (the encoder's ``rotation`` head). One view -> scalar loss.

    Defaults: Gidaris et al. 2018, Sec. 3: SGD lr 0.1, wd 5e-4, B=128."""

    defaults = MethodDefaults(lr=0.1, weight_decay=5e-4, batch_size=128)
    views = 1
    rotation_head = True

    def __init__(self, encoder: Encoder) -> None:
        super().__init__()
        if encoder.rotation is None:
            raise ValueError("RotNet needs an Encoder built with rotation_head=True")
        self.encoder = encoder
        self.options: dict[str, Any] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rotated, targets = rotate_batch(x)
        assert self.encoder.rotation is not None
        return rotation_loss(self.encoder.rotation(self.encoder(rotated)), targets)


class MoBY(SSLMethod):
    """Online (encoder + projector + predictor) vs momentum target (encoder + projector), two key queues.

    Loss (MoBY Sec. 3): info_nce(q1, k2, queue2) + info_nce(q2, k1, queue1); then the target is
    updated by EMA with momentum ``m`` (raised to 1 by a cosine schedule, ``set_progress``) and the
    keys enqueued. Defaults (MoCo v2 CIFAR): SGD lr 0.06 x B/256, wd 5e-4, B=512.
    """

    defaults = MethodDefaults(lr=0.06, weight_decay=5e-4, batch_size=512)

    def __init__(self, encoder: Encoder, proj_dim: int = 256, hidden: int = 2048, queue: int = 4096,
                 tau: float = 0.2, momentum: float = 0.99) -> None:
        super().__init__()
        self.encoder = encoder
        self.projector = mlp([encoder.dim, hidden, proj_dim], last_bn=True)
        self.predictor = mlp([proj_dim, hidden, proj_dim], last_bn=True)
        self.target_encoder = copy.deepcopy(encoder)
        self.target_projector = copy.deepcopy(self.projector)
        for p in [*self.target_encoder.parameters(), *self.target_projector.parameters()]:
            p.requires_grad_(False)
        self.tau, self.base_momentum, self.momentum = tau, momentum, momentum
        self.options: dict[str, Any] = {"proj_dim": proj_dim, "hidden": hidden, "queue": queue, "tau": tau,
                                        "momentum": momentum}
        self.register_buffer("queue1", F.normalize(torch.randn(queue, proj_dim), dim=1))
        self.register_buffer("queue2", F.normalize(torch.randn(queue, proj_dim), dim=1))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    def set_progress(self, frac: float) -> None:
        """Cosine momentum schedule, BYOL Sec. 3.3 ("Implementation details"): m = 1 - (1 - m0)(cos(pi t / T) + 1)/2."""
        self.momentum = 1 - (1 - self.base_momentum) * (math.cos(math.pi * min(frac, 1.0)) + 1) / 2

    def before_step(self, progress: float) -> None:
        self.set_progress(progress)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        q = self.predictor(self.projector(self.encoder(torch.cat([x1, x2]))))
        q1, q2 = q.chunk(2)
        with torch.no_grad():
            self._momentum_update()
            k = self.target_projector(self.target_encoder(torch.cat([x1, x2])))
            k1, k2 = k.float().chunk(2)
        # snapshots: autograd keeps the negatives for the backward pass, and _enqueue overwrites in place
        queue1, queue2 = cast(torch.Tensor, self.queue1).clone(), cast(torch.Tensor, self.queue2).clone()
        loss = info_nce(q1, k2, queue2, self.tau) + info_nce(q2, k1, queue1, self.tau)
        self._enqueue(k1, k2)
        return loss

    @torch.no_grad()
    def per_sample_loss(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        """The loss of ``forward`` per image (N), without the momentum update or enqueueing: what
        MoBYv2AL Sec. 4.2 ranks unlabelled samples by."""
        q1, q2 = self.predictor(self.projector(self.encoder(torch.cat([x1, x2])))).chunk(2)
        k1, k2 = self.target_projector(self.target_encoder(torch.cat([x1, x2]))).float().chunk(2)
        queue1, queue2 = cast(torch.Tensor, self.queue1), cast(torch.Tensor, self.queue2)
        return (info_nce(q1, k2, queue2, self.tau, reduction="none")
                + info_nce(q2, k1, queue1, self.tau, reduction="none"))

    @torch.no_grad()
    def _momentum_update(self) -> None:
        m = self.momentum
        for online, target in ((self.encoder, self.target_encoder), (self.projector, self.target_projector)):
            for po, pt in zip(online.parameters(), target.parameters(), strict=True):
                pt.mul_(m).add_(po.detach(), alpha=1 - m)
            for bo, bt in zip(online.buffers(), target.buffers(), strict=True):
                bt.copy_(bo)

    @torch.no_grad()
    def _enqueue(self, k1: torch.Tensor, k2: torch.Tensor) -> None:
        k1, k2 = _all_gather(F.normalize(k1, dim=1)), _all_gather(F.normalize(k2, dim=1))
        q1, q2, qptr = cast(torch.Tensor, self.queue1), cast(torch.Tensor, self.queue2), cast(torch.Tensor,
                                                                                              self.queue_ptr)
        size = q1.shape[0]
        n = min(len(k1), size)
        ptr = int(qptr.item())
        idx = (torch.arange(n, device=k1.device) + ptr) % size
        q1[idx] = k1[:n].to(q1.dtype)
        q2[idx] = k2[:n].to(q2.dtype)
        qptr.fill_((ptr + n) % size)


def _all_gather(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` over DDP ranks (identity when not distributed)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


class _Methods(Mapping[str, type[SSLMethod]]):
    """training.modes.METHOD_CLASSES (the one registry, torch-free) with each class resolved when it is asked for:
    read live, so a method registered there is here too, and a wrong entry names itself."""

    def __getitem__(self, name: str) -> type[SSLMethod]:
        target = METHOD_CLASSES[name]
        cls = pkgutil.resolve_name(target)
        if not (isinstance(cls, type) and issubclass(cls, SSLMethod)):
            raise TypeError(f"training.modes.METHOD_CLASSES[{name!r}] = {target!r} is not an SSLMethod subclass")
        return cls

    def __iter__(self) -> Iterator[str]:
        return iter(METHOD_CLASSES)

    def __len__(self) -> int:
        return len(METHOD_CLASSES)


# Method name -> class (``--method``); a new method registers in training.modes.METHOD_CLASSES, not here.
METHODS: Mapping[str, type[SSLMethod]] = _Methods()


def check_method_options(method: str, options: Iterable[str]) -> None:
    """ValueError unless ``method`` is a METHODS name and every name in ``options`` one of its constructor
    keywords (the message lists the valid ones)."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; valid: {', '.join(METHODS)}")
    names = METHODS[method].option_names()
    if bad := sorted(set(options) - names):
        raise ValueError(f"{method} has no option {', '.join(bad)}; valid: {', '.join(sorted(names)) or 'none'}")


def parse_method_options(method: str, items: Iterable[str]) -> dict[str, Any]:
    """``--method-option KEY=VALUE`` items -> ``method_options`` of ``method``: each KEY checked against its
    constructor keywords (``check_method_options``), each VALUE converted to the type of the keyword's default
    (bool: true/false; no default: a JSON value, else the text). ValueError saying which item is wrong."""
    raw: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--method-option {item!r}: give KEY=VALUE (e.g. proj_dim=128)")
        raw[key.strip()] = value.strip()
    check_method_options(method, raw)
    defaults = METHODS[method].option_defaults()
    return {key: _option_value(method, key, value, defaults[key]) for key, value in raw.items()}


def _option_value(method: str, key: str, text: str, default: Any) -> Any:
    kind = type(default) if isinstance(default, (bool, int, float, str)) else None
    if kind is None:  # no default to go by
        try:
            return json.loads(text)
        except ValueError:
            return text
    if kind is bool and text.lower() in ("true", "false", "1", "0", "yes", "no"):
        return text.lower() in ("true", "1", "yes")
    if kind is not bool:
        try:
            return kind(text)
        except ValueError:
            pass
    takes = {bool: "true or false", int: "an integer", float: "a number"}.get(kind, "a string")
    raise ValueError(f"--method-option {key}={text}: {method}'s {key} takes {takes} (default {default})")


def build_method(method: str, encoder: Encoder, **options: Any) -> SSLMethod:
    """A self-supervised method module by name; ValueError listing the valid names otherwise.
    ``options`` are the method's constructor keywords (e.g. SimSiam's ``proj_dim`` / ``pred_dim``)."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; valid: {', '.join(METHODS)}")
    return METHODS[method](encoder, **options)
