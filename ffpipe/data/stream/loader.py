"""StreamLoader: training or evaluation batches of a streamed split on the device, with the
interface of DeviceLoader (len, batches(epoch, start)).

Three things run at once: the shard reader (reader.py); threads that turn the next batches'
rows into image crops (decoders.py; `ahead` batches in the making, each made whole by one
thread, so a batch never depends on which thread made it); and the consumer, which takes rows
in order, hands them out and normalises each batch as it takes it. On a GPU the crops are made on
each thread's own CUDA stream, so they overlap the training step; the consumer's stream waits for
them.
"""
from __future__ import annotations

import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import nullcontext
from typing import Callable, Iterator

import numpy as np
import torch

from ffpipe.data.loader import batches_per_epoch, cut_out
from ffpipe.data.stream.crops import batch_draws, cutout_centres, eval_box, mirrors, train_box
from ffpipe.data.stream.decoders import CpuDecoder, GpuDecoder, codecs
from ffpipe.data.stream.order import EpochOrder, epoch_order
from ffpipe.data.stream.reader import ShardStore
from ffpipe.data.stream.split import StreamSplit

GPU_WORKERS = 2
KeepRows = Callable[[int], slice]  # a batch's row count -> the rows this process uses (replicas)


class StreamLoader:
    def __init__(self, split: StreamSplit, batch_size: int, device: torch.device, mean: list[float],
                 std: list[float], *, train: bool, seed: int = 0, flip: bool = True,
                 augment: bool = True, decode: str = "auto", threads: int = 1, window: int = 8192,
                 ahead: int = 3, workers: int = 0, drop_last: bool = True, cutout: int = 0,
                 dtype: torch.dtype = torch.float32, keep_rows: KeepRows | None = None,
                 jpeg_decoder: str = "auto"):
        """`decode`: 'gpu' (nvJPEG), 'cpu' (PIL on `threads` threads) or 'auto' (gpu on a GPU);
        `augment`: training crops random-resized (else the centre crop, still shuffled);
        `cutout`: the side of data.cutout's square (training);
        `window`: rows shuffled together (order.py); `ahead`: batches in the making; `workers`:
        batches made at once (0: one on CPU, where each batch's images share the threads; two on
        the GPU, so one batch's crops are launched while the next is decoded); `keep_rows`: for
        one of several replicas of stage 0, its rows of every batch (it decodes only those);
        `jpeg_decoder`: the GPU path's JPEG library (decoders.codecs)."""
        self.split, self.batch_size, self.device = split, batch_size, device
        self.train, self.seed, self.window = train, seed, window
        self.augment = augment and train
        self.flip = flip and self.augment
        self.cutout = cutout if train else 0
        self.gpu = decode == "gpu" or (decode == "auto" and device.type == "cuda")
        self.threads, self.dtype = threads, dtype
        self.codec = codecs(jpeg_decoder) if self.gpu else None  # a library that does not load: said now
        self.workers = workers or (GPU_WORKERS if self.gpu else 1)
        self.ahead = max(ahead, self.workers)
        self._local = threading.local()
        self.drop_last = drop_last and train
        self.cuts = keep_rows is not None
        self.keep_rows = keep_rows or (lambda n: slice(0, n))
        self.mean = torch.tensor(mean, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, device=device).view(1, -1, 1, 1)
        self.host = True  # never the whole split on the device (DeviceLoader's question)
        # (first row, rows of the whole batch) of the batch last yielded, where keep_rows cuts it
        self.shard: tuple[int, int] | None = None
        self.seconds: dict[str, float] = {}  # per phase, summed over the epochs streamed (bench stream)
        self._prepared: tuple[tuple[int, int], EpochOrder, ShardStore] | None = None  # ((epoch, start), ...)

    def __len__(self) -> int:
        return batches_per_epoch(len(self.split), self.batch_size, self.drop_last)

    @property
    def decodes_beside_step(self) -> bool:
        """Whether its decoding runs on CPU threads beside a GPU's training step rather than in
        its way (the balancer then counts stage 0 as the longer of the two, not their sum): PIL
        or nvImageCodec's CPU backend feeding a GPU. nvJPEG's calls wait for the work queued on
        the GPU, and on a CPU the step and the decoding share the cores."""
        return decodes_beside_step(self.device, self.codec.name if self.gpu else "pil")

    def batches(self, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(normalised images, labels) of batches start, start+1, ... of `epoch`."""
        order, store = self._store(epoch, start)
        decoder = GpuDecoder(self.device, self.threads, self.codec) if self.gpu else CpuDecoder(self.threads)
        pool = ThreadPoolExecutor(self.workers, thread_name_prefix="ffpipe-crops")
        pending: deque[Future] = deque()
        upcoming = iter(range(start, len(self)))
        next_asked = False

        def refill() -> None:
            """Keep `ahead` batches in the making. Rows are taken here, in order (the store is
            not shared between threads); decoding and cropping run on the pool. Once this
            training epoch's last shard is asked for, the next epoch's first window is read."""
            nonlocal next_asked
            while len(pending) < self.ahead:
                b = next(upcoming, None)
                if b is None:
                    break
                pending.append(pool.submit(self._make, epoch, b, self._rows(order, b, store), decoder))
            if self.train and store.all_asked and not next_asked:
                next_asked = True
                self._prepare(epoch + 1)

        try:
            refill()
            while pending:
                x, y, done, self.shard, centres = pending.popleft().result()
                refill()  # before this batch is handed over: the next ones decode during its step
                yield self._finish(x, y, done, centres)
        finally:
            for future in pending:
                future.cancel()
            pool.shutdown(wait=True)
            store.close()
            decoder.close()
            for phase, spent in [("read", store.read_s), *decoder.seconds.items()]:
                self.seconds[phase] = self.seconds.get(phase, 0.0) + spent

    def _store(self, epoch: int, start: int) -> tuple[EpochOrder, ShardStore]:
        """The epoch's order and shard store: the one `_prepare` made while the last epoch ended
        where it is for this epoch and start, else a new one."""
        prepared = self._prepared
        if prepared is not None and prepared[0] == (epoch, start):
            self._prepared = None
            return prepared[1], prepared[2]
        self.close()
        return self._new_store(epoch, start)

    def _prepare(self, epoch: int) -> None:
        """Start reading training epoch `epoch`'s first window of shards now. Its first batch
        may take rows from any shard of that window (shuffled), so a new store waited for all
        of them: 0.68 s an epoch start, 0.11 s with this, and 10,033 -> 11,324 img/s overall (one
        H100 host, 20,400 JPEGs in 8 shards, 2026-12-06; reading the first shard alone: 0.62 s,
        9,773). Costs a window's shards more host memory while an epoch ends (peak RSS 5.4 -> 8.5
        GB on that set); evaluation, which starts once an epoch, keeps none."""
        self.close()
        self._prepared = ((epoch, 0), *self._new_store(epoch, 0))

    def _new_store(self, epoch: int, start: int) -> tuple[EpochOrder, ShardStore]:
        """The epoch's order, and a store that starts reading its shards from batch `start` on."""
        order = epoch_order(self.split.rows_per_shard, self.seed, epoch, self.window, self.train, self.split.keep)
        shards_ahead = int(np.ceil(order.window / self.split.mean_shard_rows())) + 1
        return order, ShardStore(self.split, order, start * self.batch_size, shards_ahead)

    def close(self) -> None:
        """Stop reading ahead for an epoch that will not come."""
        prepared, self._prepared = self._prepared, None
        if prepared is not None:
            prepared[2].close()

    def _rows(self, order, b: int, store: ShardStore):
        ids = order.use_ids[b * self.batch_size:(b + 1) * self.batch_size]
        keep = self.keep_rows(len(ids))
        return len(ids), keep, *store.take(ids, keep)

    def _make(self, epoch: int, b: int, rows, decoder):
        """Batch b's crops (on this thread's CUDA stream on a GPU), its labels, the event its
        crops are done at (GPU) and where its rows lie in the whole batch (replicas)."""
        n, keep, blobs, labels, names = rows
        draws = batch_draws(self.seed, epoch, b, n)[keep] if self.train else None
        if self.augment:
            mirror = mirrors(draws) if self.flip else np.zeros(len(draws), dtype=bool)
            box_of = lambda i, h, w: train_box(h, w, draws[i])  # noqa: E731
        else:
            mirror = np.zeros(len(blobs), dtype=bool)
            box_of = lambda i, h, w: eval_box(h, w)  # noqa: E731
        with self._crops_stream():
            x = decoder.batch(blobs, names, box_of, self.split.side, mirror)
            done = None
            if x.is_cuda:
                done = torch.cuda.Event()
                done.record()
        if self.device.type == "cuda" and not x.is_cuda:
            x = x.pin_memory()
        cut = (keep.start, n) if keep != slice(0, n) else None
        centres = cutout_centres(draws, self.split.side) if self.cutout else None
        labels = torch.from_numpy(labels)
        if self.device.type == "cuda":  # pinned: a copy from pageable memory waits for the stage's stream
            labels = labels.pin_memory()
            centres = torch.from_numpy(centres).pin_memory() if centres is not None else None
        return x, labels, done, cut, centres

    def _crops_stream(self):
        """This thread's own CUDA stream, so crops overlap the training step (none on CPU)."""
        if self.device.type != "cuda":
            return nullcontext()
        if not hasattr(self._local, "stream"):
            # high priority, so the crops' few short kernels may go ahead of the step's queued
            # ones; measured beside a busy device it made no difference (bench.decoders --stream
            # high, H100 2026-12-05): nvJPEG's wait for the whole device dominates
            self._local.stream = torch.cuda.Stream(self.device, priority=-1)
        return torch.cuda.stream(self._local.stream)

    def _finish(self, x: torch.Tensor, y: torch.Tensor, done, centres) -> tuple[torch.Tensor, torch.Tensor]:
        if done is not None:  # made on the crops' stream: this stream waits, the memory is ours
            torch.cuda.current_stream(self.device).wait_event(done)
            x.record_stream(torch.cuda.current_stream(self.device))
        x = x.to(self.device, non_blocking=True).float().div_(255)
        x = (x - self.mean) / self.std
        if centres is not None:  # after normalising: the square is the dataset's mean, as in memory
            x = cut_out(x, torch.as_tensor(centres).to(self.device, non_blocking=True), self.cutout)
        return x.to(self.dtype), y.to(self.device, non_blocking=True)


def decodes_beside_step(device: torch.device, library: str) -> bool:
    """StreamLoader.decodes_beside_step for a stage on `device` decoding with `library` (a
    Codecs name, or 'pil' for data.decode = 'cpu')."""
    return device.type == "cuda" and library in ("pil", "nvimgcodec-cpu")
