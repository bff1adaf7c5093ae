"""TrainedNetwork: a run's whole network (every unit with its head, or BP's classifier) as one
nn.Module, with the run's normalisation and vote, computing what `ffpipe eval`'s stage computes.

Input everywhere: pixel values in [0, 1] (uint8 images divided by 255, as the loader does),
N x C x H x W at the run's input shape; the module normalises them with the training mean and std.
`forward` gives the vote's class probabilities (B x C) and every unit's goodness (B x U x C; a BP
run's logits as its one unit): what export writes. `predict` answers with class, confidence and
the unit that answered, with early exit.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn

from ffpipe.baselines.classic_ff import prepare_eval
from ffpipe.errors import FFPipeError
from ffpipe.inference.votes import VoteRule


@dataclass
class Predictions:
    labels: torch.Tensor      # B, the class index
    confidence: torch.Tensor  # B, the answering vote's probability of that class
    exit_unit: torch.Tensor   # B, the unit after which it answered
    classes: list[str]        # class names by index

    @property
    def names(self) -> list[str]:
        return [self.classes[i] for i in self.labels.tolist()]


@dataclass(frozen=True)
class Numerics:
    """How the run's stage computes on this device (pipeline/stage.py): autocast dtype, what the
    images are cast to, channels_last; `overlay_labels`: classic FF's input (every label overlaid)."""
    amp_dtype: torch.dtype | None = None
    input_dtype: torch.dtype | None = None
    channels_last: bool = False
    overlay_labels: bool = False


class TrainedNetwork(nn.Module):
    def __init__(self, learners: nn.ModuleList, rule: VoteRule, data: dict, numerics: Numerics,
                 batch_size: int = 1024):
        """`data`: the run's data.json (in_shape, classes, mean, std); `batch_size`: of predict's
        chunks (the run's train.eval_batch_size: the batches ffpipe eval scored)."""
        super().__init__()
        self.learners, self.rule, self.numerics, self.batch_size = learners, rule, numerics, batch_size
        self.in_shape = tuple(data["in_shape"])
        self.classes = list(data["classes"])
        self.eval_crop = float(data.get("eval_crop", 1.0))  # how ffpipe predict crops files (images.py)
        self.register_buffer("mean", torch.tensor(data["mean"]).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(data["std"]).view(1, -1, 1, 1))
        self.eval()

    @property
    def num_units(self) -> int:
        return self.rule.num_units

    def normalise(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels in [0, 1] -> the first unit's input, as the loader and stage 0 make it."""
        x = (pixels.to(self.mean.device, torch.float32) - self.mean) / self.std
        if self.numerics.input_dtype is not None:
            x = x.to(self.numerics.input_dtype)
        if self.numerics.overlay_labels:
            x = prepare_eval(x, len(self.classes))
        if self.numerics.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def _autocast(self):
        dtype = self.numerics.amp_dtype
        return contextlib.nullcontext() if dtype is None else \
            torch.autocast(self.mean.device.type, dtype=dtype, cache_enabled=False)

    def units(self, pixels: torch.Tensor):
        """(goodness B x C, vote B x C) of every unit in turn, as the stage's eval_step makes them."""
        x, skips = self.normalise(pixels), ()
        with self._autocast():
            for learner in self.learners:
                out = learner(x, skips, None, self.numerics.amp_dtype)
                x, skips = out.x, out.skips
                yield out.scores_BC, learner.vote(out.scores_BC)

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(the vote's class probabilities B x C, every unit's goodness B x U x C)."""
        scores, votes = zip(*self.units(pixels))
        scores_BUC, votes_BUC = torch.stack(scores, dim=1).float(), torch.stack(votes, dim=1)
        return self.rule.decide(scores_BUC, votes_BUC)[1], scores_BUC

    @torch.no_grad()
    def predict(self, images, exit_at: int | None = None, min_confidence: float | None = None,
                batch_size: int | None = None) -> Predictions:
        """Classes of `images` (uint8 0..255 or float 0..1, N x C x H x W; N x H x W for one
        channel) by the run's vote. `exit_at=k`: answer after unit k with the vote of units
        0..k; `min_confidence=p`: each image answers after the first unit whose vote so far
        gives its top class a probability of at least p (else after the vote's last unit)."""
        pixels = self.pixels(images)
        stop = self._exit_unit(exit_at)
        if min_confidence is not None and not 0 <= min_confidence <= 1:
            raise FFPipeError(f"min_confidence = {min_confidence}: a probability, between 0 and 1")
        chunk = batch_size or self.batch_size
        parts = [self._predict_batch(pixels[i:i + chunk], stop, min_confidence)
                 for i in range(0, len(pixels), chunk)]
        labels, confidence, exit_unit = (torch.cat(p) for p in zip(*parts)) if parts else \
            (torch.zeros(0, dtype=torch.long), torch.zeros(0), torch.zeros(0, dtype=torch.long))
        return Predictions(labels.cpu(), confidence.cpu(), exit_unit.cpu(), self.classes)

    def _exit_unit(self, exit_at: int | None) -> int:
        if exit_at is None:
            return self.rule.last_unit
        if not 0 <= exit_at < self.num_units:
            raise FFPipeError(f"exit_at = {exit_at}: this network has units 0..{self.num_units - 1}")
        return min(exit_at, self.rule.last_unit)

    def pixels(self, images) -> torch.Tensor:
        """`images` as float pixels in [0, 1] at the run's input shape (one-line error otherwise)."""
        x = torch.as_tensor(images)
        if x.dim() == 3 and self.in_shape[0] == 1:
            x = x.unsqueeze(1)
        if x.dim() != 4 or tuple(x.shape[1:]) != self.in_shape:
            raise FFPipeError(f"images of shape {list(x.shape)}, but this network takes N x "
                              f"{' x '.join(map(str, self.in_shape))} (C x H x W); resize them to it "
                              "(ffpipe predict does, from image files)")
        return x.float().div_(255) if x.dtype == torch.uint8 else x.float()

    def _predict_batch(self, pixels: torch.Tensor, stop: int, min_confidence: float | None):
        """(labels, confidence, exit unit) of one batch; units past `stop`, or past the point
        where every image has answered, are not run."""
        n = len(pixels)
        labels = torch.zeros(n, dtype=torch.long, device=self.mean.device)
        confidence, exit_unit = torch.zeros(n, device=labels.device), torch.full_like(labels, stop)
        pending = torch.ones(n, dtype=torch.bool, device=labels.device)
        scores, votes = [], []
        for k, (s_BC, v_BC) in enumerate(self.units(pixels)):
            scores.append(s_BC.float())
            votes.append(v_BC)
            if k == stop:
                break
            if min_confidence is not None:
                probs = self.rule.upto(torch.stack(votes, dim=1))
                top, label = probs.max(dim=1)
                done = pending & (top >= min_confidence)
                labels[done], confidence[done], exit_unit[done] = label[done], top[done], k
                pending &= ~done
                if not bool(pending.any()):  # every image has answered: no need for deeper units
                    return labels, confidence, exit_unit
        scores_BUC, votes_BUC = torch.stack(scores, dim=1), torch.stack(votes, dim=1)
        if stop == self.rule.last_unit:  # the run's own vote, exactly as ffpipe eval casts it
            decision, probs = self.rule.decide(scores_BUC, votes_BUC)
            label = decision.argmax(dim=1)
        else:
            probs = self.rule.upto(votes_BUC)
            label = probs.argmax(dim=1)
        labels[pending], confidence[pending] = label[pending], probs.gather(1, label[:, None])[pending, 0]
        return labels, confidence, exit_unit
