"""The `recover` stage: retrain the compressed model to imitate the original (distillation),
with its pruning masks, trimmed shapes and quantization grids kept."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path


from ..errors import ConfigValueError
from ..model import Model
from ..nn.ggml_linear import GgmlLinear
from ..stages import StageLog, register_stage
from .data import TrainSet, build_train_set, names_test_split
from .heldout import held_out_evaluation
from .gradual import prunable
from .losses import LossWeights
from .qat import to_fake, to_real
from .trainer import TrainPlan, train

TRAIN = ("blocks", "all")
PRECISIONS = ("fp32", "bf16")
PARALLEL = ("ddp", "fsdp")
DEFAULTS = {  # by model kind: (batch_size, micro_batch, seq_len, holdout, eval)
    # encoders: micro-batches of 8 texts of similar length (trainer), since the mixture holds
    # paragraphs of up to seq_len tokens beside short sentences
    "causal": (8, None, 512, 8, "heldout"),
    "encoder": (32, 8, 128, 600, "fidelity"),
}


@dataclass
class RecoverConfig:
    steps: int = 500  # optimizer steps
    batch_size: int | None = None  # examples per step over all processes (default: 8 windows / 32 sentences)
    micro_batch: int | None = None  # examples per forward pass (gradient accumulation); default: all of a
    # process's share (causal), 8 texts of similar length (encoders)
    seq_len: int | None = None  # tokens per window (causal, default 512) or max per sentence (encoders, 128)
    lr: float = 1e-4
    weight_decay: float = 0.0
    warmup: float = 0.05  # fraction of steps with a linear warm-up
    min_lr_ratio: float = 0.1  # cosine decay ends at this fraction of lr
    clip: float = 1.0  # gradient norm clipping (0: off)
    data: list = field(default_factory=list)  # training text: bundled "name:split" or files; never test
    holdout: int | None = None  # held-out windows (causal, 8) / texts (encoders, 600, split over the sources)
    # what selects the best checkpoint: causal "heldout" (perplexity); encoders "fidelity" (default:
    # mean cosine to the original on the held-out texts), "heldout" (distillation loss there), or a
    # sentence-pair file / "stsb:dev" (Spearman: fits the checkpoint to that task, said in the report)
    eval: str | None = None
    track: list = field(default_factory=list)  # encoders: pair files / "stsb:test" scored at every evaluation,
    # recorded in the history (the report's curve of task score against steps), never used to select
    eval_every: int = 100
    save_every: int = 100  # checkpoint interval (0: only the best)
    patience: int = 0  # stop after this many evaluations without improvement (0: never)
    restore_best: bool = True  # end with the best evaluated weights
    max_minutes: float | None = None  # wall-clock cap on training: stop (evaluated, checkpointed) when reached
    # losses (see losses.py)
    kl: float = 1.0
    temperature: float = 1.0
    ce: float = 0.0
    cosine: float = 1.0
    mse: float = 0.0
    hidden: float = 0.0
    relation: float = 0.0
    layers: float = 0.0  # intermediate-layer matching: every block's output to its teacher block's
    train: str = "blocks"  # blocks (block linears and norms, final norm) | all (also embeddings, head)
    lora: int = 0  # LoRA rank (0: full fine-tuning of what `train` selects)
    lora_alpha: float = 16.0
    prune_to: float | None = None  # gradual magnitude pruning to this sparsity (cubic schedule)
    prune_start: float = 0.0  # fraction of steps where gradual pruning starts
    prune_end: float = 0.5  # ... and reaches prune_to
    prune_every: int = 20  # steps between mask updates
    prune_ignore: list = field(default_factory=list)  # regexes of linears gradual pruning leaves dense
    precision: str = "fp32"  # fp32 | bf16 (autocast)
    parallel: str = "ddp"  # several processes (accelerate launch / torchrun): ddp, or fsdp (sharded; fsdp.py)
    dropout: bool = False  # train with the model's dropout on (off: deterministic, resumable bit for bit)
    seed: int = 0
    checkpoint_dir: str | None = None  # default: beside the output folder (<out>.recover)
    keep_checkpoints: bool = False

    def loss_weights(self) -> LossWeights:
        return LossWeights(**{f: getattr(self, f) for f in LossWeights.__dataclass_fields__})

    def validate(self) -> None:
        ints = {"steps": self.steps, "eval_every": self.eval_every, "prune_every": self.prune_every}
        for name, v in ints.items():
            if v < 1:
                raise ConfigValueError(f"recover {name} must be at least 1 (got {v})")
        for name in ("batch_size", "micro_batch", "seq_len", "holdout"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ConfigValueError(f"recover {name} must be at least 1 (got {v})")
        if self.max_minutes is not None and self.max_minutes <= 0:
            raise ConfigValueError(f"recover max_minutes must be > 0 (got {self.max_minutes})")
        if self.save_every < 0 or self.patience < 0 or self.lora < 0:
            raise ConfigValueError("recover save_every, patience and lora must be >= 0")
        if not self.lr > 0 or not 0 <= self.warmup < 1 or not 0 <= self.min_lr_ratio <= 1 or self.clip < 0:
            raise ConfigValueError("recover needs lr > 0, warmup in [0, 1), min_lr_ratio in [0, 1], clip >= 0")
        weights = [self.kl, self.ce, self.cosine, self.mse, self.hidden, self.relation, self.layers]
        if min(weights) < 0 or not any(weights) or self.temperature <= 0:
            raise ConfigValueError("recover loss weights (kl, ce, cosine, mse, hidden, relation, layers) must be >= 0, "
                                   "not all 0, and temperature > 0")
        if self.train not in TRAIN:
            raise ConfigValueError(f"recover train must be {' or '.join(TRAIN)} (got {self.train!r})")
        if self.precision not in PRECISIONS:
            raise ConfigValueError(f"recover precision must be {' or '.join(PRECISIONS)} (got {self.precision!r})")
        if self.parallel not in PARALLEL:
            raise ConfigValueError(f"recover parallel must be {' or '.join(PARALLEL)} (got {self.parallel!r})")
        if self.parallel == "fsdp" and (self.prune_to is not None or self.lora):
            raise ConfigValueError("recover parallel: fsdp trains the model's own weights without gradual pruning; "
                                   "use parallel: ddp with prune_to or lora")
        if self.prune_to is not None:
            if not 0 < self.prune_to < 1:
                raise ConfigValueError(f"recover prune_to must be in (0, 1) (got {self.prune_to})")
            if not 0 <= self.prune_start < self.prune_end <= 1:
                raise ConfigValueError("recover needs 0 <= prune_start < prune_end <= 1 (fractions of steps)")
            if self.lora:
                raise ConfigValueError("gradual pruning changes the dense weights, which LoRA freezes; "
                                       "use lora: 0 with prune_to")
        for spec in self.data:
            if names_test_split(spec):
                raise ConfigValueError(f"recover data {spec!r}: recovery must not train on the test split; "
                                       "use train or validation")
        if self.eval is not None and names_test_split(self.eval):
            raise ConfigValueError(f"recover eval {self.eval!r}: the best checkpoint must not be chosen on the "
                                   "test split; use heldout or a dev split (stsb:dev)")
        if self.track and not isinstance(self.track, list):
            raise ConfigValueError("recover track must be a list of pair files or bundled sets (e.g. [stsb:test])")
        for rx in self.prune_ignore:
            try:
                re.compile(rx)
            except re.error as e:
                raise ConfigValueError(f"recover prune_ignore regex {rx!r} is invalid ({e})") from None


@dataclass(kw_only=True)
class RecoverLog(StageLog):
    """What a recover did: held-out quality before and after, and what training cost."""
    metric: str  # the held-out evaluation's name
    higher_is_better: bool
    before: float
    after: float
    steps: int  # optimizer steps done
    tokens: int  # training tokens seen
    train_wall_s: float
    best_step: int | None  # the evaluated step whose weights were kept (None: no evaluation)
    stopped_early: bool = False
    stopped_by_time: bool = False
    resumed_from: int | None = None  # the checkpoint's step, when resumed
    qat_layers: int = 0  # quantized linears trained through fake quantization
    lora: int = 0
    data: dict = field(default_factory=dict)  # {"sources", "examples", "heldout", "seq_len"}
    gradual_sparsity: float | None = None  # prune_to: the sparsity gradual pruning reached
    masked_fraction: float | None = None  # zeros kept by the pruning masks, over masked weights
    # detail (results.json; the report shows the curves)
    config: dict = field(default_factory=dict)  # the RecoverConfig as run (defaults resolved), data aside
    history: list[dict] = field(default_factory=list)  # {"step", "loss"} / {"step", "eval"} entries

    DETAIL = ("config", "history")


def _resolved(cfg: RecoverConfig, model: Model) -> RecoverConfig:
    batch, micro, seq, holdout, ev = DEFAULTS[model.kind]
    cfg = dataclasses.replace(cfg, batch_size=cfg.batch_size or batch, seq_len=cfg.seq_len or seq,
                              holdout=cfg.holdout or holdout, eval=cfg.eval or ev,
                              micro_batch=cfg.micro_batch or micro)
    return dataclasses.replace(cfg, micro_batch=min(cfg.micro_batch or cfg.batch_size, cfg.batch_size))


def _fingerprint(model: Model, cfg: RecoverConfig, data: TrainSet) -> str:
    keep = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("checkpoint_dir", "keep_checkpoints")}
    shapes = sorted((n, tuple(p.shape)) for n, p in model.module.state_dict().items())
    blob = json.dumps([model.name, keep, len(data), shapes], default=str, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _select_trainable(model: Model, how: str) -> None:
    prefixes = tuple(b.name + "." for b in model.arch.blocks)
    if model.arch.final_norm:
        prefixes += (model.arch.final_norm + ".",)
    for name, p in model.module.named_parameters():
        p.requires_grad_(how == "all" or name.startswith(prefixes))


def recover(model: Model, original: Model, cfg: RecoverConfig, work_dir: Path | None = None,
            resume: bool = False, progress: bool = True) -> RecoverLog:
    """Distil `original` into `model` in place; returns the stage log."""
    cfg.validate()
    cfg = _resolved(cfg, model)
    if (cfg.hidden or cfg.layers) and model.arch.hidden_size != original.arch.hidden_size:
        raise ConfigValueError("hidden-state and layer distillation need the original's hidden size; the model's "
                               "hidden channels were trimmed: set hidden: 0 and layers: 0 (and for encoders use "
                               "relation instead of cosine)")
    if not model.is_causal and (cfg.cosine or cfg.mse) and model.arch.hidden_size != original.arch.hidden_size:
        raise ConfigValueError("embedding cosine / MSE need the original's width; this encoder's hidden channels "
                               "were trimmed: set cosine: 0, mse: 0 and relation: 1")
    if cfg.prune_to is not None and any(isinstance(m, GgmlLinear) for m in model.module.modules()):
        raise ConfigValueError("recover prune_to keeps pruned weights at zero, which GGML grids hold only "
                               "approximately (affine K-quant mins); prune before quantizing onto ggml grids")
    data = build_train_set(model, cfg.data, cfg.seq_len, cfg.holdout)
    evaluation = held_out_evaluation(model, original, cfg, data)
    qat = to_fake(model)
    if qat and cfg.lora:
        to_real(model, qat)
        raise ConfigValueError("LoRA wraps plain linears, and this model is quantized; put recover before "
                               "quantize, or set lora: 0 to retrain the quantized layers themselves (QAT)")
    _select_trainable(model, cfg.train)
    gradual = None
    if cfg.prune_to is not None:
        names = prunable(model, cfg.prune_ignore)
        gradual = {"names": names, "start": int(cfg.prune_start * cfg.steps), "end": int(cfg.prune_end * cfg.steps),
                   "every": cfg.prune_every, "initial": 0.0, "final": float(cfg.prune_to)}
    if cfg.lora:
        from .lora import add_lora
        model.module = add_lora(model.module, model.arch.linears, cfg.lora, cfg.lora_alpha)
    plan = TrainPlan(
        steps=cfg.steps, batch_size=cfg.batch_size, micro_batch=cfg.micro_batch, lr=cfg.lr,
        weight_decay=cfg.weight_decay, warmup=int(cfg.warmup * cfg.steps), min_lr_ratio=cfg.min_lr_ratio,
        clip=cfg.clip, eval_every=cfg.eval_every, save_every=cfg.save_every, patience=cfg.patience,
        seed=cfg.seed, losses=cfg.loss_weights(),
        fingerprint=_fingerprint(model, cfg, data), precision=cfg.precision, gradual=gradual,
        restore_best=cfg.restore_best, dropout=cfg.dropout, parallel=cfg.parallel,
        blocks=tuple(b.name for b in model.arch.blocks),
        max_s=cfg.max_minutes * 60 if cfg.max_minutes else None)
    own_dir = cfg.checkpoint_dir is None and work_dir is None
    work = Path(cfg.checkpoint_dir or work_dir or tempfile.mkdtemp(prefix="slimformer-recover-"))
    model.module.eval()
    before = evaluation.fn(model)
    try:
        result = train(model, original, data, plan, evaluation, work, resume=resume, progress=progress)
    finally:
        if own_dir:
            shutil.rmtree(work, ignore_errors=True)
    if cfg.lora:
        from .lora import merge_lora
        model.module = merge_lora(model.module)
    for p in model.module.parameters():
        p.requires_grad_(True)  # as loaded: a later stage (Taylor scores, another recover) may need gradients
    model.apply_masks()
    to_real(model, qat)
    model.module.eval()
    after = evaluation.fn(model)
    if not cfg.keep_checkpoints and not own_dir:
        shutil.rmtree(work, ignore_errors=True)
    log = RecoverLog(
        stage="recover", metric=evaluation.name, higher_is_better=evaluation.higher_is_better,
        before=before, after=after, steps=result.steps_done, tokens=result.tokens, train_wall_s=result.wall_s,
        best_step=result.best_step, stopped_early=result.stopped_early, stopped_by_time=result.stopped_by_time,
        resumed_from=result.resumed_from, qat_layers=len(qat), lora=cfg.lora,
        data={"sources": data.sources, "examples": len(data), "heldout": len(data.heldout), "seq_len": data.seq_len,
              "mixture": data.mixture},
        config={k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("data",)},
        history=result.history)
    if gradual:
        log.gradual_sparsity = result.sparsity
    if model.masks:
        zero = sum(int((~m).sum()) for m in model.masks.values())
        log.masked_fraction = zero / max(1, sum(m.numel() for m in model.masks.values()))
    return log


@register_stage("recover", RecoverConfig, doc="retrain by distillation from the original (KL / cosine), "
                "masks and quantization kept (QAT), optional LoRA and gradual pruning")
def run(model: Model, cfg: RecoverConfig, ctx) -> tuple[Model, RecoverLog]:
    log = recover(model, ctx.original, cfg, getattr(ctx, "work_dir", None), getattr(ctx, "resume", False),
                  progress=ctx.progress)
    return model, log
